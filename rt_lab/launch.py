"""The Hydra application behind `python launch.py` and `rt-lab run`: one run, or a sweep with -m (README)."""

from __future__ import annotations

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

import rt_lab  # noqa: F401  (registers the config resolvers and schemas)

ROOT = Path(__file__).resolve().parents[1]
# sweeps/ (presets) sits beside conf/ at the repository root, on Hydra's search path (conf/config.yaml)
os.environ.setdefault("RT_LAB_ROOT", str(ROOT))


@hydra.main(version_base="1.3", config_path=str(ROOT / "conf"), config_name="config")
def main(cfg: DictConfig) -> str:
    from rt_lab.run import run  # torch and the rest load only when a job runs, not for --help or a dry run

    outputs = run(cfg)
    print(f"rt_lab: outputs written to {outputs}")
    return str(outputs)
