"""AlpacaEval 2 length-controlled (LC) win rate through alpaca_eval's own GLM
(`alpaca_eval.metrics.glm_winrate.get_length_controlled_winrate`, version 0.6.6).

The GLM fits each preference on tanh(standardised length difference) + the instruction's difficulty + a model term,
regularised towards two length-gamed GPT-4-Turbo baselines, and predicts at zero length difference. Difficulty and
baselines come from `df_gamed.csv` in the Hugging Face dataset tatsu-lab/alpaca_eval, which alpaca_eval fetches at
run time (`hf_hub_download`); it is not in the package. Offline, pre-cache it where the hub is reachable and copy the
cache (HF_HUB_CACHE) over:
    hf download tatsu-lab/alpaca_eval df_gamed.csv --repo-type dataset
Difficulties are per AlpacaEval instruction, so LC is defined on the 805 AlpacaEval instructions only: each one is
found by its SHA-256 (shipped in sample_data/, in AlpacaEval's order), in whatever order they come.

alpaca_eval is an optional extra (`pip install "rt_lab[alpaca_eval]"`), imported through rt_lab.alpaca_eval_compat.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Sequence

from rt_lab.alpaca_eval_compat import INSTALL_HINT, pkg_resources_for_alpaca_eval
from rt_lab.io import package_path

CALIBRATION = ("tatsu-lab/alpaca_eval", "df_gamed.csv")
N_ALPACA_EVAL = 805


# AlpacaEval 2's LC GLM was fitted to judgments of its weighted GPT-4-Turbo annotator
OFFICIAL_ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
GPT4_TURBO_MODELS = ("gpt-4-1106-preview", "gpt-4-0125-preview", "gpt-4-turbo", "gpt-4-turbo-2024-04-09")


def lc_metric(judge_identity: dict) -> str:
    """`lc_win_rate` where the judge is AlpacaEval's own (its annotator's protocol on a GPT-4-Turbo model), else
    `lc_win_rate_unofficial`: the GLM's length and difficulty terms were fitted to that judge alone."""
    official = (judge_identity.get("protocol") == "alpaca_eval"
                and judge_identity.get("annotator") == OFFICIAL_ANNOTATOR
                and judge_identity.get("model") in GPT4_TURBO_MODELS)
    return "lc_win_rate" if official else "lc_win_rate_unofficial"


class LengthControlUnavailable(RuntimeError):
    """No LC win rate for these inputs here: not the AlpacaEval instructions, or alpaca_eval or its calibration
    file is missing. The plain win rate (rt_lab.compare.winrate) still applies."""


def instruction_key(instruction: str) -> str:
    return hashlib.sha256(instruction.encode("utf-8")).hexdigest()[:16]


def alpaca_eval_positions(instructions: Sequence[str]) -> list[int]:
    """Position of each instruction in AlpacaEval's 805; every one of them must come exactly once."""
    lines = package_path("pkg://sample_data/alpaca_eval_instruction_sha256.jsonl").read_text(encoding="utf-8")
    position = {json.loads(line): index for index, line in enumerate(lines.splitlines())}
    keys = [instruction_key(instruction) for instruction in instructions]
    unknown = sum(key not in position for key in keys)
    missing = N_ALPACA_EVAL - len(set(keys) & set(position))
    if unknown or missing or len(keys) != N_ALPACA_EVAL:
        raise LengthControlUnavailable(
            f"the LC win rate is only defined on the {N_ALPACA_EVAL} AlpacaEval instructions; got {len(keys)} "
            f"instructions, {unknown} of them not AlpacaEval's, {missing} AlpacaEval ones missing, "
            f"{len(keys) - len(set(keys))} repeated"
        )
    return [position[key] for key in keys]


def length_controlled_win_rate(instructions: Sequence[str], outputs: Sequence[str], references: Sequence[str],
                               preferences: Sequence[float | None], generator: str = "model",
                               reference_generator: str = "reference") -> dict[str, float]:
    """LC win rate (%) of `outputs` against `references` and its standard error, from AlpacaEval preferences
    (1 = reference wins, 2 = model wins; None or NaN = unparsable, left out of the fit but predicted for)."""
    lengths = {len(instructions), len(outputs), len(references), len(preferences)}
    if len(lengths) != 1:
        raise ValueError(f"instructions, outputs, references and preferences differ in length: "
                         f"{len(instructions)}, {len(outputs)}, {len(references)}, {len(preferences)}")
    if generator == reference_generator:
        raise ValueError(f"generator and reference_generator are both {generator!r}; alpaca_eval would then "
                         "return 50 by construction")
    values = [math.nan if p is None else float(p) for p in preferences]
    bad = next((i for i, p in enumerate(values) if not (math.isnan(p) or 1.0 <= p <= 2.0)), None)
    if bad is not None:
        raise ValueError(f"preference {bad} is {values[bad]}; AlpacaEval preferences lie in [1, 2] (None = unparsable)")
    positions = alpaca_eval_positions(instructions)
    glm_winrate = _import_alpaca_eval_glm()

    import pandas as pd
    from huggingface_hub.errors import LocalEntryNotFoundError

    # alpaca_eval reads each row's instruction difficulty by the row's index label: its AlpacaEval position
    annotations = pd.DataFrame({"instruction": list(instructions), "output_1": list(references),
                                "output_2": list(outputs), "generator_1": reference_generator,
                                "generator_2": generator, "preference": values}, index=positions)
    try:
        # save_weights_dir=None: by default it writes the fitted weights into its own installed package
        metrics = glm_winrate.get_length_controlled_winrate(annotations, save_weights_dir=None,
                                                            is_add_glm_preference_inplace=False)
    except LocalEntryNotFoundError as err:
        raise LengthControlUnavailable(
            f"alpaca_eval's LC needs {CALIBRATION[1]} from the Hugging Face dataset {CALIBRATION[0]}, which is "
            f"neither in the hub cache nor downloadable here ({err}); pre-cache it (see rt_lab/compare/lc_winrate.py)"
        ) from err
    return {"lc_win_rate": float(metrics["length_controlled_winrate"]),
            "lc_standard_error": float(metrics["lc_standard_error"])}


def _import_alpaca_eval_glm() -> Any:
    try:
        with pkg_resources_for_alpaca_eval():
            from alpaca_eval.metrics import glm_winrate
    except ImportError as err:
        raise LengthControlUnavailable(
            f"the LC win rate needs the alpaca_eval package, which cannot be imported ({err}): {INSTALL_HINT}"
        ) from err
    return glm_winrate
