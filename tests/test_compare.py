"""The sweep comparison (rt_lab.compare): pairing runs with references (in the sweep or in other sweeps), the
aggregate over seeds and references, a real tiny-model multirun that ends with the table, the plot and W&B runs,
and tiny versions of the presets that compare with another sweep's IT runs, judged by a canned judge on a
loopback HTTP server (a paid API's model cannot run here)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import FAST, REPO, SHARED_DATA, launch, needs_shared_data, outputs_for, run_python, write_run
from judge_server import judge_overrides
from rt_lab.compare import aggregate, find_runs, missing_jobs, pair_runs

ANSWERS = ["generation.max_new_tokens=12", "prompts.limit=4"]  # FAST's, a little longer and one more

def test_sweep_ends_with_table_plot_and_wandb_runs_then_resumes_without_calls_canned_judge(tmp_path, length_judge):
    sweep = tmp_path / "sweep"
    result = launch(["-m", "method=rt,it,base", "dataset=sample", "logger=wandb",
                     f"hydra.sweep.dir={sweep}", *FAST, *ANSWERS, *judge_overrides(length_judge)], tmp_path)
    out = sweep / "comparison"
    # the printed table: rt and base against it, one seed each
    assert "| tiny | rt | sample |" in result and "| tiny | base | sample |" in result
    with (out / "summary.csv").open() as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"rt", "base"} and {row["reference"] for row in rows.values()} == {"tiny-it-sample-seed1"}
    for method, row in rows.items():
        assert int(row["n_total"]) == 4 and int(row["n_unparsable"]) == 0
        # the canned judge prefers the longer answer: recompute the win rate from the outputs themselves
        run_dir = sweep / {"rt": "0", "base": "2"}[method]
        outputs = json.loads((run_dir / "model_outputs.json").read_text())
        reference = {r["instruction"]: r["output"] for r in json.loads((sweep / "1" / "model_outputs.json").read_text())}
        expected = [1.5 if o["output"] == reference[o["instruction"]] else
                    1.5 if len(o["output"]) == len(reference[o["instruction"]]) else
                    1.7 if len(o["output"]) > len(reference[o["instruction"]]) else 1.3 for o in outputs]
        assert float(row["win_rate"]) == pytest.approx((sum(expected) / 4 - 1) * 100)
        detail = json.loads((run_dir / "comparison" / "vs_tiny-it-sample-seed1.json").read_text())
        assert [r["preference"] for r in detail["rows"]] == pytest.approx(expected)
        assert detail["metrics"]["reference_kind"] == row["reference_kind"] == "method=it"
    png = (out / "win_rates.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert (out / "summary.md").read_text().count("| tiny |") == 2
    # W&B: each compared job's own run (same id as its training run) and a summary run for the sweep
    for job in ("0", "2"):
        run_id = (sweep / job / "wandb_run_id").read_text()
        assert len(list((sweep / job / "wandb").glob(f"offline-run-*-{run_id}"))) == 2
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1

    # the standalone command on the finished sweep asks the judge nothing new and writes the same numbers
    calls = length_judge.requests
    before = (out / "summary.csv").read_text()
    again = run_python(["-m", "rt_lab.compare", str(sweep), "logger=none"], tmp_path)
    assert length_judge.requests == calls
    assert (out / "summary.csv").read_text() == before and "| tiny | rt | sample |" in again


def test_pairing_by_selector_names_missing_and_unfinished_references(tmp_path, compose):
    root = tmp_path / "sweep"
    write_run(root, 0, compose, ["method=rt", "trainer.seed=1"], outputs_for("a", "b"))
    write_run(root, 1, compose, ["method=it", "trainer.seed=1"], outputs_for("c", "d"))
    write_run(root, 2, compose, ["method=rt", "trainer.seed=2"], outputs_for("a", "b"))
    write_run(root, 3, compose, ["method=it", "trainer.seed=2"], None, done=False)
    write_run(root, 4, compose, ["method=base", "trainer.seed=3"], outputs_for("e", "f"))
    (root / "jobs.json").write_text(json.dumps({str(n): [f"job{n}"] for n in range(6)}))
    cfg = compose([])
    runs = find_runs(root)
    pairs, unpaired = pair_runs(runs, cfg.compare)
    assert [(run.dir.name, reference.run.dir.name) for run, reference in pairs] == [("0", "1")]
    assert any("seed2" in line and "is unfinished" in line for line in unpaired)
    assert any("seed3" in line and "is not in this sweep" in line for line in unpaired)
    assert missing_jobs(root, runs) == ["#3 unfinished: job3", "#5 not started: job5"]

    # a nested selector: the reference is the seed-1 rt run for every run of the same dataset
    cfg.compare.reference.select = {"method": "rt", "trainer": {"seed": 1}}
    cfg.compare.reference.match = ["dataset"]
    pairs, _ = pair_runs(runs, cfg.compare)
    assert sorted((run.dir.name, reference.run.dir.name) for run, reference in pairs) == \
        [("1", "0"), ("2", "0"), ("4", "0")]


def test_two_qualifying_references_are_an_error(tmp_path, compose):
    root = tmp_path / "sweep"
    write_run(root, 0, compose, ["method=rt"], outputs_for("a"))
    write_run(root, 1, compose, ["method=it", "trainer.lightning.max_epochs=1"], outputs_for("b"))
    write_run(root, 2, compose, ["method=it", "trainer.lightning.max_epochs=2"], outputs_for("c"))
    with pytest.raises(ValueError, match="2 runs qualify as its reference"):
        pair_runs(find_runs(root), compose([]).compare)


def test_reference_file_missing_an_instruction_names_the_item(tmp_path, compose, length_judge):
    from rt_lab.compare import compare

    root = tmp_path / "sweep"
    write_run(root, 0, compose, ["method=rt"], outputs_for("a", "b"))
    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps([{"instruction": "question 0", "output": "x", "generator": "gpt"}]))
    cfg = compose([*judge_overrides(length_judge), f"compare.reference.file={reference}", "logger=none"])
    with pytest.raises(ValueError, match=r"model_outputs.json item 1: instruction 'question 1' has no output"):
        compare(root, cfg)



def test_reference_file_stays_in_the_alpaca_eval_commands_and_every_file_names_the_reference_kind(
        tmp_path, compose, length_judge):
    from rt_lab.compare import compare

    root = tmp_path / "sweep"
    job = write_run(root, 0, compose, ["method=rt"], outputs_for("a", "bb"))
    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps([{**row, "generator": "gpt"} for row in outputs_for("xx", "y")]))
    compare(root, compose([*judge_overrides(length_judge), f"compare.reference.file={reference}", "logger=none"]))
    commands = (root / "comparison" / "alpaca_eval_commands.sh").read_text().splitlines()
    assert commands[1] == (f"alpaca_eval --model_outputs {job / 'model_outputs.json'} --reference_outputs {reference} "
                           f"--output_path {job / 'comparison' / 'alpaca_eval_vs_gpt'}")
    detail = json.loads((job / "comparison" / "vs_gpt.json").read_text())
    with (root / "comparison" / "summary.csv").open() as handle:
        (row,) = csv.DictReader(handle)
    assert detail["metrics"]["reference_kind"] == row["reference_kind"] == "file gpt"

def test_aggregate_mean_and_sample_std_over_seeds_and_references():
    def row(method: str, seed: int, win_rate: float, reference: str = "") -> dict:
        return {"model": "m", "method": method, "dataset": "d", "setting": "", "reference_kind": "method=it",
                "run": f"m-{method}-seed{seed}", "reference": reference or f"m-it-seed{seed}", "seed": seed,
                "win_rate": win_rate, "standard_error": 4.0, "n_unparsable": 1}

    table = aggregate([row("rt", 1, 40.0), row("rt", 2, 44.0), row("rt", 3, 48.0), row("base", 1, 10.0),
                       *[row("rules", 1, rate, f"m-it-seed{n}") for n, rate in enumerate((20.0, 30.0, 40.0))]])
    by_method = {r["method"]: r for r in table}
    assert by_method["rt"]["seeds"] == 3 and by_method["rt"]["win_rate"] == pytest.approx(44.0)
    # one rule-head run against each of three references: mean ± std over the references
    assert (by_method["rules"]["seeds"], by_method["rules"]["references"]) == (1, 3)
    assert (by_method["rules"]["win_rate"], by_method["rules"]["win_rate_std"]) == pytest.approx((30.0, 10.0))
    assert by_method["rt"]["win_rate_std"] == pytest.approx(4.0)  # sample std (ddof 1) of 40, 44, 48
    assert by_method["rt"]["n_unparsable"] == 3
    assert math.isnan(by_method["base"]["win_rate_std"]) and by_method["base"]["standard_error"] == 4.0


@pytest.mark.parametrize("identity,column", [
    ({"judge": "openai", "model": "gpt-4-1106-preview", "protocol": "alpaca_eval",
      "annotator": "weighted_alpaca_eval_gpt4_turbo"}, "LC win rate |"),
    ({"judge": "openai", "model": "llama-3.1-70b", "protocol": "alpaca_eval",
      "annotator": "weighted_alpaca_eval_gpt4_turbo"}, "LC win rate (unofficial"),
    ({"judge": "hf_local", "model": "SmolLM2", "protocol": "rt_lab"}, "LC win rate (unofficial"),
])
def test_the_lc_win_rate_is_official_only_with_alpaca_evals_gpt4_turbo_judge(identity, column):
    """The LC GLM was fitted to AlpacaEval's weighted GPT-4-Turbo annotator; any other judge's LC is named so."""
    from rt_lab.compare.lc_winrate import lc_metric
    from rt_lab.compare.report import markdown

    key = lc_metric(identity)
    rows = [{"model": "m", "method": "rt", "dataset": "d", "setting": "", "reference_kind": "method=it",
             "run": f"m-rt-seed{seed}", "reference": f"m-it-seed{seed}", "win_rate": 40.0 + seed,
             "standard_error": 2.0, "n_unparsable": 0, key: 30.0 + 2 * seed} for seed in (1, 2)]
    (row,) = aggregate(rows)
    assert (row[key], row[f"{key}_std"]) == pytest.approx((33.0, 2 ** 0.5))
    other = {"lc_win_rate", "lc_win_rate_unofficial"} - {key}
    assert not other & set(row)
    assert column in markdown([row], [], identity)


def test_setting_column_shows_only_overrides_that_vary(tmp_path, compose):
    from rt_lab.compare import describe, varying_overrides

    root = tmp_path / "sweep"
    common = ["model=tiny", "data.batch_size=4"]
    for number, extra in enumerate((["dataset.refusal_mix=0"], ["dataset.refusal_mix=100"], [])):
        write_run(root, number, compose, [*common, "method=rt", f"trainer.seed={number}", *extra], outputs_for("a"))
    runs = find_runs(root)
    varying = varying_overrides(runs)
    assert varying == {"dataset.refusal_mix"}
    assert [describe(run, varying)["setting"] for run in runs] == \
        ["dataset.refusal_mix=0", "dataset.refusal_mix=100", ""]


def test_references_from_another_sweep_one_per_seed_or_all_of_them(tmp_path, compose):
    it_sweep = tmp_path / "it_sweep"
    for seed in (1, 2):
        write_run(it_sweep, seed - 1, compose, ["method=it", "dataset=lima", f"trainer.seed={seed}"], outputs_for("c"))
    write_run(it_sweep, 2, compose, ["method=it", "dataset=lima", "trainer.seed=3"], None, done=False)
    root = tmp_path / "sweep"
    write_run(root, 0, compose, ["method=rt", "dataset=sample", "trainer.seed=2"], outputs_for("a"))
    write_run(root, 1, compose, ["method=rules", "rules.enabled=[uniform]"], outputs_for("b"))
    runs = find_runs(root)
    # single-task style: the same-seed reference from the other sweep, whatever the run's dataset
    single = compose(["+compare.reference.select.dataset=lima", f"compare.reference.sweep={it_sweep}",
                      "compare.reference.match=[model,trainer.seed]"]).compare
    pairs, _ = pair_runs(runs, single)
    assert [(run.dir.name, reference.name) for run, reference in pairs] == [
        ("0", "smollm2_135m-it-lima-seed2@it_sweep/1"), ("1", "smollm2_135m-it-lima-seed1@it_sweep/0")]
    # rules style: no seed to match, every IT seed is a reference, but only when asked for
    rules = compose(["+compare.reference.select.dataset=lima", f"compare.reference.sweep=[{it_sweep}]",
                     "compare.reference.match=[model]"]).compare
    with pytest.raises(ValueError, match="2 runs qualify.*compare.reference.multiple=all"):
        pair_runs(runs, rules)
    rules.reference.multiple = "all"
    pairs, notes = pair_runs(runs, rules)
    assert sorted((run.dir.name, reference.run.dir.name) for run, reference in pairs) == \
        [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
    assert notes[0] == f"smollm2_135m-rt-sample-seed2 (0): compared with 2 of its 3 references; unfinished: " \
                       f"{[str(it_sweep / '2')]}"


def test_a_bad_reference_sweep_is_named(tmp_path, compose):
    root = tmp_path / "sweep"
    write_run(root, 0, compose, ["method=rt"], outputs_for("a"))
    missing = tmp_path / "no_such_sweep"
    with pytest.raises(FileNotFoundError, match=f"compare.reference.sweep: {missing}: no such sweep dir"):
        pair_runs(find_runs(root), compose([f"compare.reference.sweep={missing}"]).compare)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty holds no runs"):
        pair_runs(find_runs(root), compose([f"compare.reference.sweep={tmp_path / 'empty'}"]).compare)
    it_sweep = tmp_path / "it_sweep"
    write_run(it_sweep, 0, compose, ["method=it"], None)
    with pytest.raises(FileNotFoundError, match=r"it_sweep/0/model_outputs.json: the reference run "
                                                r"smollm2_135m-it-sample-seed1@it_sweep/0 is finished but has no"):
        pair_runs(find_runs(root), compose([f"compare.reference.sweep={it_sweep}"]).compare)


def test_references_sharing_a_generator_name_get_their_own_files_and_a_mean_over_them(
        tmp_path, compose, length_judge):
    from rt_lab.compare import compare

    # the same IT run in two sweeps (say, a rerun): one generator name, two references
    sweeps = [tmp_path / "it_first", tmp_path / "it_again"]
    for sweep, answer in zip(sweeps, ("a", "aaaaa")):
        write_run(sweep, 0, compose, ["method=it"], outputs_for(answer, answer))
    root = tmp_path / "sweep"
    job = write_run(root, 0, compose, ["method=rules"], outputs_for("aaa", "aaa"))
    overrides = [*judge_overrides(length_judge), "logger=none", "compare.reference.multiple=all",
                 "compare.reference.match=[model]"]
    compare(root, compose([*overrides, f"compare.reference.sweep=[{sweeps[0]},{sweeps[1]}]"]))
    # the canned judge prefers the longer answer: 70% against the first reference, 30% against the second
    wins = {path.name: json.loads(path.read_text())["metrics"]["win_rate"]
            for path in (job / "comparison").glob("vs_*.json")}
    assert wins == pytest.approx({"vs_smollm2_135m-it-sample-seed1_it_first_0.json": 70.0,
                                  "vs_smollm2_135m-it-sample-seed1_it_again_0.json": 30.0})
    summary = (root / "comparison" / "summary.md").read_text()
    assert f"References from this sweep and {sweeps[0]}, {sweeps[1]}." in summary
    assert "| smollm2_135m | rules[eos_ramp,uniform,diversity] | sample | - | method=it | 1 | 2 | 50.0 ± 28.3 |" \
        in summary
    commands = (root / "comparison" / "alpaca_eval_commands.sh").read_text()
    assert f"--reference_outputs {sweeps[1] / '0' / 'model_outputs.json'}" in commands

    # two reference sweeps with the same dir name would give two references one name
    same = tmp_path / "elsewhere" / "it_first"
    write_run(same, 0, compose, ["method=it"], outputs_for("b", "b"))
    with pytest.raises(ValueError, match="share names"):
        compare(root, compose([*overrides, f"compare.reference.sweep=[{sweeps[0]},{same}]"]))


@needs_shared_data
def test_single_task_and_rules_presets_end_with_tables_against_an_it_sweep_canned_judge(tmp_path, length_judge):
    """Tiny versions of h_lima_rt_vs_it (IT only, 2 seeds), then h_single_task (one task) and h_rules_ablation
    (two rule sets) comparing with it, as their headers say."""
    tiny = [*FAST, *ANSWERS, "trainer=cpu", "logger=csv", f"paths.data_dir={SHARED_DATA}",
            *judge_overrides(length_judge)]
    it_sweep, single, rules = tmp_path / "it", tmp_path / "single_task", tmp_path / "rules"
    launch(["-m", "sweeps=h_lima_rt_vs_it", "trainer.seed=1,2",
            'hydra.sweeper.paired=[["method=it"]]', f"hydra.sweep.dir={it_sweep}", *tiny], tmp_path)
    launch(["-m", "sweeps=h_single_task", "trainer.seed=1,2",
            'hydra.sweeper.paired=[["dataset=gsm8k"]]', f"hydra.sweep.dir={single}",
            f"compare.reference.sweep={it_sweep}", *tiny], tmp_path)
    result = launch(["-m", "sweeps=h_rules_ablation",
                     "rules.enabled=[eos_ramp,uniform,diversity],[eos_ramp,uniform]", f"hydra.sweep.dir={rules}",
                     f"compare.reference.sweep={it_sweep}", *tiny], tmp_path)

    def read(path: Path) -> list[dict]:
        with path.open() as handle:
            return list(csv.DictReader(handle))

    # single task: each seed against the same-seed LIMA IT run of the other sweep
    assert [(row["method"], row["dataset"], row["seed"], row["reference"]) for row in
            read(single / "comparison" / "summary.csv")] == [
        ("single_task", "gsm8k", "1", "tiny-it-lima-seed1@it/0"),
        ("single_task", "gsm8k", "2", "tiny-it-lima-seed2@it/1")]
    (row,) = read(single / "comparison" / "table.csv")
    assert (row["seeds"], row["references"], row["reference"]) == ("2", "1", "method=it, dataset=lima")
    assert "| tiny | single_task | gsm8k | - | method=it, dataset=lima | 2 | 1 |" in \
        (single / "comparison" / "summary.md").read_text()
    # rules: each rule head against both IT seeds, mean ± std over them
    summary = read(rules / "comparison" / "summary.csv")
    assert sorted((row["method"], row["reference"]) for row in summary) == sorted(
        (f"rules{rule}", f"tiny-it-lima-seed{seed}@it/{seed - 1}")
        for rule in ("[eos_ramp,uniform,diversity]", "[eos_ramp,uniform]") for seed in (1, 2))
    table = read(rules / "comparison" / "table.csv")
    assert [(row["seeds"], row["references"]) for row in table] == [("1", "2")] * 2
    text = (rules / "comparison" / "summary.md").read_text()
    for row in table:
        rates = [float(r["win_rate"]) for r in summary if r["method"] == row["method"]]
        assert float(row["win_rate"]) == pytest.approx(sum(rates) / 2)
        assert f"| tiny | {row['method']} | sample | - | method=it, dataset=lima | 1 | 2 | " \
               f"{float(row['win_rate']):.1f} ± {float(row['win_rate_std']):.1f} |" in text
    assert text in result

    # later, standalone: the preset's compare settings and the reference sweep come from the sweep's own record
    calls = length_judge.requests
    run_python(["-m", "rt_lab.compare", str(rules)], tmp_path)
    assert length_judge.requests == calls and (rules / "comparison" / "summary.md").read_text() == text


HELP = "import runpy, sys\nsys.argv = ['x', '--help']\ntry:\n    runpy.run_module('rt_lab.compare', " \
       "run_name='__main__')\nexcept SystemExit:\n    pass"


@pytest.mark.parametrize(("probe", "shows"), [(HELP, "python -m rt_lab.compare"),
                                              ("import hydra_plugins.rt_lab_launcher.launchers", None)])
def test_the_command_help_and_the_launcher_plugin_import_no_torch(probe, shows):
    """Hydra's plugin scan imports the launchers in every launch, and `--help` should answer at once: both read
    the run-dir names from rt_lab.layout, not from the pipeline's modules."""
    heavy = "print(sorted({'torch', 'lightning', 'transformers'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", f"{probe}\nimport sys\n{heavy}"], capture_output=True, text=True,
                            timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr
    assert shows is None or shows in result.stdout
    assert result.stdout.strip().endswith("[]"), result.stdout
