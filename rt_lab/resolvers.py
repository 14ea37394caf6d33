"""OmegaConf resolvers the configs use; registered on import of rt_lab."""

from __future__ import annotations

import secrets
from pathlib import Path

from omegaconf import OmegaConf


def sweep_name() -> str:
    """The launch this job belongs to: the sweep dir's name in a multirun, the run dir's name otherwise."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra = HydraConfig.get()
    return Path(hydra.sweep.dir if hydra.mode == RunMode.MULTIRUN else hydra.run.dir).name


def job_overrides() -> str:
    """The job's command-line overrides as one string ("dataset=lima,method=rt"), or "default"."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().job.override_dirname or "default"


def rules_suffix(enabled: list[str] | None) -> str:
    """Run-name part naming the enabled rules, so rule ablations get distinct AlpacaEval generator names."""
    return f"[{','.join(enabled)}]" if enabled else ""


def refined_suffix(refiner: str | None) -> str:
    """Run-name part marking a run trained on refined responses (`dataset.refine`), so it and the same run on the
    original responses get distinct AlpacaEval generator names."""
    return "-refined" if refiner else ""


def register() -> None:
    # Cached like Hydra's `now`, and Hydra copies the cache into every job of a sweep, so all jobs of one
    # launch share the suffix while two launches in the same second never share a directory.
    OmegaConf.register_new_resolver("rt_lab.uid", lambda: secrets.token_hex(3), use_cache=True, replace=True)
    OmegaConf.register_new_resolver("rt_lab.sweep_name", sweep_name, replace=True)
    OmegaConf.register_new_resolver("rt_lab.job_overrides", job_overrides, replace=True)
    OmegaConf.register_new_resolver("rt_lab.rules_suffix", rules_suffix, replace=True)
    OmegaConf.register_new_resolver("rt_lab.refined_suffix", refined_suffix, replace=True)
