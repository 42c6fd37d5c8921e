"""Keep glibc's heap from holding on to freed activations during training (peak RSS, not live tensors).

glibc serves allocations below its mmap threshold from one heap and raises that threshold (up to 32 MB) each time
a larger block is freed. A training step's activations (1-8 MB each, some kept for backward, others freed at once)
then interleave in that heap, and the freed holes stay in the process: measured on the packaged 135M model, peak
RSS was 2.4x the live tensors (`docs/finetune.md`). A fixed threshold gives every block from 256 KB up its own
mapping, returned to the system when freed, at the cost of page faults on reuse. This is the process-wide switch
that `MALLOC_MMAP_THRESHOLD_=262144` would set; on other C libraries it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["set_mmap_threshold"]

_M_MMAP_THRESHOLD = -3  # glibc <malloc.h>


def set_mmap_threshold(nbytes: int) -> bool:
    """Make glibc serve allocations of `nbytes` and more with their own mappings (fixed, not adaptive).

    Returns whether the setting took effect (False off glibc). Process-wide and not undone: glibc offers no way
    back to its adaptive threshold.
    """
    if nbytes < 0:
        raise ValueError(f"mmap threshold {nbytes} must be >= 0 bytes")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(nbytes)))
