# Cython declarations for canonical.py (setup.py compiles it when it can).
cimport cython


@cython.locals(i=Py_ssize_t, c=str)
cpdef object canonical_timestamp(object text)

@cython.locals(out=list, fields_set=set)
cpdef object canonical_events(list items, object model, dict actions, object version)
