"""refsnn: the reference implementation of SNNergy (spiking audio-visual fusion with CMQKA)
in NumPy and Numba. See README.md and SPEC.md."""
from . import runtime as _runtime

__version__ = "0.1.0"

_runtime.passive_thread_wait()
_runtime.keep_freed_memory()
_runtime.allow_vector_memory_checks()
