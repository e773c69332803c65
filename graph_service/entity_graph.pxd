# Cython declarations for entity_graph.py (setup.py compiles it when it can): C types
# for the attributes and locals of the hot path. The .py file stays the one source
# of behaviour; this file only says what the compiler may assume.
cimport cython

from rca_common.timestamps cimport parse_timestamp

cdef object _intern
cdef dict _KEYS
cdef Py_ssize_t _KEYS_MAX

@cython.locals(key=object)
cdef object _key(object name)

cpdef object _own(object value)

@cython.locals(t=object)
cdef void _update(dict attrs, dict setting, object unsetting) except *

cdef class EntityGraph:
    cdef public object _g
    cdef dict _nodes, _succ, _pred
    cdef public dict _deleted
    cdef public Py_ssize_t _edges
    cdef public dict _order_of
    cdef public list _queue
    cdef public Py_ssize_t _counter

    @cython.locals(nodes=dict, succ=dict, pred=dict, deleted=dict, attrs=dict, out=dict,
                   keys=dict, op=object)
    cpdef apply(self, object changes)
    cpdef _adopt(self, object g)
    cpdef _index_queue(self)
    cpdef _track_deleted(self, object vid, dict attrs)
    @cython.locals(order=Py_ssize_t)
    cpdef _push_deleted(self, object vid, object when)
    cpdef object vertex(self, object vid)
    cpdef dict successors(self, object vid)
    cpdef dict predecessors(self, object vid)
    @cython.locals(queue=list, order_of=dict, out=list, due=list, entry=tuple)
    cpdef list deleted_before(self, object cutoff)
