"""One rank of a multi-process FSDP training test (tests/test_fsdp.py starts it under torchrun).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/fsdp_worker.py JOBS.json

JOBS.json: {"out": DIR, "jobs": [{"name": ..., "stop_at": N or null, "overrides": [...]}, ...]}, run in order in
this one process group. A job's run dir is DIR/<name>, so a second job of the same name resumes the first from
its `last.ckpt`. Rank 0 writes each job's per-step losses and what FSDP wrapped (DIR/<name>/<n>.json, n counting
the job's attempts), the weights train() returned (DIR/<name>/<n>.pt) and the LightningModule's state that
generation.at_epochs gathers at the end of training (DIR/<name>/<n>-state.pt)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RT_LAB_ROOT", str(REPO))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

import rt_lab  # noqa: E402,F401  (registers the config resolvers)
from rt_lab.models import load_model, load_tokenizer, resolve_path  # noqa: E402
from rt_lab.train.fit import train  # noqa: E402
from rt_lab.train.fsdp import full_module_state  # noqa: E402


class Observer(L.Callback):
    """Per-step losses, what the strategy made of the model, and a stop after `stop_at` steps (a preemption)."""

    def __init__(self, stop_at: int | None) -> None:
        self.stop_at = stop_at
        self.losses: dict[int, float] = {}
        self.wrapping: dict = {}
        self.state: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
        from torch.distributed.fsdp import FullyShardedDataParallel

        root = pl_module.model
        units = [m for m in root.modules() if isinstance(m, FullyShardedDataParallel)]
        checkpointed = [m._checkpoint_wrapped_module for m in root.modules() if isinstance(m, CheckpointWrapper)]
        precision = root.mixed_precision
        self.wrapping = {
            "root_is_fsdp": isinstance(root, FullyShardedDataParallel),
            "units": sorted(type(unit.module).__name__ for unit in units[1:]),
            "checkpointed": sorted(type(m).__name__ for m in checkpointed),
            "hf_gradient_checkpointing": root.module.is_gradient_checkpointing,
            "mixed_precision": [str(precision.param_dtype), str(precision.reduce_dtype), str(precision.buffer_dtype)],
            "flat_param_dtypes": sorted({str(p.dtype) for p in root.parameters()}),
        }

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses[trainer.global_step] = float(trainer.callback_metrics["train/loss"])
        self.wrapping["fused_loss"] = pl_module.loss_head is not None  # chosen at train start
        if self.stop_at and trainer.global_step >= self.stop_at:
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.state = full_module_state(trainer.strategy)  # every rank joins


def run_job(out: Path, job: dict) -> None:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=job["overrides"])
    L.seed_everything(cfg.trainer.seed)
    path = resolve_path(cfg.model, None)
    observer = Observer(job.get("stop_at"))
    run_dir = out / job["name"]
    model = train(cfg, load_model(cfg.model, path), load_tokenizer(cfg.model, path), instantiate(cfg.template),
                  run_dir, [], [observer])
    if model is None:  # not rank 0
        return
    attempt = len(list(run_dir.glob("*.json")))
    torch.save({name: p.detach() for name, p in model.named_parameters()}, run_dir / f"{attempt}.pt")
    torch.save(observer.state, run_dir / f"{attempt}-state.pt")
    (run_dir / f"{attempt}.json").write_text(json.dumps({"losses": observer.losses, "wrapping": observer.wrapping,
                                                         "world_size": torch.distributed.get_world_size()}))


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    for job in spec["jobs"]:
        run_job(Path(spec["out"]), job)


if __name__ == "__main__":
    main()
