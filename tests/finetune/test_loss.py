"""The fused head + cross-entropy equals the dense loss and gradient, without the [tokens, vocab] logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xpullm.finetune.loss import head_cross_entropy
from xpullm.formats import get_format
from xpullm.linear import LowBitLinear


def _dense_loss(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                labels: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """transformers' causal-LM loss on materialised fp64 logits (the reference)."""
    logits = nn.functional.linear(hidden.double(), weight.double(), None if bias is None else bias.double())
    shifted = nn.functional.pad(labels, (0, 1), value=-100)[..., 1:]
    return nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), shifted.reshape(-1), ignore_index=-100
    )


@pytest.mark.parametrize(("fmt", "bias"), [("sym_int8", False), ("nf4", True), ("asym_int4", False)])
def test_loss_and_hidden_gradient_match_dense_logits(fmt: str, bias: bool, monkeypatch) -> None:
    monkeypatch.setattr("xpullm.finetune.loss._BLOCK_ELEMENTS", 4096)  # many vocabulary blocks
    torch.manual_seed(0)
    vocab, width = 1000, 64
    head = LowBitLinear(get_format(fmt).quantize(torch.randn(vocab, width) * 0.3, 32),
                        torch.randn(vocab) if bias else None)  # fmt: skip
    weight = head.dequantize()
    hidden = (torch.randn(3, 17, width) * 2).requires_grad_(True)
    labels = torch.randint(0, vocab, (3, 17))
    labels[0, :6] = -100  # an ignored prompt
    labels[2, 3] = -100
    loss = head_cross_entropy(hidden, head, labels)
    loss.backward()
    ref_hidden = hidden.detach().clone().requires_grad_(True)
    ref = _dense_loss(ref_hidden, weight, head.bias, labels)
    ref.backward()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(hidden.grad.double(), ref_hidden.grad.double(), rtol=1e-5, atol=1e-7)
    assert (hidden.grad[0, :5] == 0).all()  # positions whose next label is ignored take no gradient


def test_float_head_and_no_grad_evaluation() -> None:
    torch.manual_seed(1)
    head = nn.Linear(32, 300, bias=False).requires_grad_(False)
    hidden, labels = torch.randn(2, 9, 32), torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        loss = head_cross_entropy(hidden, head, labels)
    torch.testing.assert_close(
        loss.double(), _dense_loss(hidden, head.weight, None, labels), rtol=1e-6, atol=1e-6
    )
    with pytest.raises(ValueError, match="no target tokens"):
        head_cross_entropy(hidden, head, torch.full((2, 9), -100))


def test_bf16_hidden_states_multiply_in_bf16_and_accumulate_in_fp32() -> None:
    torch.manual_seed(2)
    head = LowBitLinear(get_format("sym_int8").quantize(torch.randn(500, 64) * 0.3, 32))
    hidden = torch.randn(2, 11, 64).bfloat16().requires_grad_(True)
    labels = torch.randint(0, 500, (2, 11))
    loss = head_cross_entropy(hidden, head, labels)
    loss.backward()
    ref_hidden = hidden.detach().double().requires_grad_(True)
    ref = _dense_loss(ref_hidden, head.dequantize(), None, labels)
    ref.backward()
    assert loss.dtype == torch.float32 and hidden.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss.double(), ref, rtol=1e-2, atol=1e-2)  # bf16 logits: ~3 significant digits
    torch.testing.assert_close(hidden.grad.double(), ref_hidden.grad, rtol=5e-2, atol=2e-3)
