"""Loss normalisation (rt_lab/train/loss.py) against values computed independently: each example alone through the
model with Hugging Face's own shifted, mean-reduced loss."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from rt_lab.data.collate import collate_padded
from rt_lab.train.loss import LOSS_NORMALIZATIONS, example_loss_sums, supervised_targets
from rt_lab.data.masking import IGNORE, Example
from rt_lab.data.packing import collate_packed
from rt_lab.train.token_losses import fused_head


@pytest.fixture(scope="module")
def model(tiny_path):
    return AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)


@pytest.fixture(scope="module")
def examples():
    # supervised targets: 2, 5 and 1 tokens, so the two normalisations differ
    return [Example("a", [5, 6, 7, 8], [IGNORE, IGNORE, 7, 8]),
            Example("b", [9, 10, 11, 12, 13, 14, 15], [IGNORE, IGNORE, 11, 12, 13, 14, 15]),
            Example("c", [16, 17, 18], [IGNORE, IGNORE, 18])]


def alone(model, example: Example) -> tuple[float, int]:
    """(mean token loss, supervised targets) of one example in a forward pass of its own."""
    ids, labels = torch.tensor([example.input_ids]), torch.tensor([example.labels])
    return float(model(input_ids=ids, labels=labels).loss), int((labels[0, 1:] != IGNORE).sum())


def normalised(model, batch, name: str, head) -> float:
    norm = LOSS_NORMALIZATIONS[name]
    where = supervised_targets(batch)
    sums = example_loss_sums(model, batch, where, head)
    return float(norm.numerator(sums, where.counts) / norm.units(where.counts))


@pytest.mark.parametrize("fused", [True, False], ids=["fused_head", "reference_logits"])
@pytest.mark.parametrize("packed", [False, True])
def test_token_and_sequence_normalisation_match_hand_computed_values(model, examples, packed, fused):
    head = fused_head(model) if fused else None
    assert (head is not None) == fused
    means, counts = zip(*(alone(model, example) for example in examples))
    token = sum(m * n for m, n in zip(means, counts)) / sum(counts)
    sequence = sum(means) / len(means)
    batch = collate_packed(examples) if packed else collate_padded(examples, pad_id=0)
    assert supervised_targets(batch).counts.tolist() == list(counts)  # each row's targets, found before the forward
    with torch.no_grad():
        assert normalised(model, batch, "token", head) == pytest.approx(token, rel=1e-5)
        assert normalised(model, batch, "sequence", head) == pytest.approx(sequence, rel=1e-5)
    assert abs(token - sequence) > 1e-3


def test_an_unknown_normalisation_names_the_key():
    with pytest.raises(KeyError, match="trainer.loss_normalization='rows'"):
        LOSS_NORMALIZATIONS.lookup("rows", "trainer.loss_normalization")


def step_loss(model, micro_batches, name: str) -> float:
    """The step's loss as the training step composes it: the numerators over the step's micro-batches divided by
    their units."""
    norm = LOSS_NORMALIZATIONS[name]
    numerator = units = 0.0
    for batch in micro_batches:
        where = supervised_targets(batch)
        numerator += float(norm.numerator(example_loss_sums(model, batch, where, None), where.counts))
        units += float(norm.units(where.counts))
    return numerator / units


def test_micro_batch_normalisation_is_the_old_trainers_mean_of_micro_batch_means(model, examples):
    """transformers < 4.46 (An et al.'s TRL SFTTrainer): each micro-batch's loss is the model's own mean-reduced
    loss over its padded rows, divided by the accumulation steps and summed over them."""
    split = [examples[:2], examples[2:]]  # 7 supervised targets, then 1
    micro_batches = [collate_padded(part, pad_id=0) for part in split]
    with torch.no_grad():
        old_trainer = sum(float(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                      labels=batch["labels"]).loss) / len(split) for batch in micro_batches)
        assert step_loss(model, micro_batches, "micro_batch") == pytest.approx(old_trainer, rel=1e-5)
        # the one normalisation the split changes: one micro-batch of all three is the token mean
        whole = [collate_padded(examples, pad_id=0)]
        assert step_loss(model, whole, "micro_batch") == pytest.approx(step_loss(model, whole, "token"), rel=1e-5)
        assert abs(step_loss(model, micro_batches, "micro_batch") - step_loss(model, micro_batches, "token")) > 1e-3
