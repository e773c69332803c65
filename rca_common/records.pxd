# Cython declarations for records.py (setup.py compiles it when it can). The .py file
# stays the one source of behaviour; this file only says what the compiler may assume.

cdef class LogRecord:
    cdef public object seq, epoch, processed_at, event, changes, kind, body
