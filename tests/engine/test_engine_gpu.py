"""The continuous-batching engine on a CUDA GPU: Triton paged attention, steps of <= 64 tokens replayed from CUDA
graphs per bucket (`step_graphs.py`). Each request's greedy tokens under concurrency must equal its tokens alone,
graph steps the eager steps' tokens and a lone request the static decoder's - or part from them once, at a
near-tie: the two candidate tokens within PARITY_MARGIN logits after the common prefix (a row's bf16 rounding
depends on the kernel tile its batch size picks). Needs a CUDA GPU (skipped otherwise); runs without the repo's
conftest (`bench/engine_gpu_session.sh`).

The model is a small seeded llama built offline (larger-than-default init, so most top-2 margins are tenths of a
logit or more); the tokenizer is a word-level one over its 512 ids.
"""

from __future__ import annotations

import queue
from collections.abc import Callable

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("GPU engine tests need a CUDA GPU", allow_module_level=True)

from xpullm.engine.core import EngineConfig, EngineCore, build_core
from xpullm.engine.decode import FAMILIES, StaticCacheDecoder
from xpullm.engine.graphs import GraphedDecoder
from xpullm.engine.params import GenerationParams
from xpullm.engine.step_graphs import DEFAULT_BUCKETS, StepGraphs

pytestmark = pytest.mark.gpu
DEVICE = "cuda"
VOCAB = 512
STEPS = 20
PARITY_MARGIN = (
    0.25  # logit units: a reference top-2 margin below this is a near-tie that kernel rounding may flip
)
# Lengths 3..45: with 16-token steps the 45-token prompt is prefilled over three steps beside the others' decodes
# (with graphs for 1..8 tokens, the larger mixed steps run eagerly and the rest replay graphs).
PROMPTS = [
    [1, 17, 300, 42, 9, 5],
    [7, 7, 7, 120, 64, 33, 2, 401, 11],
    [88, 3, 250],
    [(i * 37 + 11) % VOCAB for i in range(45)],
    [500, 499, 12, 6, 6, 81, 19],
]


def tiny_llama(low_bit: str | None, seed: int = 0) -> torch.nn.Module:
    """A 4-layer llama (GQA, SwiGLU, RoPE, head_dim 64) with seeded, large-scale random weights, bf16, quantized
    to `low_bit` (None: dense) on DEVICE."""
    import transformers

    from xpullm import optimize_model

    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.08, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg).eval().to(device=DEVICE, dtype=torch.bfloat16)
    if low_bit is not None:
        optimize_model(model, low_bit, device=DEVICE)
    return model


def word_tokenizer():
    """A real word-level tokenizer over the model's ids (`t0` .. `t511`): the engine decodes text with it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def engine(model: torch.nn.Module, **config: object) -> EngineCore:
    """An engine core over `model` (its own static decoder's weights); unless told, 16-token steps with graphs
    for steps of 1..8 tokens (so both graph and eager steps run)."""
    dec = StaticCacheDecoder(model, FAMILIES["llama"], torch.bfloat16, torch.device(DEVICE))
    defaults = {
        "max_batched_tokens": 16,
        "max_seqs": 8,
        "kv_budget_tokens": 4096,
        "graph_buckets": (1, 2, 4, 8),
    }
    cfg = EngineConfig(**{**defaults, **config})
    return build_core(dec, word_tokenizer(), [], 512, cfg)


def generate(
    core: EngineCore, prompts: list[list[int]], steps: int = STEPS, staggered: bool = False
) -> list[list[int]]:
    """Greedy token ids of every prompt, all submitted at once (they share the engine's steps); `staggered`:
    the first one alone, the others once its first token has streamed (they join a running batch)."""
    events: queue.Queue = queue.Queue()
    params = GenerationParams(max_new_tokens=steps)

    def submit(prompt: list[int]):
        return core.submit(prompt, params, lambda kind, value: events.put((kind, value)))

    reqs = [submit(p) for p in (prompts[:1] if staggered else prompts)]

    def join_the_rest(kind: str) -> None:
        if len(reqs) < len(prompts) and kind in ("delta", "done"):
            reqs.extend(submit(p) for p in prompts[1:])

    wait_done(events, len(prompts), join_the_rest)
    return [list(r.assembler.ids) for r in reqs]


def wait_done(events: queue.Queue, count: int, each: Callable[[str], None] | None = None) -> None:
    """Read (kind, value) events until `count` requests are done (an error is raised); `each(kind)` sees each."""
    finished = 0
    while finished < count:
        kind, value = events.get(timeout=300)
        if kind == "error":
            raise value
        finished += kind == "done"
        if each is not None:
            each(kind)


def next_logits(model: torch.nn.Module, tokens: list[int]) -> torch.Tensor:
    """The static decoder's (eager prefill) next-token logits after `tokens`, float on the CPU."""
    dec = StaticCacheDecoder(model, FAMILIES["llama"], torch.bfloat16, torch.device(DEVICE))
    logits = dec.start(
        torch.tensor([tokens], device=DEVICE), torch.zeros(1, dtype=torch.long), len(tokens) + 1
    )
    return logits[0].float().cpu()


def assert_same_or_near_tie(
    model: torch.nn.Module, prompt: list[int], got: list[int], want: list[int]
) -> None:
    """The same tokens, or parting once where the two candidates' logits (after the common prefix, by the static
    decoder) are within PARITY_MARGIN: a near-tie that bf16 rounding of a different kernel tile may flip."""
    i = next((k for k, (a, b) in enumerate(zip(got, want, strict=True)) if a != b), None)
    if i is None:
        return
    logits = next_logits(model, prompt + want[:i])
    gap = abs(float(logits[want[i]] - logits[got[i]]))
    assert gap < PARITY_MARGIN, (
        f"tokens part at step {i} ({got[i]} vs {want[i]}) where the logits are {gap:.3f} apart, not a near-tie"
    )


def static_greedy(model: torch.nn.Module, prompt: list[int], steps: int) -> list[int]:
    """The static decoder's greedy tokens (CUDA-graph steps, the default GPU path) for one prompt."""
    dec = GraphedDecoder(StaticCacheDecoder(model, FAMILIES["llama"], torch.bfloat16, torch.device(DEVICE)))
    logits = dec.start(
        torch.tensor([prompt], device=DEVICE), torch.zeros(1, dtype=torch.long), len(prompt) + steps
    )
    tokens = []
    for _ in range(steps):
        nxt = logits.float().argmax(-1)
        tokens.append(int(nxt))
        logits = dec.step(nxt)
    return tokens


@pytest.fixture(scope="module", params=["sym_int4", "sym_int8", None], ids=["sym_int4", "sym_int8", "bf16"])
def model(request):
    return tiny_llama(request.param)


def test_engine_uses_triton_paged_attention_and_cuda_graphs(model) -> None:
    core = engine(model, graph_buckets=DEFAULT_BUCKETS)
    assert core.runner.attention_name == "kernels.paged"
    graphs = core.runner.graphs
    assert isinstance(graphs, StepGraphs) and graphs.backend.name == "cuda"
    assert graphs.buckets == (1, 2, 4, 8, 16)  # the default buckets up to max_batched_tokens
    generate(core, PROMPTS[:3], steps=4)
    assert graphs.replays > 0 and graphs.captured() and all(graphs.captured().values())


def test_concurrent_requests_give_each_requests_tokens_alone(model) -> None:
    core = engine(model)
    alone = [generate(core, [p])[0] for p in PROMPTS]
    twice = [0, 1, 0, 1, 2, 3, 4]  # the same prompt twice in one batch
    runs = [
        (list(range(len(PROMPTS))), generate(core, PROMPTS)),
        (list(range(len(PROMPTS))), generate(core, PROMPTS, staggered=True)),  # joining a running batch
        (twice, generate(core, [PROMPTS[i] for i in twice])),
    ]
    for order, got in runs:
        for i, tokens in zip(order, got, strict=True):
            assert_same_or_near_tie(model, PROMPTS[i], tokens, alone[i])
    assert {1, 8} <= set(core.runner.graphs.captured())  # lone decodes; five concurrent decodes pad to 8


def test_graph_steps_give_the_eager_steps_tokens(model) -> None:
    eager = engine(model, graph_buckets=())
    assert eager.runner.graphs is None
    for prompt, g, w in zip(PROMPTS, generate(engine(model), PROMPTS), generate(eager, PROMPTS), strict=True):
        assert_same_or_near_tie(model, prompt, g, w)


def test_lone_request_matches_the_static_decoder(model) -> None:
    """Paged attention + fused ops vs the static cache's kernels: the same tokens, or parting at a near-tie."""
    core = engine(model)
    for prompt in PROMPTS[:3]:
        assert_same_or_near_tie(
            model, prompt, generate(core, [prompt])[0], static_greedy(model, prompt, STEPS)
        )


def test_block_tables_and_scratch_after_many_requests(model) -> None:
    core = engine(model, max_seqs=4)
    generate(core, PROMPTS * 2, steps=6)  # more requests than rows: they queue and reuse freed rows
    graphs = core.runner.graphs
    assert core.runner.block_tables[graphs.scratch_row].eq(graphs.scratch_block).all()
    assert core.stats().running == 0 and core.stats().kv_used_blocks == 0


def test_low_bit_draft_steps_replay_graphs_and_keep_the_tokens() -> None:
    """A bf16 model drafted by its sym_int4 copy (`speculative="low_bit_draft"`): the copy's steps replay its own
    CUDA graphs, and every request's tokens are plain decoding's (or part once at a near-tie)."""
    from xpullm.engine.speculative import SpeculativeConfig

    model = tiny_llama(None)
    spec = SpeculativeConfig(method="low_bit_draft", draft_min_prob=0.0, draft_cost=0.0, verify_cost=0.0)
    core = engine(model, speculative=spec)
    got, want = generate(core, PROMPTS), generate(engine(model), PROMPTS)
    for prompt, g, w in zip(PROMPTS, got, want, strict=True):
        assert_same_or_near_tie(model, prompt, g, w)
    stats = core.stats()
    assert stats.draft_tokens > 0 and stats.kv_used_blocks == 0
    graphs = core._drafter.draft.graphs
    assert graphs is not None and graphs.replays > 0 and all(graphs.captured().values())


def test_stop_strings_one_step_behind_end_where_the_text_says() -> None:
    """On a GPU the engine turns a step's tokens into text while the next step runs (`overlap_text`, on by
    default there): each concurrent request with a stop string taken from the middle of its plain text ends with
    that text cut before the string's first occurrence, finish "stop", and every block is freed."""
    core = engine(tiny_llama("sym_int4"))
    assert core._overlap
    events: queue.Queue = queue.Queue()

    def run(params: list[GenerationParams]) -> list:
        reqs = [
            core.submit(p, q, lambda kind, value: events.put((kind, value)))
            for p, q in zip(PROMPTS, params, strict=True)
        ]
        wait_done(events, len(reqs))
        return [r.completion() for r in reqs]

    plain = run([GenerationParams(max_new_tokens=STEPS)] * len(PROMPTS))
    stops = [c.text.split()[len(c.text.split()) // 2] for c in plain]
    cut = run([GenerationParams(max_new_tokens=STEPS, stop=(s,)) for s in stops])
    for p, c, s in zip(plain, cut, stops, strict=True):
        assert (c.text, c.finish_reason) == (p.text[: p.text.index(s)], "stop")
    assert core.stats().kv_used_blocks == 0


def test_steps_run_ahead_on_the_devices_tokens_keep_every_requests_tokens(model) -> None:
    """`launch_ahead` (on by default on GPUs): without drafts, each decode step is queued before the host reads
    the last step's tokens, its input ids the device's argmax (pinned, non-blocking copies: nothing waits for the
    device). All at once the tokens are bitwise those of the engine that reads each step first (the same steps and
    graph buckets); joining a running batch, the same or parting once at a near-tie."""
    ahead = engine(model, speculative=None)
    plain = engine(model, speculative=None, launch_ahead=False)
    assert ahead._launch_ahead and not plain._launch_ahead
    assert generate(ahead, PROMPTS) == generate(plain, PROMPTS)
    stats = ahead.stats()
    assert stats.ahead_steps >= STEPS - 4 and stats.steps == plain.stats().steps
    for prompt, g, w in zip(
        PROMPTS,
        generate(ahead, PROMPTS, staggered=True),
        generate(plain, PROMPTS, staggered=True),
        strict=True,
    ):
        assert_same_or_near_tie(model, prompt, g, w)
    assert ahead.stats().kv_used_blocks == 0 and ahead.stats().running == 0


def test_host_copies_queue_behind_the_devices_work_without_waiting_for_it() -> None:
    """`host_copy`: a copy of step inputs to the device returns while earlier work still runs (a plain CUDA copy
    from pageable memory would wait for it), and reading a device result waits for that result only, not for
    what was queued after it. Checked with the stream's own state, not with timings."""
    from xpullm.engine.host_copy import to_device, to_host

    stream = torch.cuda.current_stream()
    to_host(
        to_device([1, 2, 3], torch.device(DEVICE))
    )()  # the pinned host pool's first buffers (cudaHostAlloc)
    torch.cuda._sleep(200_000_000)  # ~0.1 s of queued device work
    ids = to_device([5, 6, 7], torch.device(DEVICE))
    assert not stream.query()  # the sleep still runs: to_device did not wait for it
    take = to_host(ids * 2)
    torch.cuda._sleep(200_000_000)
    assert take() == [10, 12, 14]
    assert not stream.query()  # the second sleep, queued after the copy, still runs
    torch.cuda.synchronize()
