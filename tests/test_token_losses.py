"""The fused, chunked LM head + cross-entropy (rt_lab/train/token_losses.py) gives the reference path's losses and
gradients, and models whose logits are more than lm_head(hidden) are sent to the reference path by themselves."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, Gemma2Config, GraniteConfig, LlamaConfig

from rt_lab.data.collate import collate_padded
from rt_lab.data.masking import IGNORE, Example
from rt_lab.data.packing import collate_packed
from rt_lab.train.loss import LOSS_NORMALIZATIONS, example_loss_sums, supervised_targets
from rt_lab.train import token_losses
from rt_lab.train.token_losses import fused_head, model_inputs

SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=300)


def random_model(config_class, **overrides):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config_class(**SHAPE, **overrides), dtype=torch.float32)


@pytest.fixture(scope="module")
def examples():
    generator = torch.Generator().manual_seed(1)
    rows = []
    for index, (length, prompt) in enumerate([(12, 4), (20, 9), (7, 2), (15, 15 - 3)]):
        ids = torch.randint(3, 300, (length,), generator=generator).tolist()
        rows.append(Example(str(index), ids, [IGNORE] * prompt + ids[prompt:]))
    return rows


def loss_and_grads(model, batch, head, normalization):
    norm = LOSS_NORMALIZATIONS[normalization]
    model.zero_grad(set_to_none=True)
    where = supervised_targets(batch)
    loss = norm.numerator(example_loss_sums(model, batch, where, head), where.counts) / norm.units(where.counts)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tied", [False, True], ids=["untied_head", "tied_head"])
@pytest.mark.parametrize("normalization", ["token", "sequence"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("chunk_rows", [None, 5], ids=["one_chunk", "chunks_of_5_rows"])
def test_fused_loss_and_gradients_equal_the_reference_in_fp32(examples, tied, normalization, packed, chunk_rows,
                                                               monkeypatch):
    if chunk_rows:  # the 27 supervised targets then span 6 chunks
        monkeypatch.setattr(token_losses, "CPU_CHUNK_BYTES", 4 * SHAPE["vocab_size"] * chunk_rows)
    model = random_model(LlamaConfig, tie_word_embeddings=tied)
    head = fused_head(model)
    assert head is not None and (head.head.weight is model.get_input_embeddings().weight) == tied
    batch = collate_packed(examples) if packed else collate_padded(examples, pad_id=0)
    fused_loss, fused_grads = loss_and_grads(model, batch, head, normalization)
    reference_loss, reference_grads = loss_and_grads(model, batch, None, normalization)
    torch.testing.assert_close(fused_loss, reference_loss, rtol=1e-6, atol=1e-6)
    assert fused_grads.keys() == reference_grads.keys()
    for name, grad in reference_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_fused_loss_under_bf16_autocast_stays_within_bf16_rounding_of_the_reference(examples):
    """Both paths run the head in bf16 with fp32 softmax; the fused op returns bf16-rounded per-token losses."""
    model = random_model(LlamaConfig)
    head = fused_head(model)
    batch = collate_padded(examples, pad_id=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused_loss, fused_grads = loss_and_grads(model, batch, head, "token")
        reference_loss, reference_grads = loss_and_grads(model, batch, None, "token")
    assert fused_loss.dtype == torch.float32
    torch.testing.assert_close(fused_loss, reference_loss, rtol=2 ** -8, atol=0)
    for name, grad in reference_grads.items():
        cosine = torch.nn.functional.cosine_similarity(fused_grads[name].flatten(), grad.flatten(), dim=0)
        assert cosine > 0.999, name


def test_soft_capped_logits_take_the_reference_path():
    model = random_model(Gemma2Config, head_dim=8, final_logit_softcapping=30.0)
    assert fused_head(model) is None


def test_scaled_logits_are_caught_by_the_probe():
    """Granite divides its logits by `logits_scaling` after the head: no config list names it, the probe sees it."""
    assert fused_head(random_model(GraniteConfig, logits_scaling=1.0)) is not None
    assert fused_head(random_model(GraniteConfig, logits_scaling=4.0)) is None


def test_an_adapter_on_the_head_takes_the_reference_path_and_one_elsewhere_does_not():
    on_head = get_peft_model(random_model(LlamaConfig), LoraConfig(r=4, target_modules=["lm_head"]))
    assert fused_head(on_head) is None
    on_attention = get_peft_model(random_model(LlamaConfig), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert fused_head(on_attention) is not None


def test_the_probe_leaves_the_model_in_training_mode_with_dropout():
    model = random_model(LlamaConfig, attention_dropout=0.5).train()
    assert fused_head(model) is not None  # eval-mode probe: dropout does not make the two paths differ
    assert model.training


def test_right_padded_rows_reach_sdpa_without_a_mask(examples):
    """Their losses equal each row's alone: tests/test_loss.py."""
    model = random_model(LlamaConfig)
    assert set(model_inputs(model, collate_padded(examples, pad_id=0))) == {"input_ids"}


def test_flash_attention_gets_the_padding_mask_stand_in_config_no_gpu_here(examples):
    """flash-attn needs a GPU: a stand-in model whose config requests it."""
    from types import SimpleNamespace

    stand_in = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    batch = collate_padded(examples, pad_id=0)
    assert model_inputs(stand_in, batch)["attention_mask"] is batch["attention_mask"]
