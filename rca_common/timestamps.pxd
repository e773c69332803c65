# Cython declarations for timestamps.py (setup.py compiles it when it can): with the
# argument typed as a datetime, its fields are read through CPython's C macros.
cimport cython
from cpython.datetime cimport datetime


@cython.locals(year=long, month=long, day=long, hour=long, minute=long, second=long, key=long)
cpdef str format_timestamp(datetime ts)

cdef object _fromisoformat

cpdef object parse_timestamp(object value)
