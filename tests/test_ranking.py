"""Response ranking (H §4.2): the authors' rival draws, scores checked against a plain forward pass, batching,
truncation, ties, resuming, row errors and the eval=ranking config, on the tiny model and the real Dolly file;
the real SmolLM2 under `-m slow`."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from transformers import AutoModelForCausalLM

from helpers import REPO, SHARED_DATA, needs_shared_data
from rt_lab.eval.base import EvalContext, run_evaluations, switched_on
from rt_lab.eval.ranking import draw_rivals, load_pool, rank
from rt_lab.data.rows import RowError, make_row
from rt_lab.data.templates import ChatTemplate, TagTemplate

DOLLY = SHARED_DATA / "dolly" / "dolly_2k_subset_sdft.json"
TAGS = TagTemplate()
ALPACA_ROWS = [
    {"instruction": "Name a primary colour.", "input": "", "output": "Blue is a primary colour."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "2 + 3 = 5."},
    {"instruction": "Say hello in French.", "input": "", "output": "Bonjour!"},
    {"instruction": "Give a synonym.", "input": "happy", "output": "Glad, or joyful, or cheerful, or content."},
    {"instruction": "Write one line about the sea.", "input": "", "output": "The sea keeps its own time."},
    {"instruction": "What is the capital of France?", "input": "", "output": "Paris."},
]


@pytest.fixture(scope="module")
def tiny_model(tiny_path):
    return AutoModelForCausalLM.from_pretrained(tiny_path).eval()


def rows_of(records):
    """Alpaca records as the `alpaca` format builds them: the input follows the instruction after a blank line."""
    return [make_row(str(i), [{"role": "user", "content": "\n\n".join(filter(None, [r["instruction"], r["input"]]))},
                              {"role": "assistant", "content": r["output"]}], f"test row {i}")
            for i, r in enumerate(records)]


def write(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def reference_score(model, tokenizer, instruction: str, response: str, max_length: int = 1024) -> float:
    """exp(-mean NLL) of the response + EOS after the tag prompt, from one plain unbatched forward pass."""
    prompt = f"<|user|>\n{instruction}\n<|assistant|>\n"
    prompt_ids = tokenizer(prompt).input_ids  # the tokenizer's own BOS, as the authors' script has it
    ids = tokenizer(prompt + response + tokenizer.eos_token).input_ids
    assert ids[:len(prompt_ids)] == prompt_ids and ids[-1] == tokenizer.eos_token_id
    ids = ids[:max_length]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    start = len(prompt_ids)
    nll = F.cross_entropy(logits[start - 1:-1], torch.tensor(ids[start:]))
    return math.exp(-nll.item())


def test_rivals_are_the_authors_seed_0_draws():
    draws = draw_rivals(1000, 5, 0)
    random.seed(0)  # their ratio_eval.py: one global stream, randint over the whole pool, row after row
    assert draws == [[random.randint(0, 999) for _ in range(5)] for _ in range(1000)]
    assert draws == draw_rivals(1000, 5, 0) and draws != draw_rivals(1000, 5, 1)
    assert all(len(row) == 5 for row in draws)
    self_draws = sum(row.count(i) for i, row in enumerate(draws))
    assert 0 < self_draws < 20  # kept in the stream, dropped from the pairs


def test_scores_match_a_plain_forward_pass(tiny_model, tiny_tokenizer):
    rows = rows_of(ALPACA_ROWS[:2])
    metrics, records = rank(rows, tiny_model, tiny_tokenizer, TAGS, rivals=3, seed=0, max_length=1024,
                            batch_size=4)
    for i, record in enumerate(records):
        instruction = rows[i].messages[0].content
        assert record["score"] == pytest.approx(
            reference_score(tiny_model, tiny_tokenizer, instruction, rows[i].messages[1].content), rel=1e-5)
        for rival in record["rivals"]:
            response = rows[int(rival["id"])].messages[1].content
            assert rival["score"] == pytest.approx(
                reference_score(tiny_model, tiny_tokenizer, instruction, response), rel=1e-5)
    draws = draw_rivals(2, 3, 0)
    self_draws = sum(row.count(i) for i, row in enumerate(draws))
    assert metrics["n_self_draws"] == self_draws and metrics["n_pairs"] == 2 * 3 - self_draws
    assert metrics["n_rows"] == 2 and metrics["n_rows_skipped"] == 0
    wins = sum(r["score"] > rival["score"] for r in records for rival in r["rivals"])
    assert metrics["accuracy"] == wins / metrics["n_pairs"]
    assert metrics["mean_true_score"] == pytest.approx(sum(r["score"] for r in records) / 2)


def test_batching_and_padding_give_the_batch_size_1_scores(tiny_model, tiny_tokenizer):
    rows = rows_of(ALPACA_ROWS)
    one, records_one = rank(rows, tiny_model, tiny_tokenizer, TAGS, 5, 0, 1024, batch_size=1)
    many, records_many = rank(rows, tiny_model, tiny_tokenizer, TAGS, 5, 0, 1024, batch_size=7)
    for a, b in zip(records_one, records_many):
        assert a["score"] == pytest.approx(b["score"], rel=1e-5)
        assert [r["score"] for r in a["rivals"]] == pytest.approx([r["score"] for r in b["rivals"]], rel=1e-5)
    assert one["n_pairs"] == many["n_pairs"] == 6 * 5 - one["n_self_draws"]


def test_the_fused_and_reference_lm_head_give_the_same_scores(tiny_model, tiny_tokenizer):
    from rt_lab.train.token_losses import fused_head

    assert fused_head(tiny_model) is not None  # the default path really is the fused one
    rows = rows_of(ALPACA_ROWS)
    fused, records_fused = rank(rows, tiny_model, tiny_tokenizer, TAGS, 5, 0, 1024, batch_size=4)
    reference, records_reference = rank(rows, tiny_model, tiny_tokenizer, TAGS, 5, 0, 1024, batch_size=4,
                                        fused=False)
    assert [r["score"] for r in records_fused] == pytest.approx([r["score"] for r in records_reference], rel=1e-5)
    assert fused["n_pairs"] == reference["n_pairs"]


def test_truncation_at_max_length_and_instructions_that_fill_it(tiny_model, tiny_tokenizer):
    long_response = " ".join(["word"] * 200)
    rows = rows_of([{"instruction": "Repeat a word.", "input": "", "output": long_response},
                    {"instruction": "Describe everything. " * 60, "input": "", "output": "No."}])
    metrics, records = rank(rows, tiny_model, tiny_tokenizer, TAGS, 4, 0, max_length=64, batch_size=2)
    assert records[0]["score"] == pytest.approx(
        reference_score(tiny_model, tiny_tokenizer, "Repeat a word.", long_response, max_length=64), rel=1e-5)
    assert [r["id"] for r in records] == ["0"] and metrics["n_rows_skipped"] == 1 and metrics["n_rows"] == 1


def test_a_duplicate_response_ties_and_counts_as_a_loss(tiny_model, tiny_tokenizer):
    rows = rows_of([{"instruction": "Say yes.", "input": "", "output": "Yes."},
                    {"instruction": "Agree.", "input": "", "output": "Yes."}])
    metrics, _ = rank(rows, tiny_model, tiny_tokenizer, TAGS, 5, 0, 1024, batch_size=3)
    assert metrics["n_pairs"] > 0 and metrics["n_ties"] == metrics["n_pairs"] and metrics["accuracy"] == 0


def test_an_interrupted_ranking_resumes_from_its_cache(tiny_model, tiny_tokenizer, tmp_path):
    rows = rows_of(ALPACA_ROWS)
    cache = tmp_path / "nlls.jsonl"
    _, records = rank(rows, tiny_model, tiny_tokenizer, TAGS, 5, 0, 1024, batch_size=4, cache=cache)
    lines = cache.read_text().splitlines()
    assert len(lines) == len({json.loads(line)["key"] for line in lines})  # each sequence once
    # interrupted after 8 sequences, the 9th torn mid-line; one kept value is marked to show it is reused
    marked = {**json.loads(lines[0]), "nll": 9.0}
    cache.write_text("\n".join([json.dumps(marked), *lines[1:8], lines[8][:10]]))
    _, again = rank(rows, tiny_model, tiny_tokenizer, TAGS, 5, 0, 1024, batch_size=4, cache=cache)
    resumed = [json.loads(line) for line in cache.read_text().splitlines()]
    assert sorted(r["key"] for r in resumed) == sorted(json.loads(line)["key"] for line in lines)

    def scores(recs):
        return [s for r in recs for s in [r["score"], *(rival["score"] for rival in r["rivals"])]]

    changed = [(a, b) for a, b in zip(scores(records), scores(again)) if a != pytest.approx(b, rel=1e-6)]
    assert changed and all(b == math.exp(-9.0) for _, b in changed)


def test_eval_ranking_config(compose):
    cfg = compose(["eval=ranking"])
    options = cfg.eval.ranking
    assert (options.limit, options.rivals, options.seed, options.max_length) == (1000, 5, 0, 1024)
    assert (options.hub.path, options.hub.split, options.format) == ("tatsu-lab/alpaca", "train", "alpaca")
    assert switched_on(cfg) == ["ranking"]
    assert compose(["eval=[ranking]"]).eval.ranking == options
    assert compose([]).eval.ranking is None and switched_on(compose([])) == []
    if (REPO / "conf" / "eval" / "safety.yaml").is_file():
        both = compose(["eval=[ranking,safety]"])
        assert both.eval.ranking == options and both.eval.safety


def test_bad_rows_are_named(compose, tmp_path):
    missing = write(tmp_path / "missing.json", ALPACA_ROWS[:2] + [{"instruction": "Hi", "input": ""}])
    cfg = compose(["eval=ranking", f"eval.ranking.file={missing}"])
    with pytest.raises(RowError, match=r"missing\.json row 2: missing field 'output'"):
        load_pool(cfg.eval.ranking, None)
    empty = write(tmp_path / "empty.json", ALPACA_ROWS[:1] + [{"instruction": "Hi", "input": "", "output": " "}])
    cfg = compose(["eval=ranking", f"eval.ranking.file={empty}"])
    with pytest.raises(RowError, match=r"empty\.json row 1: no non-empty assistant message"):
        load_pool(cfg.eval.ranking, None)
    multi = tmp_path / "multi.jsonl"
    multi.write_text(json.dumps({"id": "m1", "messages": [{"role": "user", "content": "a"},
                                                         {"role": "assistant", "content": "b"},
                                                         {"role": "user", "content": "c"},
                                                         {"role": "assistant", "content": "d"}]}) + "\n")
    cfg = compose(["eval=ranking", f"eval.ranking.file={multi}", "eval.ranking.format=messages"])
    with pytest.raises(RowError, match=r"multi\.jsonl id m1: ranking needs one user and one assistant"):
        load_pool(cfg.eval.ranking, None)


def test_evaluation_runs_from_the_data_dir_mirror(compose, tiny_path, tiny_tokenizer, tiny_model, tmp_path):
    data_dir = tmp_path / "data"
    write(data_dir / "alpaca" / "alpaca_data.json", ALPACA_ROWS)
    cfg = compose(["model=tiny", "eval=ranking", f"paths.data_dir={data_dir}", "eval.ranking.limit=5"])
    run_dir = Path(cfg.paths.run_dir)
    ctx = EvalContext(cfg, tiny_tokenizer, instantiate(cfg.template), run_dir, lambda: tiny_model, None)
    metrics = run_evaluations(ctx, [])["ranking"]
    assert metrics["n_rows"] == 5 and metrics["n_pairs"] == 5 * 5 - metrics["n_self_draws"]
    assert 0 <= metrics["accuracy"] <= 1
    assert json.loads((run_dir / "eval" / "ranking.json").read_text()) == metrics
    scores = [json.loads(line) for line in (run_dir / "eval" / "ranking" / "scores.jsonl").read_text().splitlines()]
    assert [s["id"] for s in scores] == ["0", "1", "2", "3", "4"]
    assert (run_dir / "eval" / "ranking" / "nlls.jsonl").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("template", [TAGS, ChatTemplate()], ids=["tags", "chat"])
def test_smollm2_prefers_the_true_responses(smollm2_path, smollm2_tokenizer, template):
    model = AutoModelForCausalLM.from_pretrained(smollm2_path).eval()
    metrics, _ = rank(rows_of(ALPACA_ROWS), model, smollm2_tokenizer, template, 5, 0, 1024, batch_size=8)
    assert metrics["n_pairs"] == 6 * 5 - metrics["n_self_draws"] and metrics["accuracy"] > 0.7


@needs_shared_data
def test_dolly_file_gives_the_first_1000_rows(compose):
    cfg = compose(["eval=ranking", f"eval.ranking.file={DOLLY}"])
    rows = load_pool(cfg.eval.ranking, None)
    records = json.loads(DOLLY.read_text(encoding="utf-8"))
    assert len(rows) == 1000
    assert [row.messages[1].content for row in rows] == [r["output"] for r in records[:1000]]
    first = next(r for r in records if r["input"])
    assert rows[records.index(first)].messages[0].content == first["instruction"] + "\n\n" + first["input"]
