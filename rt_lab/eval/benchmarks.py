"""Core benchmarks through lm-evaluation-harness on the run's in-memory model (An et al. §4: chat template applied,
0-shot mmlu, ai2_arc, hellaswag, openbookqa, piqa; GSM8K 8-shot CoT as `gsm8k_cot_llama`, few-shot as turns).

`eval.benchmarks` lists lm-eval task, group or tag names; `eval.limit` caps the examples per task;
`eval.benchmark_options` holds the rest (`BenchmarkOptions`). Each task runs on its own, like the authors' one
`lm_eval` call per task, so each can have its own shot count, and its results are kept in
`<run_dir>/eval/benchmarks/<task>.json`: a preempted run resumes after the last finished task.

"Chat template" means the run's own template (`template=tags` renders `<|user|>`/`<|assistant|>` turns): the
authors set their tokenizer's chat template to their training tags before calling lm-eval, which is the same.
Metrics come back flat as `<task>/<metric>` (`<task>/<metric>/<filter>` for filtered generations, e.g.
`gsm8k_cot_llama/exact_match/strict-match`), for the top-level entries only (a group's subtasks are in the file).

lm-eval is an optional extra (`pip install "rt_lab[benchmarks]"`) imported only here.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Mapping, Sequence


from rt_lab.config.eval import BenchmarkOptions, typed
from rt_lab.eval.base import EvalContext, Metrics, register_evaluation
from rt_lab.io import atomic_write_json
from rt_lab.data.rows import Message
from rt_lab.data.templates import Template

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "rt_lab[benchmarks]"'


def options(eval_cfg: Mapping[str, Any]) -> BenchmarkOptions:
    """`eval.benchmark_options` over its schema's defaults (rt_lab/config/eval.py)."""
    return typed(eval_cfg).benchmark_options


def task_names(eval_cfg: Mapping[str, Any]) -> list[str]:
    return typed(eval_cfg).benchmarks


def render_chat(template: Template, tokenizer: Any, chat_history: Sequence[dict[str, str]],
                add_generation_prompt: bool = True) -> str:
    """lm-eval's chat turns in the run's template. With `add_generation_prompt` the text ends with an open
    assistant turn; without it lm-eval asks to continue its last (assistant) message, a task's `gen_prefix`."""
    messages = tuple(Message(turn["role"], turn["content"]) for turn in chat_history)
    continued = ""
    if not add_generation_prompt:
        if not messages or messages[-1].role != "assistant":
            raise ValueError("lm-eval asked to continue a final message that is not the assistant's")
        messages, continued = messages[:-1], messages[-1].content
    # the template renders where an assistant turn starts; an empty one gives exactly the generation prompt
    rendered = template.render(messages + (Message("assistant", ""),), tokenizer)
    return rendered.text[: rendered.assistant_spans[-1][0]] + continued


@register_evaluation("benchmarks")
def benchmarks(ctx: EvalContext) -> Metrics:
    tasks = task_names(ctx.cfg.eval)
    opts = options(ctx.cfg.eval)
    lm_eval = _import_lm_eval()
    limit = ctx.cfg.eval.get("limit")
    out_dir = ctx.out_dir("benchmarks")
    harness: tuple[Any, Any] | None = None
    metrics: Metrics = {}
    for task in tasks:
        settings = {"limit": limit, "num_fewshot": opts.shots(task), "apply_chat_template": opts.apply_chat_template,
                    "fewshot_as_multiturn": opts.fewshot_as_multiturn}
        path = out_dir / f"{task}.json"
        saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        if saved is not None and saved["settings"] == settings:
            log.info("benchmark %s already finished: %s", task, path)
        else:
            # the model and lm-eval's task index (~8 s) are only built when some task is left to run
            harness = harness or (_harness_model(ctx, opts), _task_manager(opts))
            saved = {"settings": settings, **_run_task(lm_eval, *harness, task, settings)}
            atomic_write_json(path, saved)
        metrics.update(top_level_metrics(saved))
    return metrics


def top_level_metrics(saved: dict[str, Any]) -> Metrics:
    """`{"mmlu": {"acc,none": 0.5, "alias": ...}}` -> `{"mmlu/acc": 0.5}` for the top-level results (those no
    group of the run contains); lm-eval's "N/A" standard errors are left out."""
    inside_groups = {name for subtasks in saved["group_subtasks"].values() for name in subtasks}
    metrics: Metrics = {}
    for name, entry in saved["results"].items():
        if name in inside_groups:
            continue
        for key, value in entry.items():
            if "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            metric, filter_name = key.split(",", 1)
            metrics[f"{name}/{metric}" if filter_name == "none" else f"{name}/{metric}/{filter_name}"] = value
    return metrics


def _run_task(lm_eval: Any, lm: Any, task_manager: Any, task: str, settings: dict[str, Any]) -> dict[str, Any]:
    log.info("benchmark %s: %s", task, settings)
    try:
        out = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=task_manager, log_samples=False,
                                      **settings)
    except ConnectionError as err:
        raise ConnectionError(
            f"lm-eval task {task!r} could not fetch its dataset from the Hugging Face Hub ({err}). Pre-cache it "
            "where the hub is reachable (same HF_DATASETS_CACHE), or point a task YAML at local files "
            "(dataset_path: json) in a folder listed in eval.benchmark_options.include_path"
        ) from err
    keep = ("results", "group_subtasks", "n-shot", "n-samples", "versions", "higher_is_better", "lm_eval_version")
    # round-trip through JSON so what is returned now is what a resumed run reads back
    return json.loads(json.dumps({key: out.get(key) for key in keep}, default=str))


def _harness_model(ctx: EvalContext, opts: BenchmarkOptions) -> Any:
    from lm_eval.models.huggingface import HFLM

    template = ctx.template

    class RunTemplateLM(HFLM):
        def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
            return render_chat(template, self.tokenizer, chat_history, add_generation_prompt)

    return RunTemplateLM(pretrained=ctx.model(), tokenizer=ctx.tokenizer, batch_size=opts.batch_size)


def _task_manager(opts: BenchmarkOptions) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(opts.include_path) or None)


def _import_lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError as err:
        raise ImportError(
            f"eval.benchmarks needs lm-evaluation-harness, which is not installed ({err}): {INSTALL_HINT}"
        ) from err
    return lm_eval

