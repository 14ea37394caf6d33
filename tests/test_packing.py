"""Packing is a pure speed-up: the same rows give the same loss and gradients packed or padded."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from rt_lab.data.datasets import load_rows
from rt_lab.data.datamodule import Batching, WindowLoader
from rt_lab.data.masking import encode_rows
from rt_lab.train import segment_attention
from rt_lab.train.loss import LOSS_NORMALIZATIONS, example_loss_sums, supervised_targets
from rt_lab.data.packing import best_fit_decreasing
from rt_lab.train.token_losses import fused_head
from rt_lab.data.templates import TagTemplate


def test_best_fit_decreasing_fills_bins_tightly():
    lengths = [5, 4, 3, 3, 2, 1]
    bins = best_fit_decreasing(lengths, capacity=6)
    assert sorted(i for b in bins for i in b) == list(range(6))
    assert [sorted(lengths[i] for i in b) for b in bins] == [[1, 5], [2, 4], [3, 3]]
    with pytest.raises(ValueError, match="exceeds the bin capacity"):
        best_fit_decreasing([7], capacity=6)


@pytest.fixture(scope="module")
def examples(tiny_tokenizer):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"name": "sample", "file": "pkg://sample_data/sample.jsonl", "format": "messages"})
    rows = load_rows(cfg)[:8]
    return encode_rows(rows, TagTemplate(), tiny_tokenizer, "assistant", max_length=160)


def window_loss_and_grads(model, window, normalization="token", head=None):
    """The step's loss and gradients as CausalLMModule computes them on one device."""
    norm = LOSS_NORMALIZATIONS[normalization]
    model.zero_grad(set_to_none=True)
    wheres = [supervised_targets(micro) for micro in window]
    total = sum(norm.units(where.counts) for where in wheres)
    loss = torch.zeros(())
    for micro, where in zip(window, wheres):
        micro_loss = norm.numerator(example_loss_sums(model, micro, where, head), where.counts)
        (micro_loss / total).backward()
        loss += micro_loss.detach() / total
    return loss, {name: p.grad.clone() for name, p in model.named_parameters()}


def loader(examples, tokenizer, packing, micro):
    return WindowLoader(examples, Batching(len(examples), micro, packing, pack_length=320, seed=0),
                        tokenizer.pad_token_id)


@pytest.mark.parametrize("fused", [True, False], ids=["fused_head", "reference_logits"])
@pytest.mark.parametrize("attn,normalization", [("eager", "token"), ("sdpa", "token"), ("sdpa", "sequence"),
                                                ("sdpa_segments", "token"), ("sdpa_segments", "sequence")])
def test_packed_equals_unpacked_loss_and_gradients(tiny_path, tiny_tokenizer, examples, attn, normalization, fused):
    """The packed batch carries no attention mask: transformers builds the block-causal one from position ids
    (sdpa_segments: rt_lab's attention cuts the row there instead)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_path, attn_implementation=attn, dtype=torch.float32)
    head = fused_head(model) if fused else None
    padded = next(iter(loader(examples, tiny_tokenizer, packing=False, micro=3)))
    packed = next(iter(loader(examples, tiny_tokenizer, packing=True, micro=3)))
    assert len(packed) < len(examples) and all(m["input_ids"].shape[0] == 1 for m in packed)
    assert all("attention_mask" not in m for m in packed)
    assert max(int((m["position_ids"] == 0).sum()) for m in packed) > 1  # bins really hold several rows
    loss_padded, grads_padded = window_loss_and_grads(model, padded, normalization, head)
    loss_packed, grads_packed = window_loss_and_grads(model, packed, normalization, head)
    torch.testing.assert_close(loss_packed, loss_padded, rtol=1e-5, atol=1e-6)
    for name, grad in grads_padded.items():
        torch.testing.assert_close(grads_packed[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_packed_equals_unpacked_loss_with_flex_attention(tiny_path, tiny_tokenizer, examples):
    """flex_attention runs forward only on CPU (its backward needs a GPU): the loss, not the gradients."""
    model = AutoModelForCausalLM.from_pretrained(tiny_path, attn_implementation="flex_attention",
                                                 dtype=torch.float32)
    padded = next(iter(loader(examples, tiny_tokenizer, packing=False, micro=3)))
    packed = next(iter(loader(examples, tiny_tokenizer, packing=True, micro=3)))
    with torch.no_grad():
        padded_sums, packed_sums = (torch.cat([example_loss_sums(model, m, supervised_targets(m), None)
                                               for m in window]) for window in (padded, packed))
    # packed bins hold the rows in another order: compare each row's loss sum, sorted
    torch.testing.assert_close(packed_sums.sort().values, padded_sums.sort().values, rtol=1e-5, atol=1e-5)


def test_packing_with_continuous_positions_would_contaminate(tiny_path, tiny_tokenizer, examples):
    model = AutoModelForCausalLM.from_pretrained(tiny_path, attn_implementation="sdpa", dtype=torch.float32)
    padded = next(iter(loader(examples, tiny_tokenizer, packing=False, micro=3)))
    packed = next(iter(loader(examples, tiny_tokenizer, packing=True, micro=3)))
    leaky = [m | {"position_ids": torch.arange(m["input_ids"].shape[1])[None]} for m in packed]
    loss_padded, _ = window_loss_and_grads(model, padded)
    loss_leaky, _ = window_loss_and_grads(model, leaky)
    assert abs(float(loss_leaky - loss_padded)) > 1e-4


@pytest.mark.parametrize("normalization", ["token", "sequence"])
def test_micro_batch_split_does_not_change_the_window(tiny_path, tiny_tokenizer, examples, normalization):
    model = AutoModelForCausalLM.from_pretrained(tiny_path, attn_implementation="sdpa", dtype=torch.float32)
    reference_loss, reference_grads = window_loss_and_grads(
        model, next(iter(loader(examples, tiny_tokenizer, packing=False, micro=len(examples)))),
        normalization)
    for micro in (1, 3):
        loss, grads = window_loss_and_grads(
            model, next(iter(loader(examples, tiny_tokenizer, packing=False, micro=micro))),
            normalization)
        torch.testing.assert_close(loss, reference_loss, rtol=1e-5, atol=1e-6)
        for name, grad in reference_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_windows_shard_rows_across_ranks_and_resume_mid_epoch(tiny_tokenizer, examples):
    kwargs = dict(batching=Batching(4, 1, pack_length=320, seed=3), pad_id=tiny_tokenizer.pad_token_id)
    ids = lambda window: sorted(tuple(m["input_ids"][0].tolist()) for m in window)
    whole = list(WindowLoader(examples, **kwargs))
    ranks = [list(WindowLoader(examples, rank=r, world_size=2, **kwargs)) for r in (0, 1)]
    for step, window in enumerate(whole):
        assert ids(window) == sorted(ids(ranks[0][step]) + ids(ranks[1][step]))
    resumed = list(WindowLoader(examples, position=lambda windows: (0, 1), **kwargs))
    assert [ids(w) for w in resumed] == [ids(w) for w in whole[1:]]
    next_epoch = list(WindowLoader(examples, position=lambda windows: (1, 0), **kwargs))
    assert [ids(w) for w in next_epoch] != [ids(w) for w in whole]


def test_segment_attention_runs_each_packed_sequence_alone(tiny_path, tiny_tokenizer, examples, monkeypatch):
    """sdpa_segments calls sdpa once per sequence of a packed row, causal and unmasked: no (L, L) mask exists."""
    model = AutoModelForCausalLM.from_pretrained(tiny_path, attn_implementation=segment_attention.NAME,
                                                 dtype=torch.float32)
    packed = next(iter(loader(examples, tiny_tokenizer, packing=True, micro=3)))[0]
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, is_causal=False, **kwargs):
        calls.append((query.shape[2], attn_mask is None, is_causal))
        return sdpa(query, key, value, attn_mask=attn_mask, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    example_loss_sums(model, packed, supervised_targets(packed), None)
    starts = (packed["position_ids"][0] == 0).nonzero()[:, 0].tolist() + [packed["input_ids"].shape[1]]
    lengths = [end - start for start, end in zip(starts, starts[1:])]
    assert len(lengths) > 1
    assert calls == [(length, True, True) for length in lengths] * model.config.num_hidden_layers


def test_segment_attention_is_sdpa_with_padding_and_a_kv_cache(tiny_path, tiny_tokenizer):
    """Outside packed rows (left-padded generation, decoding with a cache) sdpa_segments answers as sdpa does."""
    from rt_lab.generate.decode import encode_prompt, generate_batch, generation_config
    from omegaconf import OmegaConf

    prompts = [encode_prompt(text, TagTemplate(), tiny_tokenizer, "auto")
               for text in ("Hi", "Write a long sentence about the sea.", "Why?")]
    config = generation_config(OmegaConf.create({"max_new_tokens": 12, "do_sample": False, "temperature": 1.0,
                                                 "top_p": 1.0}), tiny_tokenizer)
    answers = {}
    for attn in ("sdpa", segment_attention.NAME):
        model = AutoModelForCausalLM.from_pretrained(tiny_path, attn_implementation=attn, dtype=torch.float32)
        answers[attn] = generate_batch(model.eval(), tiny_tokenizer, prompts, config)
    assert answers["sdpa"] == answers[segment_attention.NAME]


def test_packed_training_attends_per_sequence_and_hands_back_sdpa(compose, tiny_path):
    from rt_lab.train.fit import trainable, trained

    model = AutoModelForCausalLM.from_pretrained(tiny_path, attn_implementation="sdpa", dtype=torch.float32)
    assert trainable(model, compose(["model=tiny", "adapter=full", "data.packing=false"])).config._attn_implementation == "sdpa"
    cfg = compose(["model=tiny", "adapter=full", "data.packing=true"])
    training = trainable(model, cfg)
    assert training.config._attn_implementation == segment_attention.NAME
    assert trained(training, cfg).config._attn_implementation == "sdpa"
    eager = AutoModelForCausalLM.from_pretrained(tiny_path, attn_implementation="eager", dtype=torch.float32)
    assert trainable(eager, cfg).config._attn_implementation == "eager"  # left as chosen
