"""Length-controlled win rate (rt_lab.compare.lc_winrate) through alpaca_eval's own GLM.

Always: LC is refused off the 805 AlpacaEval instructions, a missing alpaca_eval names the extra, bad inputs are
named, the pkg_resources stand-in is withdrawn. With alpaca_eval importable: rt_lab.compare.winrate against alpaca_eval's
`get_winrate`, and the real GLM on real AlpacaEval outputs (GPT-4 Turbo reference vs Mistral-7B-Instruct) with
synthetic preferences, since no judge model runs here. Its calibration file (df_gamed.csv, hub-only) is synthetic
too unless the hub cache holds the real one."""

from __future__ import annotations

import hashlib
import json
import math
import sys

import pytest

from helpers import SHARED_DATA, needs_shared_data
from rt_lab.alpaca_eval_compat import pkg_resources_for_alpaca_eval
from rt_lab.compare import lc_winrate
from rt_lab.io import package_path
from rt_lab.compare.lc_winrate import (LengthControlUnavailable, alpaca_eval_positions, instruction_key,
                               length_controlled_win_rate)
from rt_lab.compare.winrate import summarize

OUTPUTS = SHARED_DATA / "alpaca_eval" / "model_outputs"


def load(name: str) -> list[dict]:
    return json.loads((OUTPUTS / f"{name}.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def pair() -> tuple[list[str], list[str], list[str]]:
    """instructions, model outputs (Mistral-7B-Instruct-v0.2), references (gpt4_1106_preview), AlpacaEval order."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"no shared data at {SHARED_DATA}")
    reference, model = load("gpt4_1106_preview"), load("Mistral-7B-Instruct-v0.2")
    return [r["instruction"] for r in reference], [m["output"] for m in model], [r["output"] for r in reference]


def length_driven(outputs: list[str], references: list[str], quality: float) -> list[float]:
    """Synthetic judge: P(model wins) = logistic(-3 tanh(standardised length difference) + quality), with the
    difference reference minus model as alpaca_eval standardises it; at equal lengths it is logistic(quality)."""
    deltas = [len(r) - len(o) for o, r in zip(outputs, references)]
    mean = sum(deltas) / len(deltas)
    std = math.sqrt(sum((d - mean) ** 2 for d in deltas) / (len(deltas) - 1))
    return [1 + 1 / (1 + math.exp(3 * math.tanh(d / std) - quality)) for d in deltas]


# --- always ----------------------------------------------------------------------------------------------------

@needs_shared_data
def test_shipped_keys_are_the_alpaca_eval_instructions_in_order():
    lines = (SHARED_DATA / "alpaca_eval" / "alpaca_eval.jsonl").read_text(encoding="utf-8").splitlines()
    instructions = [json.loads(line)["instruction"] for line in lines]
    shipped = package_path("pkg://sample_data/alpaca_eval_instruction_sha256.jsonl")
    assert [json.loads(line) for line in shipped.read_text().splitlines()] == \
        [hashlib.sha256(i.encode()).hexdigest()[:16] for i in instructions]
    assert alpaca_eval_positions(instructions) == list(range(805))
    # any order: each row keeps its own instruction's position
    assert alpaca_eval_positions(instructions[::-1]) == list(range(805))[::-1]


def test_other_prompt_sets_are_refused_before_alpaca_eval_is_needed(monkeypatch):
    monkeypatch.setitem(sys.modules, "alpaca_eval", None)
    with pytest.raises(LengthControlUnavailable, match="only defined on the 805 AlpacaEval instructions; got 3 "
                                                       "instructions, 3 of them not AlpacaEval's"):
        length_controlled_win_rate(["Write a poem.", "Sum 2 and 3.", "Hi"], ["a", "b", "c"], ["d", "e", "f"],
                                   [1.0, 2.0, 1.5])


def test_a_missing_or_repeated_alpaca_eval_instruction_is_refused(pair):
    instructions = pair[0]
    with pytest.raises(LengthControlUnavailable, match="got 804 instructions, 0 of them not AlpacaEval's, "
                                                       "1 AlpacaEval ones missing, 0 repeated"):
        alpaca_eval_positions(instructions[1:])
    with pytest.raises(LengthControlUnavailable, match="1 AlpacaEval ones missing, 1 repeated"):
        alpaca_eval_positions(instructions[1:] + [instructions[1]])
    # the exact text counts: one trailing space makes it another instruction
    with pytest.raises(LengthControlUnavailable, match="1 of them not AlpacaEval's"):
        alpaca_eval_positions([instructions[0] + " "] + instructions[1:])


def test_missing_alpaca_eval_names_the_extra(pair, monkeypatch):
    # None in sys.modules makes the import raise ImportError, as when the package is not installed
    monkeypatch.setitem(sys.modules, "alpaca_eval", None)
    monkeypatch.setitem(sys.modules, "alpaca_eval.metrics", None)
    instructions, outputs, references = pair
    expected = r'needs the alpaca_eval package.*pip install "rt_lab\[alpaca_eval\]"'
    with pytest.raises(LengthControlUnavailable, match=expected):
        length_controlled_win_rate(instructions, outputs, references, [1.5] * 805)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="differ in length: 2, 2, 2, 1"):
        length_controlled_win_rate(["a", "b"], ["x", "y"], ["x", "y"], [1.0])
    with pytest.raises(ValueError, match="preference 1 is 2.5"):
        length_controlled_win_rate(["a", "b"], ["x", "y"], ["x", "y"], [1.0, 2.5])
    with pytest.raises(ValueError, match="generator and reference_generator are both 'm'"):
        length_controlled_win_rate(["a"], ["x"], ["x"], [1.0], generator="m", reference_generator="m")


def test_pkg_resources_stand_in_is_withdrawn_after_the_import(monkeypatch):
    pd = pytest.importorskip("pandas")
    # as with setuptools >= 81 before alpaca_eval was ever imported
    monkeypatch.setitem(sys.modules, "pkg_resources", None)
    monkeypatch.delitem(sys.modules, "alpaca_eval.utils", raising=False)
    with pkg_resources_for_alpaca_eval():
        import pkg_resources

        assert pkg_resources.parse_version("1.10") > pkg_resources.parse_version("1.9")
        assert pkg_resources.get_distribution("pandas").version == pd.__version__
    assert "pkg_resources" not in sys.modules


def test_instruction_key_is_a_sha256_prefix():
    assert instruction_key("abc") == "ba7816bf8f01cfea"


# --- with alpaca_eval ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def alpaca_eval():
    try:
        lc_winrate._import_alpaca_eval_glm()
    except LengthControlUnavailable as err:
        pytest.skip(f"alpaca_eval cannot be imported: {err}")
    import alpaca_eval.metrics

    return alpaca_eval


def test_plain_win_rate_equals_alpaca_evals_get_winrate(alpaca_eval):
    import pandas as pd

    preferences = [1.0, 2.0, 1.5, 1.5, 1.73, 1.2, 1.5 + 1e-9, 1.5 - 1e-9, 2.0, 1.0, 1.99, float("nan"), 1.04]
    ours = summarize(preferences)
    theirs = alpaca_eval.metrics.get_winrate(pd.DataFrame({"preference": preferences}))
    for key in ("win_rate", "standard_error", "discrete_win_rate"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-12), key
    assert (ours["n_wins"], ours["n_losses"], ours["n_draws"], ours["n_total"]) == \
        (theirs["n_wins"], theirs["n_wins_base"], theirs["n_draws"], theirs["n_total"])


def synthetic_calibration(cache, monkeypatch) -> None:
    """A df_gamed.csv laid out as the hub cache holds it, read offline: two length-gamed baselines (longer and
    shorter than the reference) judged by the same length-driven rule, random instruction difficulties."""
    import huggingface_hub.constants
    import numpy as np
    import pandas as pd

    commit = "0" * 40
    repo = cache / "datasets--tatsu-lab--alpaca_eval"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 1, 805)
    frames = []
    for name, centre in (("gpt4_1106_preview_verbose", -1.0), ("gpt4_1106_preview_concise", 1.0)):
        delta = rng.normal(centre, 1, 805)
        frames.append(pd.DataFrame({"model": name, "index": range(805), "std_delta_len": delta,
                                    "preference": 1 / (1 + np.exp(3 * np.tanh(delta))),
                                    "instruction_difficulty": difficulty, "not_gamed_baseline": False}))
    pd.concat(frames, ignore_index=True).to_csv(repo / "snapshots" / commit / "df_gamed.csv", index=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("quality", [0.0, 1.0])
def test_official_lc_removes_length_from_synthetic_preferences_with_a_synthetic_calibration_file(
        alpaca_eval, pair, tmp_path, monkeypatch, quality):
    synthetic_calibration(tmp_path / "hub", monkeypatch)
    instructions, outputs, references = pair
    preferences = length_driven(outputs, references, quality)
    lc = length_controlled_win_rate(instructions, outputs, references, preferences, generator="Mistral-7B-Instruct",
                                    reference_generator="gpt4_1106_preview")
    length_free = 100 / (1 + math.exp(-quality))
    # Mistral's outputs are mostly shorter than GPT-4 Turbo's, so the raw win rate is far below the length-free one...
    assert summarize(preferences)["win_rate"] < length_free - 15
    # ...which the GLM recovers by predicting at equal lengths: the judge's own P(model wins) = logistic(quality)
    assert lc["lc_win_rate"] == pytest.approx(length_free, abs=0.5)
    # the same in another order: rows are matched to AlpacaEval positions by their instruction
    shuffled = length_controlled_win_rate(instructions[::-1], outputs[::-1], references[::-1], preferences[::-1],
                                          generator="Mistral-7B-Instruct", reference_generator="gpt4_1106_preview")
    assert shuffled["lc_win_rate"] == pytest.approx(lc["lc_win_rate"], abs=1e-6)


def test_missing_calibration_file_offline_is_named(alpaca_eval, pair, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    instructions, outputs, references = pair
    with pytest.raises(LengthControlUnavailable, match="needs df_gamed.csv from the Hugging Face dataset "
                                                       "tatsu-lab/alpaca_eval"):
        length_controlled_win_rate(instructions, outputs, references, [1.5] * 805)


def test_official_lc_with_the_real_calibration_file(alpaca_eval, pair):
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(*lc_winrate.CALIBRATION, repo_type="dataset"), str):
        pytest.skip("the real df_gamed.csv is not in the Hugging Face hub cache (see rt_lab/compare/lc_winrate.py)")
    instructions, outputs, references = pair
    lc = length_controlled_win_rate(instructions, outputs, references, length_driven(outputs, references, 0.0),
                                    generator="Mistral-7B-Instruct", reference_generator="gpt4_1106_preview")
    assert 0 < lc["lc_win_rate"] < 100 and lc["lc_standard_error"] >= 0
