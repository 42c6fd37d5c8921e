"""Causal-LM loss through a frozen output head without materialising the [tokens, vocab] logits.

A 49k-token vocabulary makes the logits the largest tensors of a small model's training step: at 4 x 128 tokens
each fp32 copy is 100 MB, and the usual loss keeps three or four (logits, log-softmax, their gradients). Here the
head's weight is decoded a block of vocabulary rows at a time (a `LowBitLinear` head stays low-bit, tied or not),
and one pass over the blocks computes, with an online softmax, both the loss and its gradient with respect to the
hidden states: per token, dL/dh = sum_v softmax_v W_v - W_target. The backward then only scales that saved
[tokens, hidden] gradient. The head itself is frozen (no weight gradient), as in LoRA training.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from xpullm.finetune.data import IGNORE_INDEX
from xpullm.linear import LowBitLinear

__all__ = ["causal_lm_loss", "head_cross_entropy"]

# Elements of one logits block (and of one decoded weight block): ~8 MB of fp32 each on CPU; GPUs take blocks
# 16x larger (fewer launches; still a small fraction of a 128k-vocabulary logits tensor).
_BLOCK_ELEMENTS = 1 << 21
_ACCELERATOR_BLOCK_ELEMENTS = 1 << 25


def _head_rows(
    head: nn.Module, start: int, stop: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Rows start:stop of the head's float weight, in `dtype` on `device`."""
    if isinstance(head, LowBitLinear):
        return head.dequantize_rows(start, stop, dtype, device)
    return head.weight[start:stop].detach().to(device=device, dtype=dtype)


def _head_bias(head: nn.Module) -> torch.Tensor | None:
    bias = getattr(head, "bias", None)
    return None if bias is None else bias.detach().float()


class _HeadCrossEntropy(torch.autograd.Function):
    """sum over tokens of cross-entropy(h @ W^T + b, y) / denominator; the gradient is computed in forward."""

    @staticmethod
    def forward(
        ctx: Any, h: torch.Tensor, head: nn.Module, targets: torch.Tensor, denominator: float
    ) -> torch.Tensor:
        n, width = h.shape
        vocab = head.out_features
        # Half-precision hidden states multiply in their dtype (as the model's own head would); the softmax
        # statistics and the gradient accumulate in fp32.
        dtype = h.dtype if h.dtype in (torch.bfloat16, torch.float16) else torch.float32
        hc = h.detach().to(dtype)
        bias = _head_bias(head)
        want_grad = ctx.needs_input_grad[0]
        running_max = torch.full((n,), -torch.inf, device=h.device)
        running_sum = torch.zeros(n, device=h.device)
        target_logit = torch.zeros(n, device=h.device)
        acc = torch.zeros(n, width, device=h.device) if want_grad else None  # sum_v exp(l_v - max) W_v
        w_target = torch.zeros(n, width, device=h.device) if want_grad else None
        budget = _BLOCK_ELEMENTS if h.device.type == "cpu" else _ACCELERATOR_BLOCK_ELEMENTS
        step = max(1, budget // max(n, width))
        for a in range(0, vocab, step):
            b = min(a + step, vocab)
            w = _head_rows(head, a, b, dtype, h.device)
            logits = (hc @ w.T).float()
            if bias is not None:
                logits += bias[a:b]
            hit = ((targets >= a) & (targets < b)).nonzero().squeeze(-1)
            local = targets[hit] - a
            target_logit[hit] = logits[hit, local]
            new_max = torch.maximum(running_max, logits.amax(-1))
            rescale = torch.exp(running_max - new_max)
            p = logits.sub_(new_max[:, None]).exp_()  # in place: the block's logits are not needed again
            running_sum.mul_(rescale).add_(p.sum(-1))
            if want_grad:
                acc.mul_(rescale[:, None])
                if dtype == torch.float32:
                    acc.addmm_(p, w)
                else:
                    acc.add_((p.to(dtype) @ w).float())
                w_target[hit] = w[local].float()
            running_max = new_max
        lse = running_max + running_sum.log()
        loss = (lse - target_logit).sum() / denominator
        if want_grad:
            ctx.save_for_backward((acc / running_sum[:, None] - w_target) / denominator)
        ctx.h_dtype = h.dtype
        return loss  # fp32, whatever the hidden states' dtype (as transformers' loss)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (dh,) = ctx.saved_tensors
        return (dh * grad.float()).to(ctx.h_dtype), None, None, None


def head_cross_entropy(hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor,
                       ignore_index: int = IGNORE_INDEX) -> torch.Tensor:  # fmt: skip
    """Mean next-token cross-entropy of `head(hidden)` against `labels`, as transformers' causal-LM loss computes it
    (position t predicts labels[t + 1]; `ignore_index` labels are skipped), with the head decoded block by block.

    Args:
        hidden: the decoder's final hidden states [B, T, H].
        head: the output layer, a `LowBitLinear` or a frozen `nn.Linear` [vocab, H].
        labels: [B, T] token ids, `ignore_index` where no loss is taken.
    """
    targets = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:].reshape(-1).to(hidden.device)
    keep = (targets != ignore_index).nonzero().squeeze(-1)
    if keep.numel() == 0:
        raise ValueError("no target tokens in this batch: every label is ignore_index")
    h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep)
    return _HeadCrossEntropy.apply(h, head, targets[keep], float(keep.numel()))


def _lm_of(model: nn.Module) -> nn.Module:
    """The transformers causal LM inside a PEFT wrapper (or `model` itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if get_base is not None else model


def _fusable_head(lm: nn.Module) -> nn.Module | None:
    """The output head when the model's logits are a plain `head(hidden)` (no soft-capping or logit scaling)."""
    config = getattr(lm, "config", None)
    if any(
        getattr(config, key, None) not in (None, 1.0) for key in ("final_logit_softcapping", "logit_scale")
    ):
        return None
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if isinstance(head, LowBitLinear) or (isinstance(head, nn.Linear) and not head.weight.requires_grad):
        return head
    return None


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The training loss of `model` (a transformers causal LM, PEFT-wrapped or not) on a collated `batch`.

    Runs the decoder and `head_cross_entropy` when the head is a frozen `LowBitLinear` / `nn.Linear` producing
    the logits directly; otherwise (a trainable head, soft-capped logits) the model's own forward and loss.
    """
    lm = _lm_of(model)
    head = _fusable_head(lm)
    if head is None:
        return model(**batch).loss
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = lm.get_decoder()(**inputs, use_cache=False).last_hidden_state
    return head_cross_entropy(hidden, head, batch["labels"])
