"""The 16 levels of the codebook formats (plain constants, so the kernels need nothing from the layers above).

`xpullm.formats.codebook` builds the `nf4` / `fp4` formats on these tables; the CPU and Triton kernels look
them up here by format name.
"""

from __future__ import annotations

__all__ = ["CODEBOOKS", "E2M1_LEVELS", "NF4_LEVELS"]

NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)  # fmt: skip
"""QLoRA's normal-float levels: quantiles of a standard normal, in [-1, 1]."""

E2M1_LEVELS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
"""The OCP e2m1 (FP4) minifloat values by code."""

CODEBOOKS: dict[str, tuple[float, ...]] = {"nf4": NF4_LEVELS, "fp4": E2M1_LEVELS}
"""Format name -> its 16 levels."""
