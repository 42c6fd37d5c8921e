"""Low-bit matmul kernels, one registry keyed by (format, device kind).

Importing this package registers the reference and CPU kernels (the optional IPEX one imports IPEX only when the
registry asks whether it is available); GPU (Triton) kernels register themselves on the first CUDA/XPU selection,
so `import xpullm` never imports Triton or initialises a GPU.
"""

from xpullm.kernels import cpu, cpu_native, ipex, reference  # noqa: F401  (registers the kernels)
from xpullm.kernels.registry import (
    Kernel,
    candidates,
    describe,
    kernel_table,
    register_kernel,
    registered,
    select_kernel,
)

__all__ = [
    "Kernel",
    "candidates",
    "describe",
    "kernel_table",
    "register_kernel",
    "registered",
    "select_kernel",
]
