"""Core benchmarks through lm-evaluation-harness (rt_lab.eval.benchmarks).

Always: the error naming the extra when lm-eval is absent, the options, prompts in the run's template, the flat
metrics. With lm-eval installed: a real run of lm-eval on the tiny model over multiple-choice tasks written here on
local JSONL files (lm-eval's hub datasets are unreachable offline), its accuracy recomputed by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rt_lab.eval import EVALUATIONS, EvalContext, switched_on
from rt_lab.eval import benchmarks as bench
from rt_lab.eval.benchmarks import BenchmarkOptions, options, render_chat, task_names, top_level_metrics
from rt_lab.data.templates import ChatTemplate, TagTemplate


def never_generates(batch):
    pytest.fail("benchmarks never generate through rt_lab")


def context(cfg, tmp_path: Path, model=None, tokenizer=None, template=None) -> EvalContext:
    def no_model():
        pytest.fail("the model was built although nothing needed it")

    return EvalContext(cfg=cfg, tokenizer=tokenizer, template=template or TagTemplate(), run_dir=tmp_path / "run",
                       model=model or no_model, answer=never_generates)


def test_missing_lm_eval_names_the_extra(tmp_path, monkeypatch):
    # None in sys.modules makes `import lm_eval` raise ImportError, as when the package is not installed
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    cfg = OmegaConf.create({"eval": {"benchmarks": ["piqa"], "limit": None}})
    expected = r'eval.benchmarks needs lm-evaluation-harness.*pip install "rt_lab\[benchmarks\]"'
    with pytest.raises(ImportError, match=expected):
        EVALUATIONS["benchmarks"](context(cfg, tmp_path))


def test_paper_preset_composes_to_the_default_options(compose):
    cfg = compose(["eval=benchmarks"])
    assert switched_on(cfg) == ["benchmarks"]
    assert task_names(cfg.eval) == ["mmlu", "ai2_arc", "hellaswag", "openbookqa", "piqa", "gsm8k_cot_llama"]
    # the YAML and the code defaults are one setting: eval.benchmarks=[...] alone gets the same
    assert options(cfg.eval) == BenchmarkOptions()
    assert (options(cfg.eval).shots("mmlu"), options(cfg.eval).shots("gsm8k_cot_llama")) == (0, 8)


def test_unknown_option_and_bad_task_list_are_refused_before_the_run(compose):
    from hydra.errors import ConfigCompositionException

    from rt_lab.config.validate import ConfigError, validate

    with pytest.raises(ConfigError, match="eval.benchmark_options.num_fewshots"):
        validate(compose(["eval=benchmarks", "+eval.benchmark_options.num_fewshots=5"]), files=False)
    with pytest.raises(ConfigCompositionException, match="eval.benchmarks"):
        compose(["eval.benchmarks={mmlu: 1}"])
    with pytest.raises(ConfigError, match="eval.lenght is not an evaluation"):
        validate(compose(["+eval.lenght=true"]), files=False)


def test_chat_turns_render_in_the_run_template(tiny_tokenizer):
    tags = TagTemplate()
    eos = tiny_tokenizer.eos_token
    assert render_chat(tags, tiny_tokenizer, [{"role": "user", "content": "Q: 2+2?"}]) == \
        tags.prompt("Q: 2+2?", tiny_tokenizer)
    few_shot = [{"role": "user", "content": "Q: 1+1?"}, {"role": "assistant", "content": "2"},
                {"role": "user", "content": "Q: 2+2?"}]
    assert render_chat(tags, tiny_tokenizer, few_shot) == \
        f"<|user|>\nQ: 1+1?\n<|assistant|>\n2{eos}\n<|user|>\nQ: 2+2?\n<|assistant|>\n"
    # a task's gen_prefix: lm-eval asks to continue the assistant's message
    prefixed = few_shot + [{"role": "assistant", "content": "The answer is"}]
    assert render_chat(tags, tiny_tokenizer, prefixed, add_generation_prompt=False) == \
        f"<|user|>\nQ: 1+1?\n<|assistant|>\n2{eos}\n<|user|>\nQ: 2+2?\n<|assistant|>\nThe answer is"
    with pytest.raises(ValueError, match="not the assistant's"):
        render_chat(tags, tiny_tokenizer, few_shot, add_generation_prompt=False)


def test_chat_template_option_is_the_tokenizers_own(smollm2_tokenizer):
    history = [{"role": "user", "content": "Q: 1+1?"}, {"role": "assistant", "content": "2"},
               {"role": "user", "content": "Q: 2+2?"}]
    assert render_chat(ChatTemplate(), smollm2_tokenizer, history) == \
        smollm2_tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)


def test_top_level_metrics_keep_top_level_entries_and_numbers():
    saved = {
        "group_subtasks": {"grp": ["sub_a", "sub_b"]},
        "results": {
            "sub_a": {"alias": " - sub_a", "acc,none": 0.1},
            "grp": {"alias": "grp", "sample_len": 6, "acc,none": 0.25, "acc_stderr,none": 0.05},
            "gen": {"exact_match,strict-match": 0.5, "exact_match_stderr,strict-match": "N/A",
                    "exact_match,flexible-extract": 0.75},
        },
    }
    assert top_level_metrics(saved) == {"grp/acc": 0.25, "grp/acc_stderr": 0.05, "gen/exact_match/strict-match": 0.5,
                              "gen/exact_match/flexible-extract": 0.75}


# --- a real lm-eval run on local files -------------------------------------------------------------------------

QUESTIONS = [(f"What is {a} plus {b}?", [str(a + b), str(a + b + 1), str(a * b + 7)], 0)
             for a, b in [(1, 2), (3, 4), (5, 1), (2, 9), (7, 7), (4, 6), (8, 3), (6, 5)]]


def write_tasks(folder: Path) -> None:
    folder.mkdir()
    data = folder / "sums.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS))
    common = f"""dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
fewshot_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
    (folder / "sums.yaml").write_text("task: local_sums\n" + common)
    (folder / "sums_fewshot.yaml").write_text("task: local_sums_fewshot\n" + common)


def by_hand_accuracy(model, tokenizer, template) -> float:
    """Accuracy of picking the choice of highest log-likelihood after the run-template prompt, lm-eval's rule
    (with a chat template the choice follows the prompt directly; the prompt's trailing newline is scored with it)."""
    import torch

    correct = 0
    for question, choices, answer in QUESTIONS:
        prompt = template.prompt(question, tokenizer)
        context_ids = tokenizer(prompt.rstrip()).input_ids
        scores = []
        for choice in choices:
            ids = tokenizer(prompt + choice).input_ids
            with torch.no_grad():
                logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
            scores.append(sum(logprobs[i - 1, ids[i]].item() for i in range(len(context_ids), len(ids))))
        correct += scores.index(max(scores)) == answer
    return correct / len(QUESTIONS)


def test_lm_eval_runs_local_tasks_on_the_tiny_model(compose, tmp_path, tiny_path, monkeypatch):
    pytest.importorskip("lm_eval", reason='lm-evaluation-harness is not installed (pip install "rt_lab[benchmarks]")')
    from hydra.utils import instantiate
    from transformers import AutoModelForCausalLM

    from rt_lab.models import load_tokenizer

    tasks = tmp_path / "tasks"
    write_tasks(tasks)
    cfg = compose(["model=tiny", "eval=benchmarks", "eval.benchmarks=[local_sums,local_sums_fewshot]",
                   f"eval.benchmark_options.include_path=['{tasks}']", "eval.benchmark_options.batch_size=4",
                   "+eval.benchmark_options.num_fewshot_per_task.local_sums_fewshot=2"])
    tokenizer = load_tokenizer(cfg.model, tiny_path)
    template = instantiate(cfg.template)
    model = AutoModelForCausalLM.from_pretrained(tiny_path).eval()
    histories = []

    def spy(template, tokenizer, chat_history, add_generation_prompt=True):
        histories.append([turn["role"] for turn in chat_history])
        return render_chat(template, tokenizer, chat_history, add_generation_prompt)

    monkeypatch.setattr(bench, "render_chat", spy)
    metrics = EVALUATIONS["benchmarks"](context(cfg, tmp_path, lambda: model, tokenizer, template))

    assert set(metrics) == {"local_sums/acc", "local_sums/acc_stderr", "local_sums_fewshot/acc",
                            "local_sums_fewshot/acc_stderr"}
    assert metrics["local_sums/acc"] == pytest.approx(by_hand_accuracy(model, tokenizer, template))
    # every prompt went through the run's template: 0-shot single turns, 2-shot as user/assistant turns
    assert ["user"] in histories and ["user", "assistant", "user", "assistant", "user"] in histories
    saved = json.loads((tmp_path / "run" / "eval" / "benchmarks" / "local_sums_fewshot.json").read_text())
    assert saved["n-shot"] == {"local_sums_fewshot": 2} and saved["settings"]["num_fewshot"] == 2

    # a rerun (a resumed run) reads the finished tasks back without building the model
    assert EVALUATIONS["benchmarks"](context(cfg, tmp_path, tokenizer=tokenizer, template=template)) == metrics
