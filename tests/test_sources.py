"""Where data comes from (rt_lab.data.sources) and how its files are read (rt_lab.io.read_records): every bad
input, through the real configs of a training set, a prompt set or a safety set, stops with an error naming
the file, and the line, row, field or config key where there is one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rt_lab.data.datasets import load_rows
from rt_lab.data.prompts import load_prompts
from rt_lab.eval.safety import load_set


def jsonl(*records: object) -> bytes:
    return "".join(json.dumps(record) + "\n" for record in records).encode()


def chat(user: str, *answer: str) -> dict:
    return {"messages": [{"role": "user", "content": user}] + [{"role": "assistant", "content": a} for a in answer]}


GOOD = chat("Say hi.", "Hi.")

# (case, loader, file name, file bytes, format (None: the config's), error pattern after the file's name)
BAD_INPUTS = [
    ("non-UTF-8 JSONL", "dataset", "latin1.jsonl", jsonl(GOOD) + b'{"messages": "caf\xe9"}\n', "messages",
     r": line 2: not UTF-8 \(byte 0xe9 at offset 113\)"),
    ("non-UTF-8 CSV", "safety", "latin1.csv", b"prompt,label\ncaf\xe9,safe\n", "prompt",
     r": line 2: not UTF-8 \(byte 0xe9"),
    ("invalid JSON line", "dataset", "broken.jsonl", jsonl(GOOD) + b'{"messages": [\n', "messages",
     r": line 2: invalid JSON"),
    ("JSONL line not an object", "dataset", "list.jsonl", jsonl(GOOD) + b'"text"\n', "messages",
     r": line 2: expected a JSON object, got str"),
    ("JSON file not a list", "dataset", "object.json", json.dumps({"rows": [GOOD]}).encode(), "messages",
     r": a JSON dict with keys \['rows'\], expected a list of records"),
    ("JSON list item not an object", "dataset", "items.json", json.dumps([GOOD, "oops"]).encode(), "messages",
     r": item 1 is a str, expected an object"),
    ("JSONL named .json", "prompts", "lines.json", jsonl({"instruction": "a"}, {"instruction": "b"}), "instruction",
     r": line 2: invalid JSON \(Extra data; one object a line is JSONL"),
    ("CSV row with more fields", "safety", "more.csv", b"prompt,label\na,safe,extra\n", "prompt",
     r" row 1: more fields than the header"),
    ("CSV row with fewer fields", "safety", "fewer.csv", b"prompt,label\na,safe\nb\n", "prompt",
     r" row 2: fewer fields than the header"),
    ("CSV unclosed quote", "safety", "quote.csv", b'prompt,label\n"a,safe\n', "prompt",
     r": after line 1: bad CSV \(unexpected end of data\)"),
    ("CSV duplicate column", "safety", "header.csv", b"prompt,prompt,label\na,b,safe\n", "prompt",
     r": header row \['prompt', 'prompt', 'label'\]: column names must be non-empty and distinct"),
    ("missing field", "dataset", "alpaca.json", json.dumps([{"instruction": "a", "input": ""}]).encode(), "alpaca",
     r" row 0: missing field 'output' for format 'alpaca'; fields present: \['input', 'instruction'\]"),
    ("unknown role", "dataset", "roles.jsonl", jsonl({"messages": [{"role": "bot", "content": "x"}]}), "messages",
     r" row 1: message 0 has role 'bot'"),
    ("no answer to train on", "dataset", "mute.jsonl", jsonl(chat("Only a question?")), "messages",
     r" row 1: no non-empty assistant message"),
    ("unparsable field", "dataset", "recipes.jsonl",
     jsonl({"Title": "T", "Cleaned_Ingredients": "['unclosed", "Instructions": "x"}), "recipes", r" row 1: SyntaxError"),
    ("empty prompt", "prompts", "prompts.jsonl", jsonl({"instruction": "a"}, {"instruction": " "}), "instruction",
     r" row 2: empty prompt"),
    ("where column missing", "safety", "nolabel.csv", b"prompt,type\na,b\n", "prompt",
     r" row 1: no column 'label' to select on \(where\)"),
    ("where range over text", "dataset", "mbpp.csv", b"task_id,text,code\n601,t,c\n", "mbpp",
     r" row 1: task_id='601' cannot be compared with the where range \[601, 974\]"),
    ("empty file", "dataset", "empty.jsonl", b"", "messages", r": no records \(an empty file\?\)"),
    ("blank lines only", "prompts", "blank.jsonl", b"\n  \n", "instruction", r": no records"),
    ("unknown format", "dataset", "rows.jsonl", jsonl(GOOD), "no_such_format",
     r": dataset.format='no_such_format' is not a registered record format; choose one of \[.*'alpaca'"),
    ("duplicate prompt ids", "prompts", "ids.jsonl", jsonl({"id": "a", "instruction": "x"}, {"id": "a",
                                                           "instruction": "y"}), "instruction",
     r": prompt ids are not unique"),
]


def load(compose, loader: str, path: Path, fmt: str | None):
    """Read `path` the way a run reads that kind of source."""
    if loader == "dataset":
        option = "mbpp" if fmt == "mbpp" else "sample"  # mbpp: a file keeps the mirror's task_id range
        return load_rows(compose([f"dataset={option}", f"dataset.file={path}", f"dataset.format={fmt}"]).dataset)
    if loader == "prompts":
        return load_prompts(compose(["prompts=file", f"prompts.file={path}", f"prompts.format={fmt}"]).prompts)
    # XSTest's spec: a file inherits the mirror's `where: {label: safe}` filter
    key = "eval.safety.catalog.xstest_safe"
    options = compose(["eval=safety", f"{key}.file={path}", f"{key}.format={fmt}"]).eval.safety
    return load_set("xstest_safe", options.catalog.xstest_safe, None)


@pytest.mark.parametrize(("loader", "name", "content", "fmt", "error"),
                         [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
def test_a_bad_input_is_an_error_naming_the_file(compose, tmp_path, loader, name, content, fmt, error):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises((ValueError, KeyError)) as raised:
        load(compose, loader, path, fmt)
    assert raised.match(str(path).replace(".", r"\.") + error)


@pytest.mark.parametrize("loader", ["dataset", "prompts", "safety"])
def test_a_missing_file_or_a_directory_is_named(compose, tmp_path, loader):
    missing = tmp_path / "nowhere" / "rows.jsonl"
    with pytest.raises(FileNotFoundError, match=str(missing).replace(".", r"\.") + ": no such file"):
        load(compose, loader, missing, "instruction")
    with pytest.raises(IsADirectoryError, match=str(tmp_path).replace(".", r"\.") + ": is a directory"):
        load(compose, loader, tmp_path, "instruction")


@pytest.mark.parametrize(("loader", "overrides", "error"), [
    ("dataset", ["dataset=alpaca", "paths.data_dir=DIR"],
     r"dataset=alpaca: paths.data_dir is set but there is no local mirror of it \(and the Hub is off: "
     r"HF_HUB_OFFLINE\); give a file with dataset.file=PATH"),
    ("prompts", ["prompts=file"], r"prompts=file: no hub id, no mirror and no file configured"),
    ("safety", ["eval=safety", "paths.data_dir=DIR"],
     r"safety/xstest/xstest_prompts.csv does not exist; .* eval.safety.catalog.xstest_safe.file=PATH"),
])
def test_source_errors_name_the_config_key_to_set(compose, tmp_path, loader, overrides, error):
    cfg = compose([override.replace("DIR", str(tmp_path)) for override in overrides])
    with pytest.raises((ValueError, FileNotFoundError), match=error):
        if loader == "dataset":
            load_rows(cfg.dataset, cfg.paths.data_dir)
        elif loader == "prompts":
            load_prompts(cfg.prompts)
        else:
            load_set("xstest_safe", cfg.eval.safety.catalog.xstest_safe, cfg.paths.data_dir)


def test_where_ranges_and_values_filter_records(compose, tmp_path):
    """MBPP's train split is a `where` range over task_id; a file given for it keeps that filter."""
    path = tmp_path / "mbpp.jsonl"
    path.write_bytes(jsonl(*({"task_id": i, "text": f"t{i}", "code": f"c{i}"} for i in (600, 601, 974, 975))))
    rows = load_rows(compose(["dataset=mbpp", f"dataset.file={path}"]).dataset)
    assert [row.messages[0].content for row in rows] == ["t601", "t974"]
    rows = load_rows(compose(["dataset=mbpp", f"dataset.file={path}", "dataset.where={}"]).dataset)
    assert len(rows) == 4
