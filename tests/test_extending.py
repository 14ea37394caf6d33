"""The README's "Extending rt_lab" recipes work as written: each recipe's code blocks run, its YAML lands at the
path the README gives (in a copy of the repo's conf/ and sweeps/), and what it adds then does its job."""

from __future__ import annotations

import importlib
import json
import re
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from helpers import REPO
from rt_lab.data.formats import FORMATS
from rt_lab.data.methods import USER_TURNS
from rt_lab.eval import EVALUATIONS
from rt_lab.generate.rules import RULES

BLOCK = re.compile(r"(?:`(?P<path>[\w/.]+)`:\n\n)?```(?P<lang>python|yaml)\n(?P<body>.*?)```", re.S)


def recipes() -> dict[str, list[dict]]:
    """Recipe heading -> its blocks (lang, body, and for YAML the path it goes to), in README order."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Extending rt_lab\n", 1)[1].split("\n## ", 1)[0]
    found = {}
    for part in section.split("\n### ")[1:]:
        title, body = part.split("\n", 1)
        found[title] = [match.groupdict() for match in BLOCK.finditer(body)]
    return found


RECIPES = recipes()


@pytest.fixture
def repo_copy(tmp_path, monkeypatch):
    """conf/ and sweeps/ copied, so recipes add files without touching the checkout; compose() reads the copy."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    root = tmp_path / "repo"
    shutil.copytree(REPO / "conf", root / "conf")
    shutil.copytree(REPO / "sweeps", root / "sweeps")
    monkeypatch.setenv("RT_LAB_ROOT", str(root))
    registries = [FORMATS, USER_TURNS, RULES, EVALUATIONS]  # what recipes add to
    saved = [dict(registry) for registry in registries]

    def _compose(overrides: list[str]):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(root / "conf"), version_base="1.3"):
            return compose("config", overrides=overrides, return_hydra_config=True)

    yield root, _compose
    GlobalHydra.instance().clear()
    for registry, entries in zip(registries, saved):
        registry.clear()
        registry.update(entries)


def apply(title: str, root: Path) -> dict:
    """Run the recipe's code (registering what it defines) and write its YAML files; returns the code's names."""
    names: dict = {}
    blocks = RECIPES[title]
    assert blocks, f"README recipe {title!r} has no code or config block"
    for block in blocks:
        if block["lang"] == "python":
            # "# in rt_lab/x/y.py": the code is added to that module, so a `_target_` naming it resolves
            first = block["body"].splitlines()[0]
            module = first.removeprefix("# in ").removesuffix(".py").replace("/", ".") \
                if first.startswith("# in rt_lab/") else None
            namespace = vars(importlib.import_module(module)) if module else names
            exec(compile(block["body"], f"README: {title}", "exec"), namespace)
            names.update({key: namespace[key] for key in namespace if not key.startswith("__")})
        else:
            assert block["path"], f"README recipe {title!r}: a YAML block without the path it goes to"
            target = root / block["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block["body"], encoding="utf-8")
    return names


def test_the_readme_has_the_six_recipes():
    assert list(RECIPES) == ["A dataset format", "A method", "A rule for the rule head", "A judge",
                             "An evaluation", "A sweep preset"]


def test_a_dataset_format(repo_copy, tmp_path):
    from rt_lab.data.datasets import load_rows
    from rt_lab.data.rows import RowError

    root, compose = repo_copy
    apply("A dataset format", root)
    rows_file = tmp_path / "qa.jsonl"
    rows_file.write_text(json.dumps({"question": "Two plus two?", "answer": "Four."}) + "\n", encoding="utf-8")
    cfg = compose([f"dataset.file={rows_file}", "dataset.format=qa_pairs"])
    (row,) = load_rows(cfg.dataset)
    assert [(m.role, m.content) for m in row.messages] == [("user", "Two plus two?"), ("assistant", "Four.")]
    rows_file.write_text(json.dumps({"question": "Two plus two?"}) + "\n", encoding="utf-8")
    with pytest.raises(RowError, match=r"qa\.jsonl row 1: missing field 'answer'"):
        load_rows(cfg.dataset)


def test_a_method(repo_copy, tiny_tokenizer):
    from rt_lab.data.masking import IGNORE, encode_row
    from rt_lab.data.methods import user_turns
    from rt_lab.data.rows import make_row

    root, compose = repo_copy
    apply("A method", root)
    cfg = compose(["method=rt_placeholder"])
    row = make_row("r", [{"role": "user", "content": "Name a colour."},
                         {"role": "assistant", "content": "Blue."}], "test")
    from hydra.utils import instantiate

    example = encode_row(user_turns(cfg.method.user_turns)(row), instantiate(cfg.template), tiny_tokenizer,
                         cfg.method.loss_on, 512)
    assert tiny_tokenizer.decode(example.input_ids, skip_special_tokens=True) == \
        "<|user|>\nRespond.\n<|assistant|>\nBlue."
    supervised = [label for label in example.labels if label != IGNORE]
    assert tiny_tokenizer.decode(supervised) == "Blue." + tiny_tokenizer.eos_token


def test_a_rule(repo_copy, tiny_path, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from rt_lab.generate.decode import encode_prompt, generate_batch, generation_config
    from rt_lab.generate.rules import build_rules

    root, compose = repo_copy
    apply("A rule for the rule head", root)
    cfg = compose(["method=rules", "model=tiny", "rules.enabled=[eos_ramp,no_digits]",
                   "generation.max_new_tokens=24"])
    rules = build_rules(cfg.rules, tiny_tokenizer)
    model = AutoModelForCausalLM.from_pretrained(tiny_path).eval()
    from hydra.utils import instantiate

    prompts = [encode_prompt(text, instantiate(cfg.template), tiny_tokenizer, "auto")
               for text in ["Count to ten: 1 2 3", "What is 12 times 12?"]]
    config = generation_config(cfg.generation, tiny_tokenizer)
    plain = generate_batch(model, tiny_tokenizer, prompts, config, build_rules(
        OmegaConf.merge(cfg.rules, {"enabled": ["eos_ramp"]}), tiny_tokenizer))
    ruled = generate_batch(model, tiny_tokenizer, prompts, config, rules)
    assert not any(c.isdigit() for answer in ruled for c in answer)
    assert ruled != plain


def test_a_judge(repo_copy, tmp_path):
    from rt_lab.judges import build_judge, judge_pairs

    root, compose = repo_copy
    apply("A judge", root)
    judge = build_judge(compose(["judge=prefer_longer"]).judge)
    judgments = judge_pairs(judge, ["a", "b", "c"], ["a long answer", "short", "same"],
                            ["short", "a long answer", "same"], tmp_path / "judgments.jsonl")
    assert [j.value for j in judgments] == [2.0, 1.0, 1.5]


def test_an_evaluation(repo_copy, tmp_path):
    from rt_lab.eval import EvalContext, run_evaluations
    from rt_lab.io import atomic_write_json
    from rt_lab.layout import RunDir

    root, compose = repo_copy
    apply("An evaluation", root)
    cfg = compose(["eval=length"])
    run_dir = RunDir(tmp_path / "run")
    atomic_write_json(run_dir.outputs, [{"instruction": "a", "output": "four"}, {"instruction": "b", "output": ""}])
    never = lambda *_: pytest.fail("the length evaluation needs no model")  # noqa: E731
    metrics = run_evaluations(EvalContext(cfg, None, None, run_dir.path, never, never), [])
    assert metrics == {"length": {"mean_chars": 2.0, "empty": 1}}
    assert json.loads(run_dir.eval_metrics("length").read_text()) == metrics["length"]


def test_a_sweep_preset(repo_copy, tmp_path):
    import os
    import subprocess
    import sys

    root, compose = repo_copy
    apply("A sweep preset", root)
    cfg = compose(["sweeps=rt_lr_grid"])
    assert dict(cfg.hydra.sweeper.params) == {"method": "rt,it", "trainer.optimizer.lr": "1e-4,3e-4"}
    done = subprocess.run([sys.executable, str(REPO / "launch.py"), "-m", "sweeps=rt_lr_grid",
                           "hydra.launcher.dry_run=true", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          capture_output=True, text=True, env={**os.environ, "RT_LAB_ROOT": str(root)}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "4 jobs" in done.stdout + done.stderr
