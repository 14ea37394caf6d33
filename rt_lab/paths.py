"""Files named in configs: `pkg://` names a file shipped inside rt_lab, so configs and tests can point at the
sample data wherever the package is installed."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def package_path(file: str) -> Path:
    """`pkg://sample_data/x.jsonl` names a file shipped inside rt_lab; anything else is a filesystem path."""
    if file.startswith("pkg://"):
        return Path(str(resources.files("rt_lab").joinpath(file.removeprefix("pkg://"))))
    return Path(file).expanduser()
