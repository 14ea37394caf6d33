"""Refined responses (rt_lab/data/refine.py, An et al. §5.1): every training response rewritten by a chat backend,
read from after rt_lab's marker line, the original kept (and counted) without one, cached so that a rerun or
another run of the same rows asks for nothing, and written as a dataset file any run can train on. The `openai`
backend talks to a real loopback server with canned rewrites (tests/judge_server.py: a large refiner cannot run
here); `hf_local` runs the real SmolLM2."""

from __future__ import annotations

import contextlib
import fcntl
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from helpers import FAST, SHARED_DATA, launch, needs_shared_data
from judge_server import KEY_ENV, REWRITE_PREFIX, RefinerServer
from rt_lab.compare.paper import paper_table
from rt_lab.data.datasets import load_rows
from rt_lab.data.refine import NO_MARKER, NOTHING_AFTER_MARKER, extract_rewrite, refine_rows, responses
from rt_lab.data.rows import make_row
from rt_lab.judges import JudgeError, Reply, SpendCapExceeded
from rt_lab.judges.cache import AnswerCache
from rt_lab.judges.backends import HFLocalJudge
from helpers import outputs_for, write_run

MARKER = "Rewritten response:"

# a multi-turn row, two rows asking the same thing (asked once), and one row for each way a reply can lack a rewrite
ROWS = [
    {"id": "sky", "messages": [{"role": "user", "content": "Why is the sky blue?"},
                               {"role": "assistant", "content": "Rayleigh scattering of short wavelengths."}]},
    {"id": "chat", "messages": [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Name a prime."},
                                {"role": "assistant", "content": "7."},
                                {"role": "user", "content": "And an even one?"},
                                {"role": "assistant", "content": "2 is the only even prime."}]},
    {"id": "twin-a", "messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]},
    {"id": "twin-b", "messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]},
    {"id": "plain", "messages": [{"role": "user", "content": "Spell cat."},
                                 {"role": "assistant", "content": "c-a-t NOMARKER"}]},
    {"id": "empty", "messages": [{"role": "user", "content": "Count to 2."},
                                 {"role": "assistant", "content": "1, 2 EMPTYREWRITE"}]},
    {"id": "bold", "messages": [{"role": "user", "content": "Greet me."},
                                {"role": "assistant", "content": "Hello there BOLDMARKER"}]},
]
RESPONSES = 8  # assistant messages in ROWS
ASKED = 7  # distinct (request, response) pairs: the twins are one


def refiner_overrides(server: RefinerServer) -> list[str]:
    """`dataset/refine=openai` pointed at the canned refiner."""
    return ["dataset/refine=openai", f"dataset.refine.backend.base_url={server.url}",
            "dataset.refine.backend.model=canned-refiner", f"dataset.refine.backend.api_key_env={KEY_ENV}",
            "dataset.refine.backend.backoff_s=0.01"]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def stats_of(cfg) -> dict:
    (path,) = Path(cfg.dataset.refine.dir).glob("*.stats.json")
    return json.loads(path.read_text())


# --- reading the rewrite ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("reply", "expected"), [
    ("Notes.\n\nRewritten response:\nThe new text.\n", ("The new text.", None)),
    ("Notes.\nREWRITTEN RESPONSE:  The new text.", ("The new text.", None)),  # case-insensitive, same line
    ("Notes.\n**Rewritten response:**\n\nThe new text.", ("The new text.", None)),  # Markdown bold
    ("Notes.\n### Rewritten response:\nThe new text.", ("The new text.", None)),  # a heading
    # the first marker line wins; a mention inside a line is no marker
    ("I give the rewritten response: below.\nRewritten response:\nOne.\nRewritten response:\nTwo.",
     ("One.\nRewritten response:\nTwo.", None)),
    ("I would change nothing.", (None, NO_MARKER)),
    ("I give the rewritten response: below, then stop.", (None, NO_MARKER)),
    ("Notes.\nRewritten response:\n   \n", (None, NOTHING_AFTER_MARKER)),
])
def test_the_rewrite_is_what_follows_the_first_marker_line(reply, expected):
    assert extract_rewrite(reply, MARKER) == expected


def test_every_non_empty_response_is_shown_with_the_user_turn_it_answers():
    rows = [make_row(row["id"], row["messages"], row["id"]) for row in ROWS[:2]]
    rows.append(make_row("blank", [{"role": "user", "content": "Q"}, {"role": "assistant", "content": " "},
                                   {"role": "assistant", "content": "A"}], "blank"))
    assert [(r.row, r.position, r.request, r.text) for r in responses(rows)] == [
        (0, 1, "Why is the sky blue?", "Rayleigh scattering of short wavelengths."),
        (1, 2, "Name a prime.", "7."), (1, 4, "And an even one?", "2 is the only even prime."),
        (2, 2, "Q", "A")]


# --- the openai backend on a real loopback server ----------------------------------------------------------------

def test_refined_rows_cached_stats_and_a_reusable_file_canned_refiner(compose, refiner, tmp_path):
    data = write_rows(tmp_path / "rows.jsonl", ROWS)
    cfg = compose(["dataset=sample", f"dataset.file={data}", *refiner_overrides(refiner)])
    rows = load_rows(cfg.dataset)
    assert refiner.requests == ASKED
    (body,) = [body for body in refiner.bodies if "Why is the sky blue?" in body["messages"][0]["content"]]
    assert body["temperature"] == 0 and body["max_tokens"] == 8192 and "logprobs" not in body
    assert [message["role"] for message in body["messages"]] == ["user"]
    assert "[User request]\nWhy is the sky blue?\n[End of user request]" in body["messages"][0]["content"]
    answers = {row.id: [m.content for m in row.messages if m.role == "assistant"] for row in rows}
    assert answers == {
        "sky": [f"{REWRITE_PREFIX}Rayleigh scattering of short wavelengths."],
        "chat": [f"{REWRITE_PREFIX}7.", f"{REWRITE_PREFIX}2 is the only even prime."],
        "twin-a": [f"{REWRITE_PREFIX}Hi!"], "twin-b": [f"{REWRITE_PREFIX}Hi!"],
        "plain": ["c-a-t NOMARKER"],  # no marker line: the original
        "empty": ["1, 2 EMPTYREWRITE"],  # nothing after it: the original
        "bold": [f"{REWRITE_PREFIX}Hello there BOLDMARKER"]}
    assert [m.role for m in rows[1].messages] == ["system", "user", "assistant", "user", "assistant"]
    assert rows[1].messages[3].content == "And an even one?"  # user turns untouched

    stats = stats_of(cfg)
    assert (stats["rows"], stats["responses"], stats["rewritten"], stats["asked"], stats["cached"]) == \
        (7, RESPONSES, 6, ASKED, 0)
    assert stats["kept_original"] == {NO_MARKER: 1, NOTHING_AFTER_MARKER: 1}
    assert stats["refiner"] == {"backend": "openai", "model": "canned-refiner"}
    assert stats["prompt"] == cfg.dataset.refine.prompt.version

    # the refined set is a dataset file: a run trains on it with dataset.file=
    refined = Path(stats["refined_set"])
    assert refined.parent == Path(cfg.paths.refine_dir) and refined.name.startswith("sample-")
    assert json.loads(refined.read_text().splitlines()[1])["refined"] == [True, True]
    reused = compose(["dataset=sample", f"dataset.file={refined}"])
    assert load_rows(reused.dataset) == rows

    # a rerun, and a run of another method on the same rows, ask for nothing
    again = compose(["dataset=sample", f"dataset.file={data}", "method=it", *refiner_overrides(refiner)])
    assert load_rows(again.dataset) == rows
    assert refiner.requests == ASKED
    assert (stats_of(again)["asked"], stats_of(again)["cached"]) == (0, ASKED)
    assert len(Path(cfg.dataset.refine.dir, "rewrites.jsonl").read_text().splitlines()) == ASKED

    # another prompt version asks again (old rewrites are never taken for new ones)
    bumped = compose(["dataset=sample", f"dataset.file={data}", *refiner_overrides(refiner),
                      "dataset.refine.prompt.version=mine-v2"])
    load_rows(bumped.dataset)
    assert refiner.requests == 2 * ASKED


def test_a_refinement_stopped_by_the_spend_cap_resumes_with_the_missing_ones_canned_refiner(compose, refiner,
                                                                                          tmp_path):
    data = write_rows(tmp_path / "rows.jsonl", ROWS)
    capped = compose(["dataset=sample", f"dataset.file={data}", *refiner_overrides(refiner),
                      "dataset.refine.backend.max_calls=3", "dataset.refine.backend.max_concurrency=1"])
    with pytest.raises(SpendCapExceeded, match=r"3 of 7 responses to rewrite are answered and cached"):
        load_rows(capped.dataset)
    assert not list(Path(capped.paths.refine_dir).glob("*.stats.json"))  # no partial set is written
    cfg = compose(["dataset=sample", f"dataset.file={data}", *refiner_overrides(refiner)])
    load_rows(cfg.dataset)
    assert refiner.requests == ASKED  # every response asked exactly once over both runs
    assert (stats_of(cfg)["asked"], stats_of(cfg)["cached"]) == (ASKED - 3, 3)


def test_no_reply_after_every_retry_stops_the_run_and_keeps_the_others_canned_refiner(compose, refiner, tmp_path):
    rows = [*ROWS[:2], {"id": "down", "messages": [{"role": "user", "content": "Q"},
                                                   {"role": "assistant", "content": "A ALWAYS500"}]}]
    data = write_rows(tmp_path / "rows.jsonl", rows)
    cfg = compose(["dataset=sample", f"dataset.file={data}", *refiner_overrides(refiner),
                   "dataset.refine.backend.max_retries=1"])
    with pytest.raises(JudgeError, match=r"1 of 4 responses got no rewrite from the refiner \(HTTP 500.*rerun"):
        load_rows(cfg.dataset)
    assert len(Path(cfg.paths.refine_dir, "rewrites.jsonl").read_text().splitlines()) == 3


def test_two_jobs_refining_the_same_rows_at_once_ask_once_canned_refiner(compose, refiner, tmp_path):
    # SLOW: the server holds each first request a second, so the second job arrives while the first refines
    rows = [{"id": str(i), "messages": [{"role": "user", "content": f"Q{i}"},
                                        {"role": "assistant", "content": f"A{i} SLOW"}]} for i in range(3)]
    cfg = compose(["dataset=sample", f"dataset.file={write_rows(tmp_path / 'rows.jsonl', rows)}",
                   *refiner_overrides(refiner), "dataset.refine.backend.max_concurrency=1"])
    results, errors = [], []

    def job() -> None:
        try:
            results.append(load_rows(cfg.dataset))
        except Exception as err:  # noqa: BLE001  (reported below)
            errors.append(err)

    threads = [threading.Thread(target=job) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors and len(results) == 2 and results[0] == results[1]
    assert refiner.requests == 3


def test_a_job_reading_the_cache_waits_for_a_line_another_job_is_writing(tmp_path):
    path = tmp_path / "rewrites.jsonl"
    AnswerCache(path, kind=Reply).append("early", Reply("first"))
    line = json.dumps({"key": "late", "text": "second", "reason": None}) + "\n"
    with ThreadPoolExecutor(1) as pool, path.open("a") as writer:
        fcntl.flock(writer, fcntl.LOCK_EX)  # another job, mid-append: half its line is in the file
        writer.write(line[:12])
        writer.flush()
        reader = pool.submit(lambda: AnswerCache(path, kind=Reply).entries)
        # unlocked, the reader would cut the half line as torn and the rest would land as a broken line
        with contextlib.suppress(TimeoutError):
            reader.result(timeout=1)
        writer.write(line[12:])
        writer.flush()
        fcntl.flock(writer, fcntl.LOCK_UN)
        assert reader.result(timeout=60) == {"early": Reply("first"), "late": Reply("second")}
    assert AnswerCache(path, kind=Reply).entries == {"early": Reply("first"), "late": Reply("second")}


def test_a_prompt_without_the_response_is_refused(compose, tmp_path):
    cfg = compose(["dataset/refine=openai", "dataset.limit=2", "dataset.refine.prompt.text='Rewrite {request}'"])
    with pytest.raises(ValueError, match=r"dataset.refine.prompt.text lacks \['\{response\}'\]"):
        load_rows(cfg.dataset)
    cfg = compose(["dataset/refine=openai", "dataset.limit=2", "dataset.refine.prompt.marker=' '"])
    with pytest.raises(ValueError, match="dataset.refine.prompt.marker is empty"):
        load_rows(cfg.dataset)


def test_a_launched_run_trains_on_refined_rows_and_a_second_run_asks_nothing_canned_refiner(refiner, tmp_path):
    command = ["logger=csv", *FAST, *refiner_overrides(refiner)]
    first = launch(command, tmp_path)
    rows = 8  # FAST: dataset.limit=8, one response each
    assert refiner.requests == rows
    assert f"asked the refiner for {rows}, 0 cached" in first
    (refined,) = (tmp_path / "outputs" / "refined").glob("sample-*.jsonl")
    assert f"dataset sample from {refined}: kept {rows} rows" in first  # training reads the refined set's file
    runs = sorted((tmp_path / "outputs" / "runs").iterdir())
    assert json.loads((runs[0] / "model_outputs.json").read_text())[0]["generator"] == "tiny-rt-sample-refined-seed1"
    second = launch([*command, "method=it"], tmp_path)
    assert refiner.requests == rows
    assert f"asked the refiner for 0, {rows} cached" in second
    assert sum(line.count(REWRITE_PREFIX) for line in refined.read_text().splitlines()) == rows


# --- the hf_local backend: the real SmolLM2 ------------------------------------------------------------------------

def test_hf_local_refiner_counts_kept_originals_and_a_rerun_makes_no_call(compose, smollm2_path, monkeypatch):
    calls = []
    generate = HFLocalJudge.generate

    def counted(self, messages, max_tokens):
        calls.append(max_tokens)
        return generate(self, messages, max_tokens)

    monkeypatch.setattr(HFLocalJudge, "generate", counted)
    cfg = compose(["dataset/refine=hf_local", "dataset.limit=2", "dataset.refine.max_tokens=8"])
    original = load_rows(compose(["dataset.limit=2"]).dataset)
    rows = load_rows(cfg.dataset)
    assert calls == [8, 8]
    stats = stats_of(cfg)
    assert stats["refiner"] == {"backend": "hf_local", "model": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    # 8 tokens leave no room for notes, a marker line and a rewrite: both originals kept, and counted
    assert (stats["responses"], stats["rewritten"], stats["kept_original"]) == (2, 0, {NO_MARKER: 2})
    assert rows == original
    assert load_rows(cfg.dataset) == rows
    assert calls == [8, 8]
    assert (stats_of(cfg)["asked"], stats_of(cfg)["cached"]) == (0, 2)


@pytest.mark.slow
def test_embedded_default_refines_the_sample_set_and_a_second_run_makes_no_call(smollm2_path, tmp_path, monkeypatch):
    """`python launch.py dataset/refine=hf_local`: SmolLM2 rewrites the 48-row sample set it then trains on."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one torch thread: two on a shared 2-core machine run 5x slower
    command = ["dataset/refine=hf_local", "dataset.refine.max_tokens=16", "logger=csv", "prompts.limit=2",
               "generation.max_new_tokens=8", "trainer.lightning.max_epochs=1"]
    first = launch(command, tmp_path, timeout=3600)
    cache = tmp_path / "outputs" / "refined" / "rewrites.jsonl"
    asked = len(cache.read_text().splitlines())  # one line per reply: the calls the first run made
    (stats_file,) = cache.parent.glob("sample-*.stats.json")
    stats = json.loads(stats_file.read_text())
    assert (stats["rows"], stats["asked"], stats["cached"]) == (48, asked, 0) and asked >= 48
    assert f"asked the refiner for {asked}, 0 cached" in first
    second = launch(command, tmp_path, timeout=3600)
    assert len(cache.read_text().splitlines()) == asked
    assert f"asked the refiner for 0, {asked} cached" in second
    assert json.loads(stats_file.read_text())["asked"] == 0


# --- configs, the preset's pairing -------------------------------------------------------------------------------

@pytest.mark.parametrize("option", ["hf_local", "openai"])
def test_refine_options_compose_and_name_the_run(compose, option):
    cfg = compose([f"dataset/refine={option}", "dataset=lima_an"])
    refine = OmegaConf.to_container(cfg.dataset.refine, resolve=True)
    assert refine["name"] == option and refine["backend"]["name"] == option
    assert refine["dir"] == cfg.paths.refine_dir and refine["prompt"]["marker"] == MARKER
    assert "{request}" in refine["prompt"]["text"] and "{response}" in refine["prompt"]["text"]
    assert cfg.run.name == "smollm2_135m-rt-lima_an-refined-seed1"
    assert cfg.dataset.limit == 1000  # the dataset's own settings stay
    if option == "openai":
        assert (refine["max_tokens"], refine["backend"]["model"]) == (8192, "meta-llama/Llama-3.1-70B-Instruct")
        assert refine["backend"]["api_key_env"] == "RT_LAB_REFINE_KEY"
    assert compose(["dataset=lima_an"]).dataset.get("refine") is None


def test_vs_original_is_the_default_comparison_but_for_the_reference(compose):
    default, refined = (OmegaConf.to_container(compose([f"compare={option}"]).compare)
                        for option in ("default", "vs_original"))
    assert default.keys() == refined.keys() and default["reference"].keys() == refined["reference"].keys()
    assert refined["reference"]["select"] == {"dataset": {"refine": None}}
    assert refined["reference"]["match"] == ["model", "method", *default["reference"]["match"][1:]]
    assert {key: value for key, value in refined.items() if key != "reference"} == \
        {key: value for key, value in default.items() if key != "reference"}


def test_a_refined_preset_is_a_rt_vs_it_with_a_refined_twin_of_every_job(compose):
    refined, original = compose(["sweeps=a_refined"]), compose(["sweeps=a_rt_vs_it"])
    for key in ("adapter", "template", "trainer", "data", "generation", "prompts", "judge"):
        assert refined[key] == original[key], key
    assert refined.hydra.sweeper.params == original.hydra.sweeper.params
    arms = [list(arm) for arm in original.hydra.sweeper.paired]
    assert [list(arm) for arm in refined.hydra.sweeper.paired] == arms + [[*arm, "dataset/refine=openai"]
                                                                          for arm in arms]
    assert refined.hydra.runtime.choices.compare == "vs_original"
    assert refined.compare.paper_table == "a_table29"


@needs_shared_data
def test_table29_figures_are_those_of_the_transcribed_anchors():
    anchors = json.loads((SHARED_DATA / "an_rt" / "paper_anchors_v3.json").read_text())
    published = anchors["table29_refined_responses_LC_winrate_vs_same_method_on_original"]
    models = {"llama31_8b": "Llama-3.1-8B", "gemma2_9b": "Gemma-2-9B", "gemma2_2b": "Gemma-2-2B",
              "mistral_7b": "Mistral-7B-v0.3"}
    datasets = {"alpaca_an": "Alpaca", "dolly_an": "Dolly", "lima_an": "LIMA"}
    table = paper_table("a_table29")
    assert len(table.rows) == 24
    for row in table.rows:
        keys = row.keys
        expected = published[models[keys["model"]]][keys["method"].upper()][datasets[keys["dataset"]]]
        assert row.figures == {"lc_win_rate": (expected, None)}


def test_vs_original_pairs_each_refined_run_with_the_same_method_on_original_data(tmp_path, compose):
    root = tmp_path / "sweep"
    for number, overrides in enumerate([["method=rt"], ["method=it"], ["method=rt", "dataset/refine=openai"],
                                        ["method=it", "dataset/refine=openai"]]):
        write_run(root, number, compose, overrides, outputs_for("a"))
    from rt_lab.compare import find_runs, pair_runs

    pairs, unpaired = pair_runs(find_runs(root), compose(["compare=vs_original"]).compare)
    assert sorted((run.dir.name, reference.run.dir.name) for run, reference in pairs) == [("2", "0"), ("3", "1")]
    assert not unpaired
    assert {reference.name for _, reference in pairs} == {"smollm2_135m-rt-sample-seed1",
                                                          "smollm2_135m-it-sample-seed1"}
