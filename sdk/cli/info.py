"""`xpullm info`: devices, low-bit formats and which kernel runs each format on each device."""

from __future__ import annotations

import argparse
import platform


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `info` subcommand."""
    p = subparsers.add_parser(
        "info", help="devices, formats and kernel paths", description="Show what xpullm can run here."
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `xpullm info`."""
    import torch

    from xpullm.devices import available_devices
    from xpullm.formats import list_formats
    from xpullm.kernels import kernel_table

    devices = available_devices()
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
    )
    print(f"devices: {', '.join(devices)}")
    print(f"formats: {', '.join(list_formats())}")
    print(f"default format: {_default_model_format()}")
    from xpullm.kernels import cpu_native

    paths = cpu_native.isa_paths()
    if paths:
        if "amx" in paths:
            amx = f"AMX tiles for calls of >= {cpu_native.AMX_MIN_ROWS} rows, avx512_vnni below and for fp8"
        else:
            amx = cpu_native.amx_status()
        print(f"native CPU kernels: {cpu_native.active_isa()} path (this CPU runs {', '.join(paths)}; {amx})")
    else:
        print("native CPU kernels: not built (no C compiler, no AVX2, or XPULLM_NATIVE=0): PyTorch's ops run")
    for dev in devices:
        print(f"kernels on {dev}:")
        for fmt, kernel in kernel_table(dev).items():
            print(f"  {fmt:<10} {kernel}")
    _print_triton_paths()
    return 0


def _default_model_format() -> str:
    """What the packaged model loads as when no format is named, and why (reads the GGUF header only)."""
    from xpullm.errors import ModelNotFound
    from xpullm.loading import ModelSource
    from xpullm.loading.format_choice import choose_format
    from xpullm.models import default_llm_gguf

    try:
        path = default_llm_gguf()
    except ModelNotFound as exc:
        return f"the checkpoint's own (packaged model unavailable: {exc})"
    return f"packaged {choose_format(ModelSource('gguf', path.parent, path.name)).describe(path.name)}"


def _print_triton_paths() -> None:
    """The Triton kernel's paths (GPU), which its tuner picks per weight shape and row bucket."""
    try:
        from xpullm.kernels.triton.configs import path_summary
    except ImportError:  # no Triton in this environment
        return
    print("triton paths (cuda/xpu; timed per shape and row bucket):")
    for line in path_summary():
        print(f"  {line}")
