# Cython declarations for actions.py (setup.py compiles it when it can). The .py file
# stays the one source of behaviour; this file only says what the compiler may assume.
cimport cython

from graph_service.entity_graph cimport _own


cdef class Step:
    cdef readonly object op
    cdef readonly object action_key
    cdef readonly object match_key
    cdef readonly object record


cpdef Step _step(dict payload)
cdef object _ABSENT
@cython.locals(record=dict)
cpdef dict _record(dict payload)
cpdef list steps_of(dict payload)
