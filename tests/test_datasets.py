"""Loading training rows and prompt sets through the real dataset configs: the real public files (read from the
shared data dir at run time, never copied here), the shipped sample set, the source formats on hand-written
records, clear errors on bad input, and the single-task guard."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hydra.utils import instantiate

from helpers import SHARED_DATA, needs_shared_data
from rt_lab.data.datasets import SAMPLERS, load_rows
from rt_lab.data.formats import FORMATS, LoadStats, training_rows
from rt_lab.data.methods import blank
from rt_lab.data.prompts import load_prompts
from rt_lab.data.rows import RowError

DATA_DIR = str(SHARED_DATA)


def roles(row) -> list[str]:
    return [message.role for message in row.messages]


def alternates(row) -> bool:
    return roles(row) == [("user", "assistant")[i % 2] for i in range(len(row.messages))]


def run_format(name: str, records: list[dict]) -> tuple[list, LoadStats]:
    stats = LoadStats()
    rows = list(training_rows(FORMATS[name](enumerate(records), "hand-written", stats), "hand-written"))
    return rows, stats


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def message_line(*pairs: tuple[str, str]) -> str:
    return json.dumps({"messages": [{"role": role, "content": content} for role, content in pairs]})


# --- real files through the dataset configs ------------------------------------------------------------------


@needs_shared_data
def test_lima(compose):
    rows = load_rows(compose(["dataset=lima"]).dataset, data_dir=DATA_DIR)
    assert len(rows) == 1030
    assert sum(len(row.messages) > 2 for row in rows) == 30
    assert rows[0].id == "lima_0"
    assert all(alternates(row) for row in rows)
    assert all(row.messages[-1].role == "assistant" for row in rows)
    assert len({row.id for row in rows}) == 1030


@needs_shared_data
def test_lima_as_an_et_al(compose):
    """An et al.: the first 1,000 conversations, first two messages."""
    full = load_rows(compose(["dataset=lima"]).dataset, data_dir=DATA_DIR)
    rows = load_rows(compose(["dataset=lima", "dataset.limit=1000", "dataset.max_messages=2"]).dataset,
                     data_dir=DATA_DIR)
    assert len(rows) == 1000
    assert all(roles(row) == ["user", "assistant"] for row in rows)
    assert [row.id for row in rows] == [row.id for row in full[:1000]]
    assert all(row.messages == full_row.messages[:2] for row, full_row in zip(rows, full))
    # LIMA's 30 multi-turn conversations are its last 30; max_messages alone truncates them
    assert [len(row.messages) > 2 for row in full] == [False] * 1000 + [True] * 30
    truncated = load_rows(compose(["dataset=lima", "dataset.max_messages=2"]).dataset, data_dir=DATA_DIR)
    assert len(truncated) == 1030
    assert all(roles(row) == ["user", "assistant"] for row in truncated)
    assert all(row.messages == full_row.messages[:2] for row, full_row in zip(truncated, full))


@needs_shared_data
def test_lima_rephrased_is_lima_with_the_restating_responses_rewritten(compose):
    """Hewitt et al.'s no-rephrase data: LIMA without lima_0, where every changed response keeps its original as
    `content_old`; response tuning (user turns blanked) on it gives exactly their RT file."""
    rows = load_rows(compose(["dataset=lima_rephrased"]).dataset, data_dir=DATA_DIR)
    lima = {row.id: row for row in load_rows(compose(["dataset=lima"]).dataset, data_dir=DATA_DIR)}
    records = [json.loads(line) for line in
               (SHARED_DATA / "hewitt" / "lima" / "lima_rephrased.jsonl").read_text().splitlines()]
    assert len(rows) == 1029 and [row.id for row in rows] == list(lima)[1:]
    rewritten = 0
    for row, record in zip(rows, records):
        originals = [m.get("content_old", m["content"]) for m in record["messages"]]
        assert originals == [m.content for m in lima[row.id].messages]
        assert [m.content for m in row.messages] == [m["content"] for m in record["messages"]]
        rewritten += any("content_old" in m for m in record["messages"])
    assert rewritten == 98
    blanked = [blank(row) for row in rows]
    their_rt = load_rows(compose(["dataset=lima_rephrased", "dataset.file=" + str(
        SHARED_DATA / "hewitt" / "lima" / "lima_no_instruction_rephrased.jsonl")]).dataset)
    assert blanked == their_rt


@needs_shared_data
def test_gsm8k(compose):
    rows = load_rows(compose(["dataset=gsm8k"]).dataset, data_dir=DATA_DIR)
    assert len(rows) == 1000  # dataset.limit, of 7,473 in train.jsonl
    first = json.loads((SHARED_DATA / "gsm8k" / "train.jsonl").open(encoding="utf-8").readline())
    assert rows[0].messages[0].content == first["question"]
    assert rows[0].messages[1].content == first["answer"]
    assert re.search(r"\n#### -?[\d,.]+$", rows[0].messages[1].content)
    assert all(re.search(r"\n#### -?[\d,.]+$", row.messages[1].content) for row in rows)
    assert all(roles(row) == ["user", "assistant"] for row in rows)


@needs_shared_data
def test_mbpp_train_split(compose):
    rows = load_rows(compose(["dataset=mbpp"]).dataset, data_dir=DATA_DIR)
    assert len(rows) == 374
    records = [json.loads(line) for line in (SHARED_DATA / "mbpp" / "mbpp.jsonl").read_text().splitlines()
               if line.strip()]
    by_id = {record["task_id"]: record for record in records}
    assert rows[0].messages[0].content == by_id[601]["text"]
    assert rows[0].messages[1].content == by_id[601]["code"]
    assert rows[-1].messages[0].content == by_id[974]["text"]
    assert [row.messages[0].content for row in rows] == [by_id[i]["text"] for i in range(601, 975)]


@needs_shared_data
def test_dolly_mirror(compose):
    rows = load_rows(compose(["dataset=dolly"]).dataset, data_dir=DATA_DIR)
    assert len(rows) == 2000
    records = json.loads((SHARED_DATA / "dolly" / "dolly_2k_subset_sdft.json").read_text(encoding="utf-8"))
    with_input = next(i for i, record in enumerate(records) if record.get("input"))
    without_input = next(i for i, record in enumerate(records) if not record.get("input"))
    record = records[with_input]
    assert rows[with_input].messages[0].content == record["instruction"] + "\n\n" + record["input"]
    assert rows[with_input].messages[1].content == record["output"]
    assert rows[without_input].messages[0].content == records[without_input]["instruction"]


INDICES = SHARED_DATA / "an_rt" / "subsample_indices"


@needs_shared_data
@pytest.mark.parametrize("file", ["alpaca_cleaned_1000_indices.json", "dolly15k_1000_indices.json"])
def test_shuffle_first_reproduces_an_et_al_subsample_indices(file):
    recorded = json.loads((INDICES / file).read_text(encoding="utf-8"))
    assert SAMPLERS["shuffle_first"](recorded["assumed_num_rows"], 1000, 0) == recorded["indices"]


# the first rows of An et al.'s recorded subsamples (../shared/data/an_rt/subsample_indices/), so the check runs
# without that folder too
RECORDED_START = {"alpaca_an": [48745, 38525, 11892, 16963, 8094, 3320, 28592, 45394],
                  "dolly_an": [3698, 12184, 9134, 13586, 11386, 10105, 12133, 14803]}


@pytest.mark.parametrize("option,size", [("alpaca_an", 51760), ("dolly_an", 15011)])
def test_an_subsample_configs_pick_the_recorded_rows_in_order(compose, tmp_path, option, size):
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps({"instruction": f"q{i}", "input": "", "output": f"a{i}"}) + "\n"
                              for i in range(size)), encoding="utf-8")
    cfg = compose([f"dataset={option}", f"dataset.file={source}", "dataset.format=alpaca"]).dataset
    picked = [int(row.messages[0].content[1:]) for row in load_rows(cfg)]
    assert len(picked) == len(set(picked)) == 1000
    assert picked[:8] == RECORDED_START[option]


@needs_shared_data
def test_a_subsample_of_a_source_of_another_size_is_refused(compose):
    with pytest.raises(ValueError, match=r"dataset\.sample\.rows=15011, but .*dolly_2k_subset_sdft\.json has 2000"):
        load_rows(compose(["dataset=dolly_an"]).dataset, data_dir=DATA_DIR)
    rows = load_rows(compose(["dataset=dolly_an", "dataset.sample.rows=null"]).dataset, data_dir=DATA_DIR)
    assert len(rows) == 1000


def test_limit_and_sample_together_are_refused(compose):
    from rt_lab.config.validate import ConfigError, validate

    with pytest.raises(ConfigError, match="dataset.limit=4: set dataset.limit .* not both"):
        validate(compose(["dataset=sample", "dataset.limit=4",
                          "dataset.sample={n: 2, seed: 0, how: shuffle_first, rows: null}"]), files=False)


@needs_shared_data
def test_alpaca_has_no_mirror(compose):
    with pytest.raises(FileNotFoundError, match=r"dataset\.file"):
        load_rows(compose(["dataset=alpaca"]).dataset, data_dir=DATA_DIR)


@needs_shared_data
def test_mirror_file_missing_names_the_path(compose, tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "gsm8k" / "train.jsonl"))):
        load_rows(compose(["dataset=gsm8k"]).dataset, data_dir=str(tmp_path))


def test_sample_dataset(compose):
    rows = load_rows(compose(["dataset=sample"]).dataset)
    assert len(rows) == 48
    assert sum(len(row.messages) > 2 for row in rows) == 4
    assert all(row.messages[-1].role == "assistant" for row in rows)
    assert len({row.id for row in rows}) == 48


def test_sample_dataset_limit_and_max_messages(compose):
    rows = load_rows(compose(["dataset=sample", "dataset.limit=10", "dataset.max_messages=2"]).dataset)
    full = load_rows(compose(["dataset=sample"]).dataset)
    assert len(rows) == 10
    assert all(roles(row) == ["user", "assistant"] for row in rows)
    assert [row.id for row in rows] == [row.id for row in full[:10]]


# --- bad input: clear, early errors naming the file and the row or line -------------------------------------


def load_file(compose, path: Path, fmt: str = "messages", *extra: str):
    cfg = compose(["dataset=sample", f"dataset.file={path}", f"dataset.format={fmt}", *extra])
    return load_rows(cfg.dataset)


def test_invalid_json_names_file_and_line(compose, tmp_path):
    path = write_jsonl(tmp_path / "broken.jsonl", [
        message_line(("user", "a"), ("assistant", "b")),
        message_line(("user", "c"), ("assistant", "d")),
        '{"messages": [ {"role": "user", ',
    ])
    with pytest.raises(ValueError, match=r"broken\.jsonl.*line 3"):
        load_file(compose, path)


def test_unknown_role_names_row_and_role(compose, tmp_path):
    path = write_jsonl(tmp_path / "roles.jsonl", [
        message_line(("user", "a"), ("assistant", "b")),
        message_line(("user", "c"), ("bot", "d")),
    ])
    with pytest.raises(RowError, match=r"roles\.jsonl row 2: message 1 has role 'bot'"):
        load_file(compose, path)


def test_row_without_assistant_message(compose, tmp_path):
    path = write_jsonl(tmp_path / "mute.jsonl", [
        message_line(("user", "a"), ("assistant", "b")),
        message_line(("user", "c"), ("assistant", "d")),
        message_line(("system", "s"), ("user", "only a question")),
    ])
    with pytest.raises(RowError, match=r"mute\.jsonl row 3: no non-empty assistant message"):
        load_file(compose, path)


def test_alpaca_row_missing_output(compose, tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([
        {"instruction": "Say hi.", "input": "", "output": "Hi."},
        {"instruction": "Say bye.", "input": "politely"},
    ]))
    with pytest.raises(RowError, match=r"alpaca\.json row 1: missing field 'output'"):
        load_file(compose, path, "alpaca")
    path.write_text(json.dumps([{"instruction": "Add.", "input": "2 and 3", "output": "5"}]))
    (row,) = load_file(compose, path, "alpaca")
    assert [(m.role, m.content) for m in row.messages] == [("user", "Add.\n\n2 and 3"), ("assistant", "5")]


def test_missing_file_names_the_path(compose, tmp_path):
    missing = tmp_path / "nowhere" / "rows.jsonl"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_file(compose, missing)


def test_unknown_format_is_refused(compose, tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [message_line(("user", "a"), ("assistant", "b"))])
    with pytest.raises(KeyError, match="no_such_format"):
        load_file(compose, path, "no_such_format")


def test_max_messages_that_cuts_every_answer_is_an_error(compose, tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [message_line(("user", "a"), ("assistant", "b"))])
    with pytest.raises(RowError, match="no non-empty assistant message"):
        load_file(compose, path, "messages", "dataset.max_messages=1")


def test_limit_reads_no_row_beyond_it(compose, tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [
        message_line(("user", "a"), ("assistant", "b")),
        message_line(("user", "c"), ("assistant", "d")),
        message_line(("user", "beyond the limit"), ("bot", "never read")),
    ])
    rows = load_file(compose, path, "messages", "dataset.limit=2")
    assert [row.messages[0].content for row in rows] == ["a", "c"]


# --- source formats on hand-written records ------------------------------------------------------------------


def test_poetry_keeps_named_poems_only():
    rows, stats = run_format("poetry", [
        {"poem name": "Harbour", "content": "Boats asleep,\nropes awake."},
        {"poem name": None, "content": "An untitled verse."},
        {"poem name": "Frost", "content": "White on the glass."},
    ])
    assert [row.messages[0].content for row in rows] == ["Write a poem called Harbour", "Write a poem called Frost"]
    assert rows[0].messages[1].content == "Boats asleep,\nropes awake."
    assert stats.left_out == {"poetry: selection rule": 1}


def test_poetry_missing_field_is_named():
    with pytest.raises(RowError, match=r"hand-written row 0: missing field 'content'"):
        run_format("poetry", [{"poem name": "Harbour"}])


def test_recipes_bullets_then_steps():
    rows, stats = run_format("recipes", [{
        "Title": "Toast",
        "Cleaned_Ingredients": "['2 slices bread', '1 tbsp butter']",
        "Instructions": "Toast the bread. Spread the butter.",
    }])
    (row,) = rows
    assert row.messages[0].content == "Recipe for Toast"
    assert row.messages[1].content == (" - 2 slices bread\n - 1 tbsp butter\n" + "\n\n"
                                       + "Toast the bread. Spread the butter.")
    assert stats.left_out == {}


def test_chess_groups_elo_headers_and_movetext():
    rows, stats = run_format("chess", [
        {"text": '[Event "Club match"]'},
        {"text": '[WhiteElo "1500"]'},
        {"text": '[BlackElo "1620"]'},
        {"text": "1. e4 e5 2. Nf3 Nc6 1-0\n"},
        {"text": '[Event "Casual"]'},
        {"text": "1. d4 d5 0-1"},  # no Elo headers: left out
        {"text": '[BlackElo "1400"]'},
        {"text": '[WhiteElo "1300"]'},
        {"text": "1. c4 1/2-1/2"},
    ])
    assert len(rows) == 2
    assert rows[0].messages[0].content == '[WhiteElo "1500"]\n[BlackElo "1620"]\n'
    assert rows[0].messages[1].content == "1. e4 e5 2. Nf3 Nc6 1-0"
    assert rows[0].id == "game-3"
    assert rows[1].messages[0].content == '[WhiteElo "1300"]\n[BlackElo "1400"]\n'
    assert rows[1].messages[1].content == "1. c4 1/2-1/2"
    assert stats.left_out == {"chess: game without both Elo headers": 1}


def test_chess_record_without_text():
    with pytest.raises(RowError, match="hand-written row 1"):
        run_format("chess", [{"text": '[WhiteElo "1"]'}, {"pgn": "1. e4"}])


def test_lima_conversations_alternate_roles():
    rows, _ = run_format("lima_conversations", [
        {"conversations": ["First question?", "First answer.", "Follow-up?", "Second answer."]},
        {"conversations": ["Only one question?", "Only one answer."]},
    ])
    assert [(m.role, m.content) for m in rows[0].messages] == [
        ("user", "First question?"), ("assistant", "First answer."),
        ("user", "Follow-up?"), ("assistant", "Second answer."),
    ]
    assert roles(rows[1]) == ["user", "assistant"]
    assert [row.id for row in rows] == ["0", "1"]


def test_dolly_and_gsm8k_and_mbpp_formats():
    (dolly,), _ = run_format("dolly", [{"instruction": "Summarise.", "context": "A long text.", "response": "Short."}])
    assert dolly.messages[0].content == "Summarise.\n\nA long text."
    (plain,), _ = run_format("dolly", [{"instruction": "Name a colour.", "context": "", "response": "Blue."}])
    assert plain.messages[0].content == "Name a colour."
    (gsm,), _ = run_format("gsm8k", [{"question": "1+1?", "answer": "1+1=2\n#### 2"}])
    assert (gsm.messages[0].content, gsm.messages[1].content) == ("1+1?", "1+1=2\n#### 2")
    (mbpp,), _ = run_format("mbpp", [{"text": "Return one.", "code": "def one():\n    return 1"}])
    assert mbpp.messages[1].content == "def one():\n    return 1"


# --- prompt sets ---------------------------------------------------------------------------------------------


@needs_shared_data
@pytest.mark.parametrize(("name", "count"), [("alpaca_eval", 805), ("hewitt_val", 56), ("lima_test", 300)])
def test_prompt_sets_from_the_data_dir(compose, name, count):
    prompts = load_prompts(compose([f"prompts={name}"]).prompts, DATA_DIR)
    assert len(prompts) == count
    assert len({p.id for p in prompts}) == count
    assert all(p.instruction.strip() for p in prompts)


@needs_shared_data
def test_alpaca_eval_prompts_match_the_file(compose):
    prompts = load_prompts(compose(["prompts=alpaca_eval"]).prompts, DATA_DIR)
    first = json.loads((SHARED_DATA / "alpaca_eval" / "alpaca_eval.jsonl").open(encoding="utf-8").readline())
    assert prompts[0].instruction == first["instruction"]
    assert prompts[0].dataset == first.get("dataset", "alpaca_eval")


def test_sample_prompts(compose):
    prompts = load_prompts(compose(["prompts=sample"]).prompts)
    assert len(prompts) == 12
    assert prompts[0].id == "prompt-00"
    assert all(p.dataset == "sample" for p in prompts)
    limited = load_prompts(compose(["prompts=sample", "prompts.limit=5"]).prompts)
    assert [p.id for p in limited] == [p.id for p in prompts[:5]]


def test_prompt_file_with_empty_instruction(compose, tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [
        json.dumps({"id": "a", "instruction": "Tell me a joke."}),
        json.dumps({"id": "b", "instruction": "   "}),
    ])
    with pytest.raises(ValueError, match=r"prompts\.jsonl row 2: empty prompt"):
        load_prompts(compose(["prompts=file", f"prompts.file={path}"]).prompts)


def test_prompt_file_loads(compose, tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [
        json.dumps({"id": "a", "instruction": "Tell me a joke."}),
        json.dumps({"instruction": "Name a river."}),
    ])
    prompts = load_prompts(compose(["prompts=file", f"prompts.file={path}"]).prompts)
    assert [(p.id, p.instruction, p.dataset) for p in prompts] == [
        ("a", "Tell me a joke.", "file"), ("2", "Name a river.", "file")]


def test_prompt_file_with_duplicate_ids(compose, tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [json.dumps({"id": "a", "instruction": "x"}),
                                                     json.dumps({"id": "a", "instruction": "y"})])
    with pytest.raises(ValueError, match="not unique"):
        load_prompts(compose(["prompts=file", f"prompts.file={path}"]).prompts)


def test_prompts_file_without_a_path_names_prompts_file(compose):
    with pytest.raises(ValueError, match=r"prompts=file: no hub id, no mirror and no file configured"):
        load_prompts(compose(["prompts=file"]).prompts)


# --- the single-task guard -----------------------------------------------------------------------------------


def make_datamodule(cfg, tokenizer, data_dir=None):
    from rt_lab.data.datamodule import InstructionDataModule

    return InstructionDataModule(cfg.data, cfg.dataset, cfg.method, instantiate(cfg.template), tokenizer,
                                 cfg.model.bos, data_dir)


def test_single_task_refuses_a_general_dataset(compose):
    from rt_lab.config.validate import ConfigError, validate

    with pytest.raises(ConfigError, match="dataset=sample is not a single-task dataset"):
        validate(compose(["method=single_task", "dataset=sample", "model=tiny"]))


def test_single_task_accepts_gsm8k(compose, tiny_tokenizer):
    cfg = compose(["method=single_task", "dataset=gsm8k", "model=tiny"])
    data = make_datamodule(cfg, tiny_tokenizer)
    assert data.dataset_cfg.name == "gsm8k"
    assert data.examples == []  # nothing is loaded before setup()


@needs_shared_data
def test_single_task_gsm8k_sets_up(compose, tiny_tokenizer):
    cfg = compose(["method=single_task", "dataset=gsm8k", "dataset.limit=8", "model=tiny", "data.max_length=512"])
    data = make_datamodule(cfg, tiny_tokenizer, data_dir=DATA_DIR)
    data.setup("fit")
    assert len(data.examples) == 8
    assert all(example.num_supervised > 0 for example in data.examples)


def test_other_methods_take_any_dataset(compose, tiny_tokenizer):
    cfg = compose(["method=it", "dataset=sample", "model=tiny"])
    assert make_datamodule(cfg, tiny_tokenizer).dataset_cfg.name == "sample"


@needs_shared_data
def test_refusal_mix_reproduces_an_et_al_draw(compose):
    """The N refusals mixed in are exactly the ones An et al.'s recipe draws (the shared reference files)."""
    base = load_rows(compose(["dataset=lima_an"]).dataset, data_dir=str(SHARED_DATA))
    for count in (100, 500):
        rows = load_rows(compose(["dataset=lima_an", f"dataset.refusal_mix={count}"]).dataset,
                         data_dir=str(SHARED_DATA))
        assert len(rows) == len(base) + count and rows[:len(base)] == base
        reference = [json.loads(line) for line in
                     (SHARED_DATA / "an_rt" / "refusal_data" / f"refusal_mix_{count}.jsonl").read_text().splitlines()]
        mixed = rows[len(base):]
        assert [(r.messages[0].content, r.messages[1].content) for r in mixed] == \
            [(ref["prompt"], ref["completion"]) for ref in reference]


def test_refusal_mix_larger_than_the_pool_is_refused(compose, tmp_path):
    refusals = tmp_path / "refusals.json"
    refusals.write_text(json.dumps([{"instruction": "Do harm.", "input": "", "output": "Sorry, I can't."},
                                    {"instruction": "Hi", "input": "", "output": "Hello!"}]))
    cfg = compose(["dataset=sample", "dataset.refusal_mix=2", f"dataset.refusals.file={refusals}"]).dataset
    with pytest.raises(ValueError, match="has only 1 matching refusals"):
        load_rows(cfg)
    cfg = compose(["dataset=sample", "dataset.refusal_mix=1", f"dataset.refusals.file={refusals}"]).dataset
    assert load_rows(cfg)[-1].messages[1].content == "Sorry, I can't."
