"""`compare/`: the end-of-sweep comparison (rt_lab/compare/): every finished run against its reference, judged by
`judge/`, into win-rate tables, plots and the papers' numbers beside them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from rt_lab.config.checks import ConfigValueError, one_of


@dataclass
class ReferenceConfig:
    select: dict[str, Any] = field(default_factory=dict)
    """The reference run has these values (a config group stands for its name; nest keys for deeper values, e.g.
    +compare.reference.select.dataset.refusal_mix=0); compare=default: {method: it}."""
    match: list[str] = field(default_factory=lambda: ["model", "dataset", "trainer.seed", "prompts",
                                                      "generation.max_new_tokens"])
    """...and the same values as the compared run at these keys."""
    sweep: Optional[Any] = None
    """Finished runs of other sweeps are candidates too (same select/match): a sweep dir or a list of them."""
    multiple: str = "error"
    """Several finished runs qualify as one run's reference: error, or all (compare with each; the row is their
    mean ± std: Hewitt et al.'s rule head against each of the 5 IT seeds)."""
    file: Optional[str] = None
    """Instead of a run: one AlpacaEval model_outputs.json every run is judged against."""

    def check(self) -> None:
        one_of("multiple", self.multiple, ("error", "all"))
        if not self.select and not self.file:
            raise ConfigValueError("select", self.select, "empty, and file is unset: nothing says which run is the "
                                   "reference; e.g. compare.reference.select={method: it}")


@dataclass
class CompareConfig:
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    """Which run each run is judged against."""
    length_controlled: str = "auto"
    """The LC win rate (the 805 AlpacaEval prompts and the alpaca_eval package): auto = where possible, on =
    required, off = never."""
    paper_table: Optional[str] = None
    """The published table the sweep reproduces, printed beside rt_lab's numbers (an id of
    rt_lab/compare/paper_numbers.yaml); set by the presets that reproduce one."""
    at_sweep_end: bool = True
    """Compare at the end of every multirun; false: run python -m rt_lab.compare SWEEP_DIR yourself."""

    def check(self) -> None:
        one_of("length_controlled", self.length_controlled, ("auto", "on", "off"))
        if self.paper_table is not None:
            from rt_lab.compare.paper import paper_tables

            one_of("paper_table", self.paper_table, sorted(paper_tables()))
