"""`LowBitLinear` keeps its weight in registered buffers: state_dict, device/dtype moves, memory accounting, autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xpullm.formats import list_formats
from xpullm.linear import LowBitLinear
from xpullm.memory import model_nbytes
from xpullm.optimize import optimize_model

FORMATS = list_formats()


def _layer(fmt: str, n: int = 192, k: int = 160, bias: bool = True, seed: int = 0) -> LowBitLinear:
    torch.manual_seed(seed)
    return LowBitLinear.from_linear(nn.Linear(k, n, bias=bias), fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_state_dict_round_trips_into_a_fresh_layer(fmt: str) -> None:
    src, dst = _layer(fmt, seed=0), _layer(fmt, seed=1)
    sd = src.state_dict()
    assert any(k.startswith("q_") for k in sd), sorted(sd)
    x = torch.randn(3, 160)
    with torch.no_grad():
        assert not torch.equal(src(x), dst(x))
        dst.load_state_dict(sd)
        assert torch.equal(src(x), dst(x))
        again = _layer(fmt, seed=2)
        again.load_state_dict(sd, assign=True)  # new tensors: the kernel's view must follow them
        assert torch.equal(src(x), again(x))


@pytest.mark.parametrize("fmt", FORMATS)
def test_dtype_casts_leave_codes_and_scales_alone(fmt: str) -> None:
    layer = _layer(fmt, bias=False)
    before = {n: b.dtype for n, b in layer.named_buffers()}
    x = torch.randn(2, 160)
    with torch.no_grad():
        y = layer(x)
        layer.half().to(torch.bfloat16).float()
        assert {n: b.dtype for n, b in layer.named_buffers()} == before
        assert torch.equal(layer(x), y)


def test_parameter_and_buffer_bytes_are_the_real_footprint() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 128), nn.LayerNorm(128))
    optimize_model(net, "sym_int4")
    listed = sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()])
    # Every layer's weight is in buffers now: 4-bit codes (half a byte per weight) + fp16 scales per 32.
    codes = (256 * 512 + 512 * 128) // 2
    assert (
        listed == model_nbytes(net) == sum(m.nbytes for m in net if isinstance(m, LowBitLinear)) + 2 * 128 * 4
    )
    assert codes < listed < codes * 1.3 + (512 + 128) * 4 + 2 * 128 * 4


@pytest.mark.parametrize("fmt", FORMATS)
def test_input_gradient_matches_the_dense_twin(fmt: str) -> None:
    layer = _layer(fmt)
    dense = layer.export().dequantize(torch.float32)
    x = torch.randn(4, 7, 160, requires_grad=True)
    y = layer(x)
    grad = torch.randn_like(y)
    y.backward(grad)
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = torch.nn.functional.linear(x_ref, dense, layer.bias.float())
    y_ref.backward(grad)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    assert all(not b.requires_grad and b.grad is None for b in layer.buffers())


def test_gradient_flows_through_a_chunked_wide_layer() -> None:
    # More rows than one dequantized block holds, so forward and backward both walk several blocks.
    layer = _layer("sym_int4", n=4096 + 64, k=1024, bias=False)
    dense = layer.dequantize(torch.float32)
    x = torch.randn(3, 1024, requires_grad=True)
    grad = torch.randn(3, 4096 + 64)
    layer(x).backward(grad)
    torch.testing.assert_close(x.grad, grad @ dense, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_gives_the_same_gradients(reentrant: bool) -> None:
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    net = optimize_model(nn.Sequential(nn.Linear(96, 128), nn.GELU(), nn.Linear(128, 96)), "nf4")
    # Training mode, as every trainer sets it: a reentrant checkpoint's first pass runs without autograd, and in
    # training mode it computes what the recomputation does (in eval mode it would run the int8-rounding kernel).
    net.train()
    x = torch.randn(5, 96, requires_grad=True)
    net(x).square().sum().backward()
    plain = x.grad.clone()
    x.grad = None
    checkpoint(net, x, use_reentrant=reentrant).square().sum().backward()
    torch.testing.assert_close(x.grad, plain)


@pytest.mark.parametrize("fmt", ["nf4", "sym_int8"])
def test_mode_picks_the_kernel_or_the_training_path(fmt: str) -> None:
    layer = _layer(fmt)
    assert not layer.training  # a new layer is an inference layer
    x = torch.randn(3, 160)
    dense = torch.nn.functional.linear(x, layer.dequantize(), layer.bias)
    with torch.no_grad():
        assert torch.equal(layer(x), layer.kernel.matmul(x, layer.state) + layer.bias)
        layer.train()
        torch.testing.assert_close(layer(x), dense, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("fmt", ["sym_int4", "nf4", "sym_int8"])
def test_to_cuda_reselects_the_kernel_and_trains(fmt: str) -> None:
    layer = _layer(fmt)
    x = torch.randn(4, 160)
    with torch.no_grad():
        ref = layer(x)
    layer.to("cuda")
    assert all(b.device.type == "cuda" for n, b in layer.named_buffers() if n.startswith("q_"))
    xc = x.cuda().requires_grad_(True)
    y = layer(xc)
    torch.testing.assert_close(y.cpu(), ref, rtol=3e-2, atol=3e-2)
    y.sum().backward()
    torch.testing.assert_close(xc.grad.cpu(), layer.dequantize(torch.float32).cpu().sum(0).expand(4, -1))
