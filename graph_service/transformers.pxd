# Cython declarations for transformers.py (setup.py compiles it when it can). The .py
# file stays the one source of behaviour; this file only says what the compiler may
# assume.
cimport cython


cdef class Transformed:
    cdef public object vid
    cdef public dict _props
    cdef public list refs
    cdef public tuple owned
    cdef public bint deleted
    cdef public dict payload
    cdef public tuple derived


cpdef str category_of(object entity_type)

cdef dict _VIDS
cdef Py_ssize_t _VIDS_MAX

@cython.locals(by_type=dict, by_id=dict, vid=object)
cpdef object vertex_id(object category, object vtype, object entity_id)

@cython.locals(props=dict, keys=tuple, i=Py_ssize_t)
cpdef dict merged_props(dict payload, tuple derived)
@cython.locals(payload=dict)
cpdef tuple _derived(dict f, object states, object stamp)
@cython.locals(fn=object)
cpdef Transformed transform_fields(dict f, object states, object stamp=*)

cdef dict _REFS
cdef Py_ssize_t _REFS_MAX

@cython.locals(key=tuple, found=object)
cpdef object ref(object vtype, object entity_id, object label, bint outgoing)
