"""The papers' figures and numbers in the sweep comparison: each figure made only when the sweep's runs have its
axis (win rate vs epoch against reference runs, refusal rate vs refusals mixed in, the rule ablation bars), its
numbers written beside the PNG and checked by hand; the paper's table beside rt_lab's with difference and
within-std flag by hand; the transcribed figures against their sources. Sweep results are fabricated job dirs,
judged by a canned judge on a loopback HTTP server that prefers the longer answer (a paid API's model cannot run
here)."""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from pathlib import Path

import pytest

from helpers import SHARED_DATA, needs_shared_data, outputs_for, write_run
from judge_server import judge_overrides
from rt_lab.compare import aggregate, compare
from rt_lab.compare.figures import rule_ablation_series
from rt_lab.compare.paper import beside, markdown, paper_table, paper_tables


def read_csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def figure_numbers(png: Path) -> list[dict]:
    """The numbers a figure plots, from the JSON the comparison writes beside the PNG."""
    assert png.read_bytes()[:4] == b"\x89PNG"
    return json.loads(png.with_suffix(".json").read_text())


def comparison_row(model: str, method: str, dataset: str, seed: int, lc: float, key: str = "lc_win_rate") -> dict:
    return {"model": model, "method": method, "dataset": dataset, "setting": "", "reference_kind": "method=it",
            "run": f"{model}-{method}-seed{seed}", "reference": f"{model}-it-seed{seed}", "win_rate": 50.0,
            "standard_error": 2.0, "n_unparsable": 0, key: lc}


# --- the paper's table beside rt_lab's ---------------------------------------------------------------------------


def test_paper_table_beside_rt_lab_with_difference_and_within_std_by_hand():
    table = aggregate([comparison_row("llama2_7b", "rt", "lima", seed, lc) for seed, lc in ((1, 41.0), (2, 43.0),
                                                                                          (3, 45.0))]
                      + [comparison_row("olmo_7b", "rt", "lima", seed, lc) for seed, lc in ((1, 40.0), (2, 41.0))]
                      + [comparison_row("llama2_7b", "base", "sample", 1, 2.5)]
                      + [comparison_row("llama2_7b", "rt", "dolly", 1, 43.3)])  # no paper row: not listed
    paper = paper_table("h_table1")
    lines, unmatched = beside(paper, table)
    got = {(line["model"], line["method"]): line for line in lines}
    assert set(got) == {("llama2_7b", "rt"), ("olmo_7b", "rt"), ("llama2_7b", "base")} and unmatched == 1
    # llama2_7b rt: mean 43.0, std 2.0 (41, 43, 45) against 43.3 ± 1.1: -0.3, within
    assert (got["llama2_7b", "rt"]["delta"], got["llama2_7b", "rt"]["within_std"]) == (pytest.approx(-0.3), True)
    # olmo_7b rt: mean 40.5 against 43.7 ± 1.7 (42.0 to 45.4): -3.2, not within
    assert (got["olmo_7b", "rt"]["delta"], got["olmo_7b", "rt"]["within_std"]) == (pytest.approx(-3.2), False)
    # base: one seed, 2.5 against 2.4 ± 0.14: within; any dataset (the paper row names none)
    assert (got["llama2_7b", "base"]["delta"], got["llama2_7b", "base"]["within_std"]) == (pytest.approx(0.1), True)
    text = markdown(paper, lines, unmatched)
    assert text.startswith("Paper (h_table1): Hewitt et al. (arXiv 2409.14254) Table 1")
    assert "| model | method | dataset | metric | paper | rt_lab | seeds | rt_lab - paper | within paper ± std |" in text
    assert "| llama2_7b | rt | lima | lc_win_rate | 43.3 ± 1.1 | 43.0 ± 2.0 | 3 | -0.3 | yes |" in text
    assert "| olmo_7b | rt | lima | lc_win_rate | 43.7 ± 1.7 | 40.5 ± 0.7 | 2 | -3.2 | no |" in text
    assert "| llama2_7b | base |  | lc_win_rate | 2.4 ± 0.14 | 2.5 | 1 | +0.1 | yes |" in text
    assert "1 of the paper's 4 rows are not in this sweep." in text


def test_a_figure_without_spread_has_no_within_flag_and_an_unofficial_lc_is_named():
    """An et al. give one seed's figure, no std; rt_lab's LC under another judge than AlpacaEval's GPT-4-Turbo is
    `lc_win_rate_unofficial`, compared and named so."""
    table = aggregate([comparison_row("gemma2_9b", "rt", "lima_an", 0, 45.0, "lc_win_rate_unofficial")])
    lines, unmatched = beside(paper_table("a_fig9"), table)
    (line,) = lines
    assert (line["metric"], line["paper"], line["delta"], line["within_std"]) == \
        ("lc_win_rate_unofficial", 42.0, pytest.approx(3.0), None)
    assert unmatched == 11
    assert "| gemma2_9b | rt | lima_an | lc_win_rate_unofficial | 42 | 45.0 | 1 | +3.0 | - |" in \
        markdown(paper_table("a_fig9"), lines, unmatched)


def test_an_unknown_paper_table_is_named_with_the_known_ones():
    with pytest.raises(KeyError, match=r"compare.paper_table=h_table9: no such table .*paper_numbers.yaml; "
                                       r"tables: \['a_fig9', 'a_table29', 'a_tables15_16', 'h_ab_tags'"):
        paper_table("h_table9")


@needs_shared_data
def test_an_et_al_figures_are_those_of_the_transcribed_anchors():
    anchors = json.loads((SHARED_DATA / "an_rt" / "paper_anchors_v3.json").read_text())
    models = {"llama31_8b": "Llama-3.1-8B", "gemma2_9b": "Gemma-2-9B", "gemma2_2b": "Gemma-2-2B",
              "mistral_7b": "Mistral-7B-v0.3"}
    datasets = {"alpaca_an": "Alpaca", "dolly_an": "Dolly", "lima_an": "LIMA"}
    tables = paper_tables()
    fig9 = tables["a_fig9"]
    assert len(fig9.rows) == 12
    for row in fig9.rows:
        published = anchors["fig9_gpt4_LC_winrate_RT_vs_IT_pct"][models[row.keys["model"]]][datasets[row.keys["dataset"]]]
        assert row.figures["lc_win_rate"] == (published, None)
    refusal = tables["a_tables15_16"]
    assert len(refusal.rows) == 96
    columns = anchors["tables15_16_refusal"]["_columns"]
    for row in refusal.rows:
        keys = row.keys
        values = anchors["tables15_16_refusal"][models[keys["model"]]][datasets[keys["dataset"]]][
            keys["method"].upper()][str(keys["refusal_mix"])]
        assert row.figures == {"mean_refusal_rate": (values[columns.index("Average_RR")], None),
                               "false_refusal_rate": (values[columns.index("XSTest_benign_FalseRR")], None)}


@needs_shared_data
def test_hewitt_et_al_figures_are_those_of_papers_md():
    """Every figure of the headline table in docs/PAPERS.md §5 (and the tag ablation's 41.8) is in a table."""
    text = (SHARED_DATA.parent / "docs" / "PAPERS.md").read_text()
    section = text.split("## 5.")[1].split("## 6.")[0]
    names = {"base": ("base", None), "RT": ("rt", "lima"), "GSM": ("single_task", "gsm8k"),
             "poetry": ("single_task", "poetry"), "MBPP": ("single_task", "mbpp"),
             "recipes": ("single_task", "recipes"), "chess": ("single_task", "chess"),
             "rules (3)": ("rules[eos_ramp,uniform,diversity]", None)}
    ours = {(row.keys["model"], row.keys["method"], row.keys.get("dataset")): row.figures["lc_win_rate"]
            for table in paper_tables().values() if table.id.startswith("h_table") for row in table.rows}
    found = 0
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] not in names:
            continue
        method, dataset = names[cells[0]]
        for model, cell in zip(("llama2_7b", "olmo_7b"), cells[1:]):
            if cell == "—":
                continue
            mean, std = (float(x) for x in re.fullmatch(r"([\d.]+) ± ([\d.]+)", cell).groups())
            assert ours[model, method, dataset] == (mean, std)
            found += 1
    assert found == 15
    ablation = " ".join(text.split("Ablations (Llama-2-7B")[1].split("\n\n")[0].split())  # one line
    for rules, label in (("rules[uniform,diversity]", "without EOS"), ("rules[eos_ramp,uniform]", "without diversity"),
                         ("rules[eos_ramp,diversity]", "without uniform")):
        figure = float(re.search(rf"{label} (\d+\.\d+)", ablation).group(1))
        assert ours["llama2_7b", rules, None] == (figure, None)
    assert "(RT still 41.8%)" in text and paper_table("h_ab_tags").rows[0].figures["lc_win_rate"] == (41.8, None)


# --- figures, each only with its axis -----------------------------------------------------------------------------


def test_refusal_rates_vs_refusals_mixed_in_with_the_papers_figures(tmp_path, compose, length_judge):
    """a_refusal_mix's runs (IT and RT at 0 and 100 refusals, two seeds) with fabricated safety metrics: the
    refusal table, the figure's numbers and Table 15's figures beside them, by hand; and each RT run is judged
    against the IT run trained with the same refusals."""
    root = tmp_path / "sweep"
    rates = {("it", 0): [(0.40, 0.10), (0.44, 0.14)], ("it", 100): [(0.70, 0.20), (0.74, 0.16)],
             ("rt", 0): [(0.20, 0.12), (0.30, 0.12)], ("rt", 100): [(0.50, 0.10), (0.46, 0.12)]}
    number = 0
    for (method, mix), seeds in rates.items():
        for seed, (harmful, benign) in enumerate(seeds, start=1):
            arm = ["method=rt", "method.user_turns=drop"] if method == "rt" else ["method=it"]
            answer = "x" * (3 if method == "rt" else 2 + mix // 100)  # RT: longer at 0, as long at 100
            job = write_run(root, number, compose, ["sweeps=a_refusal_mix", *arm, f"dataset.refusal_mix={mix}",
                                                    f"trainer.seed={seed}"], outputs_for(answer, answer))
            (job / "eval").mkdir()
            (job / "eval" / "safety.json").write_text(json.dumps(
                {"mean_refusal_rate": harmful, "false_refusal_rate": benign, "advbench/refusal_rate": harmful}))
            number += 1
    compare(root, compose(["sweeps=a_refusal_mix", *judge_overrides(length_judge), "logger=none"]))
    out = root / "comparison"

    # RT against the same-mix, same-seed IT run: longer at 0 refusals (70), as long at 100 (50)
    pairs = {(row["setting"].split()[-1], row["seed"]): (row["reference"], float(row["win_rate"]))
             for row in read_csv(out / "summary.csv")}
    assert pairs == {(f"dataset.refusal_mix={mix}", str(seed)): (f"gemma2_9b-it-lima_an-seed{seed}", rate)
                     for mix, rate in ((0, 70.0), (100, 50.0)) for seed in (1, 2)}

    table = {(row["method"], row["refusal_mix"]): row for row in read_csv(out / "refusals.csv")}
    for (method, mix), seeds in rates.items():
        row = table[method, str(mix)]
        harmful, benign = zip(*seeds)
        assert float(row["mean_refusal_rate"]) == pytest.approx(statistics.fmean(harmful))
        assert float(row["mean_refusal_rate_std"]) == pytest.approx(statistics.stdev(harmful))
        assert float(row["false_refusal_rate"]) == pytest.approx(statistics.fmean(benign))
        assert float(row["advbench/refusal_rate"]) == pytest.approx(statistics.fmean(harmful))
        assert row["seeds"] == "2"

    (panel,) = figure_numbers(out / "refusal_vs_mix.png")
    assert (panel["model"], panel["dataset"]) == ("gemma2_9b", "lima_an")
    lines = {(line["label"], line["metric"]): line for line in panel["lines"]}
    assert lines["it", "mean_refusal_rate"]["x"] == [0, 100]
    assert lines["it", "mean_refusal_rate"]["y"] == pytest.approx([0.42, 0.72])
    assert lines["it", "mean_refusal_rate"]["error"] == pytest.approx([statistics.stdev([0.40, 0.44])] * 2)
    assert lines["rt method.user_turns=drop", "mean_refusal_rate"]["y"] == pytest.approx([0.25, 0.48])
    assert lines["rt method.user_turns=drop", "false_refusal_rate"]["y"] == pytest.approx([0.12, 0.11])
    paper = {(line["label"], line["metric"]): (line["x"], line["y"]) for line in panel["paper"]}
    # An et al. Table 15, Gemma-2-9B on LIMA: IT .41/.71, RT .24/.47 at 0/100; false refusals .14/.16, .14/.13
    assert paper["it", "mean_refusal_rate"] == ([0, 100], [0.41, 0.71])
    assert paper["rt method.user_turns=drop", "mean_refusal_rate"] == ([0, 100], [0.24, 0.47])
    assert paper["rt method.user_turns=drop", "false_refusal_rate"] == ([0, 100], [0.14, 0.13])

    summary = (out / "summary.md").read_text()
    assert "| gemma2_9b | it | lima_an | - | 100 | 2 | 0.72 ± 0.03 | 0.18 ± 0.03 |" in summary
    assert "Paper (a_tables15_16): An et al." in summary
    # 0.25 against 0.24, no spread given: +0.01, no within flag
    assert "| gemma2_9b | rt | lima_an | 0 | method.user_turns=drop | mean_refusal_rate | 0.24 | 0.25 ± 0.07 | 2 | " \
           "+0.01 | - |" in summary
    assert "92 of the paper's 96 rows are not in this sweep." in summary
    assert len(read_csv(out / "paper.csv")) == 4 * 2  # the 4 refusal rows x 2 metrics
    assert not (out / "rule_ablation.png").exists() and not (out / "win_rate_vs_epoch.png").exists()


def test_no_refusal_figure_without_the_refusal_mix_axis(tmp_path, compose):
    """Safety metrics at one refusal mix: the refusal table, no figure (the sweep lacks the axis); no judge needed
    when nothing is paired."""
    root = tmp_path / "sweep"
    for number, seed in enumerate((1, 2)):
        job = write_run(root, number, compose, ["method=it", f"trainer.seed={seed}"], outputs_for("a"))
        (job / "eval").mkdir()
        (job / "eval" / "safety.json").write_text(json.dumps({"mean_refusal_rate": 0.5, "false_refusal_rate": 0.1}))
    compare(root, compose(["logger=none", "~judge"]))
    out = root / "comparison"
    assert read_csv(out / "refusals.csv")[0]["seeds"] == "2"
    assert "No win rates: no finished run with a finished reference." in (out / "summary.md").read_text()
    assert not (out / "refusal_vs_mix.png").exists()


def test_rule_ablation_bars_against_every_it_seed(tmp_path, compose, length_judge):
    """h_rules_ablation's shape: three rule sets, each against both IT seeds of an h_lima_rt_vs_it sweep; the bars
    are the win rates (no LC on these prompts) averaged over the references, by hand."""
    it_sweep = tmp_path / "it"
    for number, (seed, answer) in enumerate(((1, "aaa"), (2, "a"))):
        write_run(it_sweep, number, compose, ["sweeps=h_lima_rt_vs_it", "model=llama2_7b", "method=it",
                                              f"trainer.seed={seed}", "trainer.lightning.max_epochs=15"],
                  outputs_for(answer, answer))
    root = tmp_path / "rules"
    answers = {"[eos_ramp,uniform,diversity]": "aa", "[uniform,diversity]": "a", "[eos_ramp,uniform]": "aaaa"}
    for number, (rules, answer) in enumerate(answers.items()):
        write_run(root, number, compose, ["sweeps=h_rules_ablation", f"rules.enabled={rules}"],
                  outputs_for(answer, answer))
    compare(root, compose(["sweeps=h_rules_ablation", f"compare.reference.sweep={it_sweep}", "logger=none",
                           *judge_overrides(length_judge)]))
    out = root / "comparison"
    (panel,) = figure_numbers(out / "rule_ablation.png")
    assert panel["metric"] == "win_rate" and panel["model"] == "llama2_7b"
    bars = {bar["label"]: bar for bar in panel["bars"]}
    assert list(bars) == ["all: eos_ramp, uniform, diversity", "-diversity", "-eos_ramp"]
    # shorter than seed 1's (30), longer than seed 2's (70); as long as seed 2's, identical (50); longer (70)
    assert (bars["all: eos_ramp, uniform, diversity"]["mean"], bars["all: eos_ramp, uniform, diversity"]["error"]) \
        == pytest.approx((50.0, math.sqrt(800)))
    assert (bars["-eos_ramp"]["mean"], bars["-eos_ramp"]["error"]) == pytest.approx((40.0, math.sqrt(200)))
    assert (bars["-diversity"]["mean"], bars["-diversity"]["error"]) == pytest.approx((70.0, 0.0))
    assert all(bar["paper"] is None for bar in panel["bars"])  # the paper's figures are LC win rates
    summary = (out / "summary.md").read_text()
    assert "| llama2_7b | rules[eos_ramp,uniform,diversity] | lc_win_rate_unofficial | 24.4 ± 0.4 | - | 1 | - | - |" \
        in summary
    assert "rt_lab's LC win rate is defined only on the 805 AlpacaEval instructions" in summary
    assert not (out / "refusal_vs_mix.png").exists()


def test_rule_ablation_bars_carry_the_papers_lc_figures():
    sets = {"rules[eos_ramp,uniform,diversity]": ["eos_ramp", "uniform", "diversity"],
            "rules[uniform,diversity]": ["uniform", "diversity"]}
    table = aggregate([comparison_row("llama2_7b", method, "sample", 1, lc) for method, lc in
                       (("rules[eos_ramp,uniform,diversity]", 23.0), ("rules[uniform,diversity]", 9.0))])
    (panel,) = rule_ablation_series(table, sets, paper_table("h_table4"))
    assert panel["metric"] == "lc_win_rate"
    assert [(bar["label"], bar["mean"], bar["paper"]) for bar in panel["bars"]] == [
        ("all: eos_ramp, uniform, diversity", 23.0, 24.4), ("-eos_ramp", 9.0, 10.4)]


def test_win_rate_vs_epoch_against_reference_runs(tmp_path, compose, length_judge):
    """h_gsm_epochs' shape: a GSM run's epochs 1-3 against the same-seed LIMA IT run of another sweep; the epoch
    table and the figure's numbers by hand, and the last epoch's judgments serve the run's own row."""
    it_sweep = tmp_path / "it"
    write_run(it_sweep, 0, compose, ["sweeps=h_lima_rt_vs_it", "model=llama2_7b", "method=it", "trainer.seed=1",
                                     "trainer.lightning.max_epochs=15"], outputs_for("aaa", "aaa"))
    root = tmp_path / "gsm"
    by_epoch = {1: ("a", "a"), 2: ("aaa", "aaaa"), 3: ("aaaa", "aaaa")}
    job = write_run(root, 0, compose, ["sweeps=h_gsm_epochs", "trainer.lightning.max_epochs=3",
                                       "generation.at_epochs=[1,2,3]"], outputs_for(*by_epoch[3]))
    for epoch, answers in by_epoch.items():
        (job / "epochs" / str(epoch)).mkdir(parents=True)
        (job / "epochs" / str(epoch) / "model_outputs.json").write_text(json.dumps(outputs_for(*answers)))
    compare(root, compose(["sweeps=h_gsm_epochs", f"compare.reference.sweep={it_sweep}", "logger=none",
                           *judge_overrides(length_judge)]))
    out = root / "comparison"
    # 3 epochs x 2 prompts, less epoch 2's identical pair and its second pair, which epoch 3 repeats; the run's
    # own outputs are epoch 3's: all cached
    assert length_judge.requests == 4
    (panel,) = figure_numbers(out / "win_rate_vs_epoch.png")
    assert panel["reference"] == "method=it, dataset=lima"
    (line,) = panel["lines"]
    # against "aaa": shorter (30, 30), as long and longer (50, 70), longer (70, 70)
    assert (line["label"], line["x"], line["y"]) == \
        ("single_task gsm8k", [1, 2, 3], pytest.approx([30.0, 60.0, 70.0]))
    assert line["error"] == pytest.approx([0.0, 10.0, 0.0])  # one comparison: the judge's standard error
    assert json.loads((out / "picked_epochs.json").read_text())[0]["epoch"] == 3
    (row,) = read_csv(out / "summary.csv")
    assert (row["reference"], float(row["win_rate"])) == ("llama2_7b-it-lima-seed1@it/0", 70.0)
    assert "| llama2_7b | single_task | gsm8k | - | 1 | 30.0 (se 0.0) | 60.0 (se 10.0) | 70.0 (se 0.0) | 3 |" in \
        (out / "epochs.md").read_text()
