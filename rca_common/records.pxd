# Cython declarations for records.py (setup.py compiles it when it can). The .py file
# stays the one source of behaviour; this file only says what the compiler may assume.

cdef class LogRecord:
    cdef public object seq, epoch, processed_at, event, changes, kind, body


cdef class Frames:
    cdef public bytearray buffer
    cdef public Py_ssize_t count, weight
    cdef public object first_seq, last_seq

    cpdef add_event(self, object seq, object epoch, object processed_at, dict event, list changes)
    cpdef add(self, LogRecord record)
    cdef _counted(self, object seq)
    cpdef bytes take(self)


cpdef Py_ssize_t record_weight(dict event, list changes)
