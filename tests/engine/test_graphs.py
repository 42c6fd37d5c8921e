"""The CUDA-graph step's arithmetic (`xpullm.engine.graphs.static_step`) against the eager step, on any device.

The graph itself needs CUDA (tests/engine/test_gpu_decode.py); the fixed-shape step it records runs anywhere,
so its positions, cache writes and attention mask are checked here on the default model.
"""

from __future__ import annotations

import torch

from xpullm.engine import LLM
from xpullm.engine.graphs import GraphedDecoder, graphs_enabled, static_step


def test_static_step_matches_the_eager_step(llm: LLM) -> None:
    dec = llm._decoder
    ids = torch.tensor([llm.tokenizer("The capital of France is")["input_ids"]])
    logits = dec.start(ids, torch.zeros(1, dtype=torch.long), 64)
    nxt = logits.float().argmax(-1)
    for _ in range(6):
        pos = dec.pos
        fixed = static_step(dec, dec.embed(nxt[:, None]), torch.tensor([pos])).float()
        eager = dec.step(nxt).float()  # rewrites the same cache column with the same values
        assert dec.pos == pos + 1
        assert fixed.argmax() == eager.argmax()
        assert torch.nn.functional.cosine_similarity(fixed, eager).item() > 0.999
        nxt = eager.argmax(-1)


def test_graphs_are_for_cuda_only(llm: LLM) -> None:
    assert not graphs_enabled(torch.device("cpu"))
    assert not isinstance(llm._decoder, GraphedDecoder)
