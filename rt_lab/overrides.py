"""Hydra command-line overrides (`+model.lr=1e-4`, `~rules`, `method=rt`) as rt_lab reads them back: from a run's
.hydra/overrides.yaml, a sweep's multirun.yaml and the paired sweeper's arms."""

from __future__ import annotations


def override_key(override: str) -> str:
    """The key an override sets, without its add (`+`, `++`) or delete (`~`) prefix: `+a.b=1` -> `a.b`."""
    return override.split("=", 1)[0].lstrip("+~")
