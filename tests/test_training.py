"""Real Lightning training of the tiny model: the loss falls (full, LoRA, QLoRA on CPU), gradients reach the
adapters, a resumed run continues exactly, and the accumulation split never changes a step."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback

from helpers import REPO, TINY
from rt_lab.train.adapters import apply_adapter, quantization_config
from rt_lab.generate.decode import encode_prompt, generate_batch, generation_config
from rt_lab.models import load_model, load_tokenizer, resolve_path
from rt_lab.train.fit import train


class Recorder(Callback):
    """Per-step losses; optionally stops the run after `stop_at` steps, like a preempted job."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.losses: dict[int, float] = {}
        self.stop_at = stop_at

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = float(trainer.callback_metrics["train/loss"])
        if self.stop_at and trainer.global_step >= self.stop_at:
            trainer.should_stop = True


def fit(cfg, run_dir: Path, model=None, stop_at: int | None = None):
    L.seed_everything(cfg.trainer.seed)
    path = resolve_path(cfg.model, None)
    tokenizer = load_tokenizer(cfg.model, path)
    model = model or load_model(cfg.model, path, quantization_config(cfg.adapter))
    recorder = Recorder(stop_at)
    trained = train(cfg, model, tokenizer, instantiate(cfg.template), run_dir, [], [recorder])
    return trained, recorder.losses


def test_building_the_tiny_model_leaves_the_global_rng_alone(compose, tmp_path):
    # run() seeds before it resolves the model: a run that builds the tiny model (cold cache) must draw the same
    # adapter init and dropout masks as one that loads it (the SLURM resume test compares the two step by step).
    from rt_lab.tiny import build_tiny

    model = compose(["model=tiny"]).model
    torch.manual_seed(123)
    before = torch.get_rng_state()
    build_tiny(model.tiny, tmp_path)
    assert torch.equal(torch.get_rng_state(), before)
    # the weights still come from the spec's seed alone
    cached = Path(resolve_path(model, None)) / "model.safetensors"
    assert (tmp_path / "model.safetensors").read_bytes() == cached.read_bytes()


def test_full_fine_tune_overfits(compose, tmp_path):
    cfg = compose(TINY + ["adapter=full", "dataset.limit=4", "trainer.lightning.max_epochs=25",
                          "trainer.optimizer.lr=1e-2", "trainer.schedule.name=constant",
                          "trainer.schedule.warmup_ratio=0"])
    _, losses = fit(cfg, tmp_path)
    assert len(losses) == 25
    assert losses[25] < 0.5 * losses[1]


def test_lora_overfits_and_leaves_the_base_untouched(compose, tmp_path):
    cfg = compose(TINY + ["adapter=lora", "dataset.limit=4", "trainer.lightning.max_epochs=25",
                          "trainer.optimizer.lr=3e-2", "trainer.schedule.name=constant",
                          "trainer.schedule.warmup_ratio=0"])
    base = load_model(cfg.model, resolve_path(cfg.model, None))
    before = {k: v.clone() for k, v in base.state_dict().items()}
    trained, losses = fit(cfg, tmp_path, model=base)
    assert losses[25] < 0.7 * losses[1]
    lora_b = [p for n, p in trained.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # lora_B starts at zero
    frozen = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
              for n, p in trained.named_parameters() if not p.requires_grad}
    assert all(torch.equal(frozen[k], before[k]) for k in frozen if k in before)


def test_qlora_gradients_reach_every_adapter_after_an_eval_forward(compose):
    """bitsandbytes repacks 4-bit weights for avx512-bf16 CPUs at the first eval-mode no-grad forward (a
    generate, a validation pass); without rt_lab's guard, backprop then leaves some adapters with zero grads."""
    import bitsandbytes as bnb

    cfg = compose(TINY + ["adapter=qlora", "adapter.lora.lora_dropout=0"])
    path = resolve_path(cfg.model, None)
    tokenizer = load_tokenizer(cfg.model, path)
    model = load_model(cfg.model, path, quantization_config(cfg.adapter))
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    model.eval()
    generate_batch(model, tokenizer, [encode_prompt("Hi", instantiate(cfg.template), tokenizer, "auto")],
                   generation_config(compose(TINY + ["generation.max_new_tokens=4"]).generation, tokenizer))
    model.train()
    model = apply_adapter(model, cfg.adapter)
    ids = torch.tensor([tokenizer("<|user|>\nHi there\n<|assistant|>\nHello friend</s>").input_ids])
    model(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_B" in n}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values()), \
        [n for n, g in grads.items() if g is None or g.abs().sum() == 0]


def test_qlora_on_cpu_overfits(compose, tmp_path):
    cfg = compose(TINY + ["adapter=qlora", "dataset.limit=4", "trainer.lightning.max_epochs=12",
                          "trainer.optimizer.lr=3e-2", "trainer.schedule.name=constant",
                          "trainer.schedule.warmup_ratio=0", "adapter.lora.lora_dropout=0"])
    trained, losses = fit(cfg, tmp_path)
    assert all(p.abs().sum() > 0 for n, p in trained.named_parameters() if "lora_B" in n)
    assert losses[12] < 0.7 * losses[1]


def test_resume_from_last_checkpoint_continues_exactly(compose, tmp_path):
    """Stop mid-epoch after 3 of 8 steps, resume from last.ckpt in the same dir: same steps, same losses."""
    overrides = TINY + ["adapter=lora", "trainer.lightning.max_epochs=2", "trainer.optimizer.lr=5e-3"]
    _, uninterrupted = fit(compose(overrides), tmp_path / "a")
    assert sorted(uninterrupted) == list(range(1, 9))
    _, first = fit(compose(overrides), tmp_path / "b", stop_at=3)
    assert sorted(first) == [1, 2, 3]
    assert (tmp_path / "b" / "checkpoints" / "last.ckpt").is_file()
    _, resumed = fit(compose(overrides), tmp_path / "b")
    assert sorted(resumed) == [4, 5, 6, 7, 8]
    for step in resumed:
        assert resumed[step] == pytest.approx(uninterrupted[step], rel=1e-5, abs=1e-6), step


@pytest.mark.parametrize("split", [["data.micro_batch_size=1"], ["data.micro_batch_size=4"],
                                   ["data.micro_batch_size=1", "data.packing=true"]])
@pytest.mark.parametrize("normalization", ["token", "sequence"])
def test_one_step_is_the_same_whatever_the_accumulation_split(compose, tmp_path, split, normalization):
    common = TINY + ["adapter=full", "trainer.lightning.max_steps=1", "data.shuffle=false",
                     f"trainer.loss_normalization={normalization}",
                     "trainer.optimizer._target_=torch.optim.SGD", "~trainer.optimizer.betas",
                     "trainer.optimizer.lr=0.5", "trainer.schedule.warmup_ratio=0", "trainer.max_grad_norm=null"]
    reference, reference_losses = fit(compose(common + ["data.micro_batch_size=2"]), tmp_path / "ref")
    other, losses = fit(compose(common + split), tmp_path / "other")
    assert losses[1] == pytest.approx(reference_losses[1], rel=1e-5)
    reference_params = dict(reference.named_parameters())
    for name, param in other.named_parameters():
        torch.testing.assert_close(param, reference_params[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("normalization", ["token", "sequence"])
def test_two_ddp_processes_take_the_same_step_as_one_device(compose, tmp_path, normalization):
    """Rows of a window are split across ranks and the loss is normalised by the all-reduced token (or row)
    count, so two CPU processes (gloo) must land on the same parameters as a single device."""
    common = TINY + ["adapter=full", "trainer.lightning.max_steps=1", "data.shuffle=false", "logger=none",
                     f"trainer.loss_normalization={normalization}",
                     "trainer.optimizer._target_=torch.optim.SGD", "~trainer.optimizer.betas",
                     "trainer.optimizer.lr=0.5", "trainer.schedule.warmup_ratio=0", "trainer.max_grad_norm=null"]
    single, _ = fit(compose(common), tmp_path / "single")
    cfg = compose(common + ["trainer.lightning.devices=2", "trainer.lightning.strategy=ddp_spawn"])
    L.seed_everything(cfg.trainer.seed)
    path = resolve_path(cfg.model, None)
    tokenizer = load_tokenizer(cfg.model, path)
    distributed = train(cfg, load_model(cfg.model, path), tokenizer, instantiate(cfg.template), tmp_path / "ddp", [])
    reference = dict(single.named_parameters())
    for name, param in distributed.named_parameters():
        torch.testing.assert_close(param, reference[name], rtol=1e-4, atol=1e-6, msg=name)


def test_micro_batch_normalisation_trains_on_the_old_trainers_loss(compose, tmp_path):
    """trainer.loss_normalization=micro_batch through the real training step: the step's loss is the mean of the
    model's own mean-reduced loss on each micro-batch (transformers < 4.46's Trainer, An et al.)."""
    from rt_lab.train.fit import build_datamodule

    cfg = compose(TINY + ["adapter=full", "trainer.lightning.max_steps=1", "data.shuffle=false",
                          "trainer.loss_normalization=micro_batch"])
    path = resolve_path(cfg.model, None)
    model = load_model(cfg.model, path)
    data = build_datamodule(cfg, load_tokenizer(cfg.model, path), instantiate(cfg.template))
    data.setup("fit")
    window = next(iter(data.train_dataloader()))
    assert len(window) == 2  # 4 rows in micro-batches of 2
    with torch.no_grad():
        micro_means = [float(model(input_ids=micro["input_ids"], attention_mask=micro["attention_mask"],
                                   labels=micro["labels"]).loss) for micro in window]
    _, losses = fit(cfg, tmp_path, model=model)
    assert losses[1] == pytest.approx(sum(micro_means) / 2, rel=1e-5)
    assert abs(micro_means[0] - micro_means[1]) > 1e-3  # the mean of means is not any one micro-batch's


@pytest.mark.slow
def test_smollm2_response_tuning_loss_falls(compose, tmp_path, smollm2_path):
    """The real 135M model, LoRA response tuning on the sample set (a few CPU minutes)."""
    cfg = compose(["model=smollm2_135m", "logger=none", "adapter=lora", "method=rt", "dataset.limit=8",
                   "data.batch_size=4", "data.micro_batch_size=4", "trainer.lightning.max_epochs=4",
                   "data.max_length=256", "trainer.optimizer.lr=1e-3", "trainer.schedule.name=constant",
                   "trainer.schedule.warmup_ratio=0", "+trainer.lightning.enable_progress_bar=false"])
    _, losses = fit(cfg, tmp_path)
    assert len(losses) == 8
    assert losses[7] + losses[8] < 0.8 * (losses[1] + losses[2])


def test_csv_metrics_survive_a_restart_in_the_same_dir(tmp_path):
    """Lightning's CSVLogger deletes metrics.csv when a run starts again in its dir; rt_lab's keeps the rows
    before the resumed step and drops the ones the resumed run logs again."""
    import csv

    from rt_lab.loggers import ResumableCSVLogger

    first = ResumableCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    for step in range(5):
        first.log_metrics({"train/loss": float(step)}, step=step)
    first.save()
    second = ResumableCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    second.forget_after(3)  # the checkpoint was at step 3: steps 3 and 4 are trained again
    for step in range(3, 6):
        second.log_metrics({"train/loss": 10.0 + step, "train/lr": 0.1}, step=step)
    second.save()
    with (tmp_path / "csv" / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(int(r["step"]), float(r["train/loss"])) for r in rows] == \
        [(0, 0.0), (1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0), (5, 15.0)]


class CheckpointWitness(Callback):
    """The training-loss steps metrics.csv holds on disk at each checkpoint save."""

    def __init__(self, metrics: Path) -> None:
        self.metrics = metrics
        self.on_disk: dict[int, list[int]] = {}

    def on_save_checkpoint(self, trainer, module, checkpoint) -> None:
        import csv

        with self.metrics.open(newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if row.get("train/loss")]
        self.on_disk[trainer.global_step] = [int(row["step"]) for row in rows]


def test_a_steps_metrics_are_on_disk_before_its_checkpoint(compose, tmp_path):
    """A crash just after a checkpoint save must not lose the step's logged metrics: the resumed run starts after
    that step and never logs it again."""
    from rt_lab.loggers import ResumableCSVLogger

    cfg = compose(TINY + ["dataset.limit=12"])  # 3 steps, a checkpoint after each
    L.seed_everything(cfg.trainer.seed)
    path = resolve_path(cfg.model, None)
    witness = CheckpointWitness(tmp_path / "csv" / "metrics.csv")
    logger = ResumableCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    train(cfg, load_model(cfg.model, path), load_tokenizer(cfg.model, path), instantiate(cfg.template), tmp_path,
          [logger], [witness])
    assert witness.on_disk == {1: [0], 2: [0, 1], 3: [0, 1, 2]}


def test_a_finished_training_started_again_writes_no_checkpoint(compose, tmp_path):
    """A job killed after training (while exporting, say) starts again from its final checkpoint: that one is
    kept as it is, not written whole once more (a 7B full fine-tune's is some 80 GB)."""
    cfg = compose(TINY + ["dataset.limit=8"])
    fit(cfg, tmp_path)
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    before = checkpoint.stat()
    _, losses = fit(cfg, tmp_path)
    assert losses == {}  # no step taken
    assert (checkpoint.stat().st_ino, checkpoint.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
