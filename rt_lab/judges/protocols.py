"""Pairwise judge protocols (`judge.protocol`): how a pair is put to the judge, which single order is shown when
both are not asked (`judge.both_orders=false`), and how the answer's log-probabilities are read.

- `alpaca_eval`: an AlpacaEval annotator (`judge.annotator`, default `weighted_alpaca_eval_gpt4_turbo`, the one
  both papers report) exactly as the installed alpaca_eval package defines it, read at run time: its prompt
  template filled in and split into chat messages by alpaca_eval's own functions, one order per pair drawn as its
  `is_randomize_output_order` does (seeded on the instruction, so the same pair always gets the same order,
  whatever else is judged), and its completion parser (logprob_parser: the preference from the two labels'
  log-probabilities). Nothing of its text is copied here.
- `rt_lab`: rt_lab's own prompt; one order shows the reference first.

Add a protocol with `@register_protocol("name")` on a factory taking `annotator` and returning a `PairProtocol`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

from rt_lab.judges.base import JudgeError, Judgment, LogprobReader, Messages
from rt_lab.alpaca_eval_compat import INSTALL_HINT, pkg_resources_for_alpaca_eval
from rt_lab.registry import Registry

PROTOCOLS = Registry("judge protocol")
register_protocol = PROTOCOLS.register


@dataclass(frozen=True)
class PairProtocol:
    identity: dict[str, Any]  # what changes its judgments: part of every cache key
    labels: tuple[str, str]  # the answers "the first output shown is better", "the second is better"
    messages: Callable[[str, str, str], Messages]  # (instruction, first, second) -> the chat messages sent
    model_first: Callable[[str], bool]  # the one order shown for an instruction when both are not asked
    top_logprobs: int = 5  # candidates asked of a server for the answer's first token
    read: LogprobReader | None = field(default=None)  # None: `label_verdict` over the labels


def build_protocol(name: str, annotator: str | None = None) -> PairProtocol:
    return PROTOCOLS.lookup(name, "judge.protocol")(annotator=annotator)


# --- rt_lab's own prompt -------------------------------------------------------------------------------------

PROMPT_VERSION = "rt_lab-pairwise-v1"  # bump whenever the texts below change: cached judgments are keyed on it
LABELS = ("m", "M")  # first output, second output
SYSTEM_PROMPT = (
    "You are an impartial evaluator of AI assistants. You compare two responses to the same instruction and "
    "decide which one a careful human expert would prefer: the more helpful, correct, relevant and clear one. "
    "Length is not a merit in itself, and the order in which the responses appear does not matter."
)
USER_TEMPLATE = """Instruction:
<<<
{instruction}
>>>

Response m:
<<<
{first}
>>>

Response M:
<<<
{second}
>>>

Which response is better? Reply with a single character: m or M. Nothing else."""


@register_protocol("rt_lab")
def rt_lab_protocol(annotator: str | None = None) -> PairProtocol:
    """rt_lab's prompt (`annotator` is AlpacaEval's and ignored here); one order = the reference first."""

    def messages(instruction: str, first: str, second: str) -> Messages:
        user = USER_TEMPLATE.format(instruction=instruction, first=first, second=second)
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]

    return PairProtocol({"protocol": "rt_lab", "prompt": PROMPT_VERSION}, LABELS, messages, lambda _: False)


# --- AlpacaEval's annotators -------------------------------------------------------------------------------------

DEFAULT_ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
# alpaca_eval 0.6.6 SinglePairwiseAnnotator: the switch column its RandomSwitchTwoColumnsProcessor seeds the draw
# with ("is_switched_outputs" + instruction + str(seed)); the seed is BaseAnnotator's default, read below.
SWITCH_COLUMN = "is_switched_outputs"


def import_alpaca_eval() -> SimpleNamespace:
    """The parts of alpaca_eval the protocol uses, or an error saying how to install it."""
    try:
        with pkg_resources_for_alpaca_eval():
            from alpaca_eval import completion_parsers, constants, utils
            from alpaca_eval.annotators.base import BaseAnnotator
    except ImportError as err:
        raise JudgeError(f"judge.protocol=alpaca_eval reads its annotator from the alpaca_eval package, which "
                         f"cannot be imported ({err}): {INSTALL_HINT}") from err
    return SimpleNamespace(parsers=completion_parsers, configs=Path(constants.EVALUATORS_CONFIG_DIR), utils=utils,
                           seed=inspect.signature(BaseAnnotator.__init__).parameters["seed"].default,
                           version=importlib.metadata.version("alpaca_eval"))


def annotator_config(ae: SimpleNamespace, name: str) -> dict[str, Any]:
    path = ae.configs / name / "configs.yaml"
    if not path.is_file():
        known = sorted(p.parent.name for p in ae.configs.glob("*/configs.yaml"))
        raise JudgeError(f"judge.annotator={name}: alpaca_eval {ae.version} has no {path}; choose one of {known}")
    config = ae.utils.load_configs(path)[name]
    if config.get("fn_completion_parser") != "logprob_parser" or config.get("batch_size", 1) != 1:
        raise JudgeError(f"judge.annotator={name} ({path}): rt_lab runs the annotators that read one label's "
                         "log-probabilities (fn_completion_parser: logprob_parser, batch_size: 1), e.g. "
                         f"{DEFAULT_ANNOTATOR}")
    return config


def logprob_reader(parser: Callable[..., list[float]], top: Sequence[tuple[str, float]]) -> Judgment:
    """P(second output) through alpaca_eval's parser, fed the completion shape it reads (`completions_all`)."""
    completion = {"logprobs": {"content": [{"top_logprobs": [{"token": t, "logprob": lp} for t, lp in top]}]}}
    [preference] = parser(completion)
    if preference is None or math.isnan(preference):
        return Judgment(None, f"alpaca_eval's parser found neither label among the top logprobs "
                              f"{[token for token, _ in top]}")
    return Judgment(float(preference) - 1)  # AlpacaEval's preference: 1 = the first shown is better, 2 = the second


@register_protocol("alpaca_eval")
def alpaca_eval_protocol(annotator: str | None = None) -> PairProtocol:
    ae = import_alpaca_eval()
    name = annotator or DEFAULT_ANNOTATOR
    config = annotator_config(ae, name)
    template = ae.utils.read_or_return(config["prompt_template"], relative_to=ae.configs)
    kwargs = dict(config.get("completion_parser_kwargs") or {})
    others = [t for t in kwargs.get("denominator_tokens", []) if t != kwargs.get("numerator_token")]
    if len(others) != 1:
        raise JudgeError(f"judge.annotator={name}: expected a numerator_token and one other denominator token, got "
                         f"{kwargs}")
    randomized = config.get("is_randomize_output_order", True)

    def messages(instruction: str, first: str, second: str) -> Messages:
        import pandas as pd

        row = pd.DataFrame([{"instruction": instruction, "output_1": first, "output_2": second}])
        [prompt], _ = ae.utils.make_prompts(row, template)
        return ae.utils.prompt_to_chatml(prompt)

    def model_first(instruction: str) -> bool:
        # alpaca_eval's output_1 is the reference: a switch shows the model's output first
        return randomized and ae.utils.random_seeded_choice(seed=SWITCH_COLUMN + instruction + str(ae.seed),
                                                            choices=[False, True])

    identity = {"protocol": "alpaca_eval", "annotator": name, "alpaca_eval": ae.version,
                "template_sha256": hashlib.sha256(template.encode("utf-8")).hexdigest()[:16],
                "parser_kwargs": kwargs, "randomized": randomized, "seed": ae.seed}
    parser = partial(ae.parsers.logprob_parser, **kwargs)
    return PairProtocol(identity, (kwargs["numerator_token"], others[0]), messages, model_first,
                        int(config.get("completions_kwargs", {}).get("top_logprobs", 5)),
                        partial(logprob_reader, parser))
