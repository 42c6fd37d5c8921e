"""PEFT wraps LowBitLinear; adapters save, load, merge (re-quantized) and serve; TRL's SFTTrainer trains them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from xpullm.finetune import LowBitLoraLinear, attach_adapter, lora_config, merge_adapter, register_lowbit
from xpullm.finetune.config import DEFAULT_TARGETS
from xpullm.formats import get_format
from xpullm.linear import LowBitLinear
from xpullm.optimize import set_module

from .conftest import load_base

PROMPT = "The European Parliament is elected every five years by the citizens of"


@pytest.fixture(scope="module")
def ids(tokenizer, wiki_paragraphs) -> torch.Tensor:
    return tokenizer(PROMPT + " " + wiki_paragraphs[0], return_tensors="pt").input_ids[:, :64]


def exact_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Logits through the exact path: inputs that require grad make every LowBitLinear multiply its dequantized
    weight in fp32 (the inference kernels round activations to int8 blocks, an error as large as those compared)."""
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    with torch.enable_grad():
        return model(inputs_embeds=emb).logits[0].detach()


@pytest.fixture(scope="module")
def adapter(base_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A strong adapter: PEFT's random init (init_lora_weights=False), seeded; its B@A*s is ~10% of W. (A weak one,
    ~1% of W, sits below the 4-bit grid's resolution: merging it into 4-bit rounds most of it away.)"""
    model = load_base(base_path)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, lora_config(r=8, alpha=16, init_lora_weights=False))
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out)
    return out


def test_plain_lora_config_with_lowbit_registered_wraps_every_projection(base_path: Path, ids) -> None:
    model = load_base(base_path)
    with torch.no_grad():
        before = model(ids).logits
    config = register_lowbit(LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    peft_model = get_peft_model(model, config)
    wrapped = [m for m in peft_model.modules() if isinstance(m, LowBitLoraLinear)]
    assert len(wrapped) == 3 * model.config.num_hidden_layers
    assert all(isinstance(m.base_layer, LowBitLinear) for m in wrapped)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    with torch.no_grad():  # B starts at zero: the wrapped model computes exactly what the base did
        assert torch.equal(peft_model(ids).logits, before)
    # one step of backprop reaches every adapter, through the frozen low-bit layers
    peft_model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_A" in n]
    # A's gradient is B^T-shaped zero until B moves; B's gradient must be non-zero everywhere
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0
        for n, p in peft_model.named_parameters()
        if "lora_B" in n
    )
    assert len(grads) == len(wrapped)


def test_saved_adapter_loads_and_merges_within_the_requantization_error(
    base_path: Path, adapter: Path, ids, tmp_path: Path
) -> None:
    from xpullm.loading import AutoModelForCausalLM
    from xpullm.loading.lowbit_io import save_low_bit

    unmerged = attach_adapter(load_base(base_path), adapter)
    base_logits, logits = exact_logits(load_base(base_path), ids), exact_logits(unmerged, ids)
    assert (logits - base_logits).abs().max() > 0.05  # the adapter changes the model

    # layer level: every merged layer decodes to W + BA*s up to its format's guaranteed rounding bound
    merged = merge_adapter(load_base(base_path), adapter)
    fine = load_base(base_path)  # the same merge, re-quantized to sym_int8 instead of each layer's own format
    wrapped = {n: m for n, m in unmerged.base_model.model.named_modules() if isinstance(m, LowBitLoraLinear)}
    assert len(wrapped) == 7 * 30
    for name, layer in wrapped.items():
        target = layer.get_base_layer().dequantize() + layer.get_delta_weight("default")
        merged_layer = merged.get_submodule(name)
        assert isinstance(merged_layer, LowBitLinear)
        assert merged_layer.format_name == layer.get_base_layer().format_name
        bound = get_format(merged_layer.format_name).error_bound(target, merged_layer.export())
        assert ((merged_layer.dequantize() - target).abs() <= bound + 1e-6).all(), name
        set_module(fine, name, LowBitLinear(get_format("sym_int8").quantize(target, 32)))

    # model level: what differs is re-quantization error only, so it shrinks with a finer format (sym_int8: a
    # step 17x finer than 4-bit) and leaves the predictions as they were
    merged_logits, fine_logits = exact_logits(merged, ids), exact_logits(fine, ids)
    error4, error8 = (merged_logits - logits).abs().mean(), (fine_logits - logits).abs().mean()
    effect = (logits - base_logits).abs().mean()
    # measured: effect 2.92, 4-bit error 1.78, int8 error 0.134, int8 top-1 agreement 60/64
    assert error4 < 0.75 * effect  # merging keeps the adapter's change, up to the 4-bit rounding
    assert error8 < 0.25 * error4  # the difference is re-quantization error: a finer format shrinks it
    assert (fine_logits.argmax(-1) == logits.argmax(-1)).float().mean() >= 0.9

    # the merged model is a plain low-bit model again: save_low_bit / load_low_bit reproduce it exactly
    folder = save_low_bit(merged, tmp_path / "merged")
    again = AutoModelForCausalLM.load_low_bit(folder, device="cpu", dtype=torch.float32)
    torch.testing.assert_close(exact_logits(again, ids), merged_logits, rtol=0, atol=0)


def test_llm_serves_the_adapter_unmerged(base_path: Path, adapter: Path, tokenizer) -> None:
    from xpullm import LLM

    prompt_ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    llm = LLM(str(base_path), adapter=adapter, dtype=torch.float32)
    out = llm.generate(PROMPT, max_new_tokens=1, temperature=0.0)
    assert isinstance(llm.model.model.layers[0].self_attn.q_proj, LowBitLoraLinear)
    with torch.no_grad():
        expected = attach_adapter(load_base(base_path), adapter)(prompt_ids).logits[0, -1].argmax()
    assert out.text == llm.tokenizer.decode([int(expected)])


def test_trl_sft_trainer_trains_a_lowbit_peft_model(
    base_path: Path, tokenizer, wiki_paragraphs, tmp_path: Path
) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from xpullm.finetune import prepare_model_for_kbit_training

    model = load_base(base_path)
    # TRL >= 1 computes the loss from `lm_head.weight` itself (a chunked, fused cross-entropy): the head must be a
    # float nn.Linear for SFTTrainer; the 30 decoder layers stay low-bit (docs/finetune.md)
    head = model.lm_head
    model.lm_head = torch.nn.Linear(head.in_features, head.out_features, bias=False)
    model.lm_head.weight = torch.nn.Parameter(head.dequantize(), requires_grad=False)
    model = prepare_model_for_kbit_training(model)
    peft_model = get_peft_model(model, lora_config(r=4, alpha=8, targets=DEFAULT_TARGETS[:4]))
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    args = SFTConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, max_length=32,
                     learning_rate=1e-3, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                     gradient_checkpointing=False)  # fmt: skip
    data = Dataset.from_list([{"text": t} for t in wiki_paragraphs[:8]])
    trainer = SFTTrainer(model=peft_model, args=args, train_dataset=data, processing_class=tokenizer)
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == 2 and all(0 < x < 20 for x in losses)
    changed = [
        n for n, p in peft_model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])
    ]
    assert len(changed) == len(before)
