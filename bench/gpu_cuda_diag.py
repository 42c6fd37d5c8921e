"""The CUDA C++ low-bit kernel (`cuda_mma`) per format and group mode against its twin, one line each (a GPU).

A first look on a new machine or after a kernel edit, before the tests: for each format / group mode at 2, 9 and 33
rows, the largest error in bf16 half-steps of the twin's output (rounding alone gives up to ~1; a wrong index map
or decode gives hundreds) and the correlation with the twin. The twin and weights are the tests' own
(`tests/kernels/test_cuda_mma.py`).

    bash bench/gpu_run.sh py bench/gpu_cuda_diag.py
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from dataclasses import replace
from pathlib import Path

import torch

CASES = [("sym_int4", 128), ("asym_int4", 128), ("sym_int4", 32), ("asym_int4", 64), ("nf4", 128), ("nf4", 32),
         ("fp4", 64), ("sym_int8", 0), ("sym_int8", 128), ("fp8_e4m3", 0), ("fp8_e4m3", 64)]  # fmt: skip


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_cuda_diag.py needs a CUDA GPU", file=sys.stderr)
        return 2
    path = Path(__file__).resolve().parents[1] / "tests" / "kernels" / "test_cuda_mma.py"
    spec = importlib.util.spec_from_file_location("test_cuda_mma", path)
    t = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(t)
    from xpullm.kernels.triton import pack_weight, run
    from xpullm.kernels.triton.configs import valid
    from xpullm.kernels.triton.launch import _prepare_x

    dev = torch.device("cuda")
    print(torch.cuda.get_device_name(dev), "loadable:", t.cuda.loadable(dev), t.cuda.build_error(dev) or "")
    for fmt, gs in CASES:
        for m in (2, 9, 33):
            try:
                qw = t._weight(256, 1024, gs, 1, fmt)
                tw = pack_weight(qw, dev)
                x = torch.randn(m, 1024, generator=torch.Generator().manual_seed(2)).bfloat16()
                pool = [replace(c, block_m=m) for c in t.POOL if c.split_k == 1]
                cfg = next(c for c in pool if valid(c, tw, torch.bfloat16))
                y = run(_prepare_x(x.to(dev), tw), tw, cfg).float().cpu()
                ref = (x.double() @ t._twin_weight(qw).T).float()
                err = ((y - ref).abs() / (ref.abs() * 2.0**-8 + 1e-6 * ref.abs().max())).max().item()
                corr = torch.corrcoef(torch.stack([y.flatten(), ref.flatten()]))[0, 1].item()
                print(f"{fmt:9s} g{gs:<3d} m={m:2d} max_err_half_steps={err:10.3g} corr={corr:.6f} "
                      f"tiles={cfg.tiles} warps={cfg.num_warps}")  # fmt: skip
            except Exception:
                print(f"{fmt:9s} g{gs:<3d} m={m:2d} FAILED {traceback.format_exc()[-600:]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
