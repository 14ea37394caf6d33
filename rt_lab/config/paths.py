"""`paths/`: where things are. Every entry can come from the environment, so a cluster sets them once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class PathsConfig:
    output_dir: str = "${oc.env:RT_LAB_OUTPUT_DIR,outputs}"
    """Run and sweep dirs go here (RT_LAB_OUTPUT_DIR)."""
    data_dir: Optional[str] = "${oc.env:RT_LAB_DATA_DIR,null}"
    """A mirror of the datasets' files (the layout of ../shared/data); when set, the sets it mirrors load from it
    instead of the Hub, the others from the Hub unless HF_HUB_OFFLINE is set (RT_LAB_DATA_DIR)."""
    cache_dir: Optional[str] = "${oc.env:RT_LAB_CACHE_DIR,null}"
    """Converted and built models (GGUF -> safetensors, tiny models); null: ~/.cache/rt_lab (RT_LAB_CACHE_DIR)."""
    run_dir: Optional[str] = "${hydra:runtime.output_dir}"
    """This run's dir (Hydra's; null outside a job, e.g. under --cfg job)."""
    refine_dir: str = "${oc.env:RT_LAB_REFINE_DIR,${paths.output_dir}/refined}"
    """Rewritten training sets and their cache, shared by every run that refines the same rows
    (RT_LAB_REFINE_DIR)."""
