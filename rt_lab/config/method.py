"""`method/`: what a run trains on and where the loss is (rt_lab/data/methods.py, rt_lab/data/masking.py), or,
for the methods that train nothing, how the untrained model answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

from rt_lab.config.checks import ConfigValueError, registered


@dataclass
class MethodConfig:
    name: str = MISSING
    """The method's name in run names and tables (it, rt, full, single_task, base, rules, icl_<prompt>)."""
    train: bool = True
    """false: no training; the untrained model answers (base, rules, icl)."""
    user_turns: str = "keep"
    """How the user turns read in training (rt_lab/data/methods.py): keep, blank (Hewitt et al.'s RT), drop (An
    et al.'s RT)."""
    loss_on: str = "assistant"
    """Which tokens carry loss (rt_lab/data/masking.py): assistant (response + EOS), all."""
    requires_single_task: bool = False
    """Refuse datasets that are not single tasks (dataset.single_task)."""
    rules: list[str] = field(default_factory=list)
    """The rule head this method switches on by default (rules.enabled reads it)."""
    prompt: Optional[str] = None
    """method=icl: the in-context prompt (urial, urial_r, zero_shot, file)."""
    prompt_file: Optional[str] = None
    """method=icl prompt=file: a text with one {instruction}."""
    stop: list[str] = field(default_factory=list)
    """Cut every output before the first of these strings (generation.stop reads it)."""
    strip: Optional[str] = None
    """Strip outputs of whitespace, then of these characters at their end (generation.strip reads it)."""

    def check(self) -> None:
        registered("user_turns", self.user_turns, "rt_lab.data.methods:USER_TURNS")
        registered("loss_on", self.loss_on, "rt_lab.data.masking:LOSS_ON")
        if self.prompt == "file" and not self.prompt_file:
            raise ConfigValueError("prompt_file", self.prompt_file, "method.prompt=file needs a file: set "
                                   "method.prompt_file=PATH")
