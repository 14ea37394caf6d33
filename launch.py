"""rt_lab entry point: `python launch.py [-m] key=value ...` (see README)."""

from __future__ import annotations

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

import rt_lab  # noqa: F401  (registers the config resolvers)
from rt_lab.run import run

os.environ.setdefault("RT_LAB_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> str:
    outputs = run(cfg)
    print(f"rt_lab: outputs written to {outputs}")
    return str(outputs)


if __name__ == "__main__":
    main()
