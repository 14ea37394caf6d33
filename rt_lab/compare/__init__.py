"""Sweep comparison: pair every finished run with its reference run (or a fixed reference file), judge each pair
of outputs, and report win rates as `summary.csv`, a markdown table, PNG plots and W&B tables.

    python -m rt_lab.compare SWEEP_DIR [judge=openai] [compare.reference.file=PATH] ...

runs by itself at the end of every multirun (`CompareCallback`, hydra/default.yaml). Settings: conf/compare/.
Judgments are cached in `<sweep>/comparison/judgments.jsonl`, so a rerun (more runs finished, a crash, the spend
cap) asks the judge only about pairs it has not judged.

Modules: `runs` (job dirs, pairing with references, table columns), `judging` (one pair judged), `report`
(aggregate, tables, commands), `cli` (the command and the Hydra callback), `wandb_log` (W&B tables)."""

from rt_lab.compare.cli import CompareCallback, compare, comparison_config, main
from rt_lab.compare.judging import Comparison, compare_pair
from rt_lab.compare.report import aggregate, markdown
from rt_lab.compare.runs import (Reference, Run, describe, find_runs, missing_jobs, pair_runs,
                                 varying_overrides)

__all__ = ["CompareCallback", "Comparison", "Reference", "Run", "aggregate", "compare", "compare_pair",
           "comparison_config", "describe", "find_runs", "main", "markdown", "missing_jobs", "pair_runs",
           "varying_overrides"]
