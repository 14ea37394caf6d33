"""Mixed precision keeps fp32 master weights (rt_lab/train/precision.py), tested on the CPU with a bf16-loaded tiny
model at lr 1e-5, where a step on bf16 weights rounds almost every update away. CPU stand-ins for the GPU
presets: one device with bf16 autocast (trainer=gpu) and two gloo processes (trainer=ddp/fsdp-style data
parallel over fp32 parameters)."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from rt_lab.models import load_model, load_tokenizer, resolve_path
from rt_lab.train.fit import train
from helpers import TINY
from test_training import fit

LOW_LR = TINY + ["adapter=full", "model.dtype=bfloat16", "dataset.limit=8", "trainer.lightning.max_steps=2",
                 "data.shuffle=false", "trainer.optimizer.lr=1e-5", "trainer.schedule.name=constant",
                 "trainer.schedule.warmup_ratio=0"]


def master_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The weights training holds after its last step, as checkpointed for a resume."""
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    return {key.removeprefix("model."): value for key, value in state.items()}


@pytest.fixture(scope="module")
def start(tiny_path) -> dict[str, torch.Tensor]:
    """The bf16-loaded starting weights every run below begins from."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.bfloat16)
    return {name: p.detach().float() for name, p in model.named_parameters()}


@pytest.fixture(scope="module")
def fp32_reference(tmp_path_factory, start):
    """32-bit compute on the same bf16-loaded start: which elements a 2-step run moves, and where to."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from helpers import REPO

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=LOW_LR + ["trainer.lightning.precision=32-true"])
    run_dir = tmp_path_factory.mktemp("fp32")
    _, losses = fit(cfg, run_dir)
    GlobalHydra.instance().clear()
    weights = master_weights(run_dir)
    moved = {name: weights[name] != start[name] for name in start}
    return weights, moved, losses


def moved_fraction(weights: dict[str, torch.Tensor], start: dict[str, torch.Tensor],
                   moved: dict[str, torch.Tensor]) -> float:
    """Share of the elements that received a gradient (moved in 32 bits) that moved here too."""
    hit = sum(int((weights[n].float() != start[n])[moved[n]].sum()) for n in start)
    return hit / sum(int(m.sum()) for m in moved.values())


def test_bf16_mixed_moves_every_weight_that_got_a_gradient(compose, tmp_path, start, fp32_reference):
    reference, moved, reference_losses = fp32_reference
    assert sum(int(m.sum()) for m in moved.values()) > 0.5 * sum(m.numel() for m in moved.values())
    trained, losses = fit(compose(LOW_LR + ["trainer.lightning.precision=bf16-mixed"]), tmp_path)
    weights = master_weights(tmp_path)
    assert all(w.dtype == torch.float32 for w in weights.values())
    assert moved_fraction(weights, start, moved) == 1.0
    for step in (1, 2):  # bf16 compute: the losses agree to bf16's precision
        assert losses[step] == pytest.approx(reference_losses[step], rel=1e-2)
    for name, value in weights.items():  # each update is ~lr; bf16 gradients may flip the sign of a few
        torch.testing.assert_close(value, reference[name], rtol=0, atol=4.1e-5, msg=name)
    assert all(p.dtype == torch.bfloat16 for p in trained.parameters())  # exported in model.dtype


def test_two_processes_in_bf16_mixed_keep_fp32_master_weights(compose, tmp_path, start, fp32_reference):
    _, moved, _ = fp32_reference
    cfg = compose(LOW_LR + ["trainer.lightning.precision=bf16-mixed", "trainer.lightning.devices=2",
                            "trainer.lightning.strategy=ddp_spawn"])
    L.seed_everything(cfg.trainer.seed)
    path = resolve_path(cfg.model, None)
    train(cfg, load_model(cfg.model, path), load_tokenizer(cfg.model, path), instantiate(cfg.template), tmp_path, [])
    assert moved_fraction(master_weights(tmp_path), start, moved) == 1.0


def test_bf16_true_is_refused_unless_opted_in_and_then_loses_updates(compose, tmp_path, start, fp32_reference,
                                                                     caplog):
    from rt_lab.config.validate import ConfigError, validate

    _, moved, _ = fp32_reference
    with pytest.raises(ConfigError, match="allow_low_precision_weights=true"):
        validate(compose(LOW_LR + ["trainer.lightning.precision=bf16-true"]), files=False)
    with caplog.at_level(logging.WARNING, logger="rt_lab.train.precision"):
        fit(compose(LOW_LR + ["trainer.lightning.precision=bf16-true", "trainer.allow_low_precision_weights=true"]),
            tmp_path / "lossy")
    assert "updates below half a ulp are lost" in caplog.text
    assert moved_fraction(master_weights(tmp_path / "lossy"), start, moved) < 0.1


@pytest.mark.parametrize("precision,refused", [("bf16-true", True), ("16-true", True), ("bf16", False),
                                               ("16", False), ("bf16-mixed", False), ("32-true", False)])
def test_only_16_bit_weights_are_refused(compose, precision, refused):
    """Lightning's "bf16" and "16" are its old names for the mixed precisions: fp32 weights."""
    from rt_lab.config.validate import ConfigError, validate

    cfg = compose(TINY + [f"trainer.lightning.precision={precision}"])
    if refused:
        with pytest.raises(ConfigError, match="allow_low_precision_weights"):
            validate(cfg, files=False)
        validate(compose(TINY + [f"trainer.lightning.precision={precision}",
                                 "trainer.allow_low_precision_weights=true"]), files=False)
    else:
        validate(cfg, files=False)


def test_lora_on_a_bf16_base_trains_fp32_adapters(compose, tmp_path):
    trained, _ = fit(compose(TINY + ["adapter=lora", "model.dtype=bfloat16", "trainer.lightning.max_steps=1",
                                     "trainer.lightning.precision=bf16-mixed"]), tmp_path)
    trainable = [p for p in trained.parameters() if p.requires_grad]
    frozen = [p for p in trained.parameters() if not p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
