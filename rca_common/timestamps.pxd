# Cython declarations for timestamps.py (setup.py compiles it when it can): with the
# argument typed as a datetime, its fields are read through CPython's C macros.
cimport cython
from cpython.datetime cimport datetime


@cython.locals(year=long, month=long, day=long, hour=long, minute=long, second=long, key=long,
               prefixes=dict)
cpdef str format_timestamp(datetime ts)

cdef object _fromisoformat

cpdef object parse_timestamp(object value)

@cython.locals(year=cython.longlong, month=cython.longlong, day=cython.longlong,
               hour=cython.longlong, minute=cython.longlong, second=cython.longlong,
               micro=cython.longlong, data=bytes)
cpdef long long time_order(str value) except? -1

cdef long long _order(long long year, long long month, long long day, long long hour,
                      long long minute, long long second, long long micro)

@cython.locals(n=cython.longlong, i=Py_ssize_t, d=cython.longlong)
cdef long long _digits(bytes data, Py_ssize_t start, Py_ssize_t end)
