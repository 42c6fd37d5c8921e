"""The engine's native CPU layer stack (`cpu_layers.py`) on the real default model: chosen where the weights fit,
bit for bit `decoder_layers` over the step ops (prefill chunk, decode steps, verification-sized steps, a layer
subset as the self-speculative draft runs), and declined for weights it does not take."""

from __future__ import annotations

import pytest
import torch

from xpullm.engine import LLM
from xpullm.engine.core import EngineConfig
from xpullm.engine.cpu_layers import NativeLayerStack
from xpullm.kernels import cpu_native

pytestmark = pytest.mark.skipif(cpu_native.library() is None, reason="no native CPU library here")


@pytest.fixture(scope="module")
def engine(llm: LLM) -> LLM:
    """Another LLM over the same loaded model with its own engine (weights shared, not copied)."""
    other = LLM(llm.model, tokenizer=llm.tokenizer, engine=EngineConfig(max_seqs=4))
    other.generate("warm up", max_new_tokens=1)
    return other


def _steps(runner, ids: list[int], layers=None) -> list[torch.Tensor]:
    """Logits of a 2-chunk prefill, three one-token steps and one 5-token step, sequence in table row 0."""
    runner.set_table(0, list(range(8)))
    n, out = len(ids), []
    out.append(runner.forward(ids[:5], list(range(5)), [0] * 5, [4], layers))
    out.append(runner.forward(ids[5:], list(range(5, n)), [0] * (n - 5), list(range(n - 5)), layers))
    for i in range(3):
        out.append(runner.forward([ids[i]], [n + i], [0], [0], layers))
    out.append(runner.forward(ids[:5], list(range(n + 3, n + 8)), [0] * 5, list(range(5)), layers))
    return out


def test_stack_is_decoder_layers_bit_for_bit(engine: LLM) -> None:
    runner = engine.engine.runner
    assert isinstance(runner._stack, NativeLayerStack)
    ids = engine.tokenizer("The quick brown fox jumps over the lazy dog, and then")["input_ids"]
    for layers in (None, [0, 1, 5, 28, 29]):
        fused = _steps(runner, ids, layers)
        stack, runner._stack = runner._stack, None
        try:
            plain = _steps(runner, ids, layers)
        finally:
            runner._stack = stack
        for a, b in zip(fused, plain, strict=True):
            assert torch.equal(a, b), (a - b).abs().max()


def test_stack_declines_weights_it_does_not_take(engine: LLM) -> None:
    dec = engine.engine.runner.dec
    layer = dec.layers[0]
    saved = layer.down
    try:
        layer.down = torch.nn.Linear(saved.in_features, saved.out_features, bias=False)  # a dense projection
        assert NativeLayerStack.build(dec) is None
    finally:
        layer.down = saved
    assert NativeLayerStack.build(dec) is not None
