"""Hydra command-line overrides (`+model.lr=1e-4`, `~rules`, `method=rt`) as rt_lab reads them back: from a run's
.hydra/overrides.yaml, a sweep's multirun.yaml and the paired sweeper's arms; and the root config composed with
overrides outside a Hydra job, for the commands that read configs (rt_lab.compare, rt_lab.analysis)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


def override_key(override: str) -> str:
    """The key an override sets, without its add (`+`, `++`) or delete (`~`) prefix: `+a.b=1` -> `a.b`."""
    return override.split("=", 1)[0].lstrip("+~")


def compose_root(overrides: Sequence[str]) -> Any:
    """conf/config.yaml composed with `overrides`, as a launch would, without running a job."""
    from hydra import compose, initialize_config_dir

    import rt_lab  # noqa: F401  (resolvers)

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose("config", overrides=list(overrides))
