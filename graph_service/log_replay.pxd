# Cython declarations for log_replay.py (setup.py compiles it when it can).
cimport cython

from graph_service.processor cimport Processor


@cython.locals(done=Py_ssize_t, skipped=Py_ssize_t, data=dict, event=dict, changes=list)
cpdef tuple replay_rows(Processor processor, object rows, object expected, object min_epoch,
                        object on_record=*)
