# Cython declarations for processor.py (setup.py compiles it when it can): C types for
# the attributes and locals of the per-event path. The .py file stays the one source
# of behaviour; this file only says what the compiler may assume.
cimport cython

from graph_service.actions cimport steps_of
from graph_service.entity_graph cimport EntityGraph
from graph_service.transformers cimport Transformed, category_of, transform_fields
from rca_common.timestamps cimport format_timestamp, parse_timestamp, time_order

cdef object _APPLIED, _STALE, _DUPLICATE, _DELETE, _END_SNAPSHOT, _UPDATE, _MISSING


cdef class Outcome:
    cdef public object event
    cdef public object status
    cdef public list changes


cdef class EventKey:
    cdef readonly object event_id, source, entity_type, entity_id, action
    cdef readonly object sample_timestamp, payload


cdef class RecentIds:
    cdef public Py_ssize_t capacity
    cdef public object _order
    cdef public dict _ids

    @cython.locals(ids=dict)
    cpdef add(self, object event_id)


cdef class Processor:
    cdef public EntityGraph graph
    cdef public object states
    cdef public object min_time_to_delete
    cdef public RecentIds recent
    cdef public object clock
    cdef public dict _round
    cdef public object actions
    cdef public bint _index_later

    @cython.locals(changes=list, old=dict, tf=Transformed)
    cpdef Outcome process(self, object event)
    cpdef object _bookkeep(self, object event_id, object source, object etype,
                           object entity_id, object action, object ts)
    @cython.locals(changed=dict, removed=list, shared=Py_ssize_t)
    cpdef _upsert(self, object vid, dict props, dict old, list changes)
    @cython.locals(changed=dict, removed=list, shared=Py_ssize_t, i=Py_ssize_t, keys=tuple,
                   ours=frozenset)
    cdef object _aggregated(self, object etype, object operational, dict old)
    cpdef _update_resource(self, object vid, dict payload, tuple derived, dict old,
                           list changes)
    @cython.locals(g=EntityGraph, wanted=set, stale=list, keyed=dict, edge=dict,
                   adjacency=dict)
    cpdef _link(self, object vid, list refs, tuple owned, object stamp, list changes)
    cpdef list _due_for_purge(self)


cdef class _Emitter:
    cdef public EntityGraph graph
    cdef public list changes


cpdef bint _same(object a, object b) except -1
cpdef bint _is_newer(dict attrs, long long order) except -1
cdef Py_ssize_t _compare(dict old, object k, object v, dict changed) except -1
cdef bint _differs(object ov, object v) except -1
cdef Py_ssize_t _TYPE_AT, _OPERATIONAL_AT
cpdef dict _placeholder(object vid, object ref, object stamp)
