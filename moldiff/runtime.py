"""Process-wide runtime settings that make CPU work faster.

The EGNN allocates and frees many ``[E, F]`` edge tensors per network call (tens of MB each for a
batch of 100 QM9 molecules). glibc's default ``malloc`` serves blocks that large with ``mmap`` and
hands them back to the OS on ``free``, so every such tensor is page-faulted in again at its first
write: removing that made sampling 1.4x faster on the 2-core CPU of ``benchmarks/README.md``
(``benchmarks/speed/bench_revisions.py``). :func:`tune_cpu_allocator` keeps freed memory inside the
process instead, the effect of ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` set before
start-up, applied from Python. PyTorch's CPU tuning guide recommends jemalloc or tcmalloc for the
same reason; those need ``LD_PRELOAD`` before the interpreter starts, which a ``pip``-installed CLI cannot do,
hence these few lines of ``ctypes`` (no library wraps ``mallopt``).

``moldiff``'s CLI calls :func:`tune_cpu_allocator` at start-up (set ``MOLDIFF_TUNE_MALLOC=0`` to
turn it off); library users may call it themselves. The cost is that the process keeps its peak
heap until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

#: ``mallopt`` parameters from glibc's ``malloc.h``.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Blocks below this size come from the heap; freed heap memory below it is not trimmed.
_THRESHOLD = 1 << 30

_tuned: bool | None = None


def tune_cpu_allocator() -> bool:
    """Stop glibc from returning large freed blocks to the OS; ``True`` when the setting took effect.

    A no-op returning ``False`` off Linux, on a C library without ``mallopt`` (e.g. musl), or when
    ``MOLDIFF_TUNE_MALLOC=0``. Idempotent.

    >>> isinstance(tune_cpu_allocator(), bool)
    True
    """
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if os.environ.get("MOLDIFF_TUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return _tuned
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return _tuned
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # both or neither: either one alone turns off glibc's dynamic threshold and is slower than default
    if mallopt(_M_MMAP_THRESHOLD, _THRESHOLD) == 1:
        _tuned = mallopt(_M_TRIM_THRESHOLD, _THRESHOLD) == 1
    return _tuned
