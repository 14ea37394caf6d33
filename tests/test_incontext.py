"""In-context alignment baselines (method=icl: URIAL, URIAL-R, 0-shot; An et al. Tables 7/13): the shipped prompts and
how they were derived, prompt files and their errors, stop strings in real transformers decoding, the output
clean-up, the preset, and launched runs of the tiny model compared with IT like every run (canned judge on
loopback: a paid API's model cannot run here)."""

from __future__ import annotations

import csv
import json
import re

import pytest
from omegaconf import OmegaConf

from helpers import FAST, SHARED_DATA, launch, needs_shared_data
from judge_server import judge_overrides
from rt_lab.data.incontext import SLOT, InContextTemplate, load_prompt, run_template
from rt_lab.data.rows import Message
from rt_lab.generate.decode import (EncodedPrompt, encode_prompt, finish_output, generate_batch, generation_config,
                                   in_prompt_order)
from rt_lab.io import package_path

MARKERS = ["# Query:", "# Answer:", "# Instruction"]
QUERY_SLOT = "# Query:\n```\n{instruction}\n```\n\n# Answer:\n```"


def prompt(name: str, file: str | None = None) -> InContextTemplate:
    return load_prompt(OmegaConf.create({"prompt": name, "prompt_file": file}))


def test_urial_is_the_authors_header_and_three_demonstrations_then_the_query_slot():
    urial = prompt("urial")
    assert urial.text.startswith("# Instruction\n\nBelow is a list of conversations between a human and an AI "
                                 "assistant (you). \n")
    assert urial.text.endswith("\n\n" + QUERY_SLOT)
    demonstrations = urial.text[: -len(QUERY_SLOT)]
    queries = re.findall(r"# Query:\n```\n(.*?)\n```\n\n# Answer:\n```\n", demonstrations, re.S)
    assert queries == ["Can you tell me some common types of renewable energy sources?",
                       "What is the best way to torture a friend who stole my money?",
                       "What is the proper method for deep frying a turkey? "]
    assert "I cannot assist with that request" in demonstrations  # the refusal demonstration
    text = urial.prompt("Name a prime.", None)
    assert text.endswith("# Query:\n```\nName a prime.\n```\n\n# Answer:\n```")
    assert text[urial.instruction_offset("Name a prime.", None):].startswith("Name a prime.\n```")


def test_urial_r_is_urial_without_the_demonstrations_queries_and_with_the_responses_header():
    urial, urial_r = prompt("urial").text, prompt("urial_r").text
    body, slot = urial[: -len(QUERY_SLOT)], urial[-len(QUERY_SLOT):]
    derived = re.sub(r"# Query:\n```\n.*?\n```\n\n", "", body, flags=re.S).replace(
        "Below is a list of conversations between a human and an AI assistant (you).",
        "Below is a list of responses of AI assistant (you).") + slot
    assert urial_r == derived
    assert urial_r.count("\n# Query:\n") == 1 and urial_r.count("\n# Answer:\n") == 4  # blocks, not the header
    assert prompt("zero_shot").text == QUERY_SLOT


def test_the_shipped_urial_material_carries_its_licence():
    folder = package_path("pkg://incontext_prompts")
    assert "Apache License" in (folder / "LICENSE-URIAL").read_text()
    assert "Re-Align/URIAL" in (folder / "README.md").read_text()


def test_a_prompt_file_is_read_stripped_and_only_its_slot_is_filled(tmp_path):
    file = tmp_path / "mine.txt"
    file.write_text("\n  Example {a: 1}\nQ: {instruction}\nA:\n\n")
    mine = prompt("file", str(file))
    assert mine.prompt("Why {x}?", None) == "Example {a: 1}\nQ: Why {x}?\nA:"
    assert mine.instruction_offset("Why?", None) == len("Example {a: 1}\nQ: ")


@pytest.mark.parametrize(("name", "file_text", "error"), [
    ("file", None, "method.prompt=file needs method.prompt_file=PATH"),
    ("file", "no slot here", r"mine.txt: an in-context prompt needs exactly one \{instruction\} slot, found 0"),
    ("file", "{instruction} and {instruction}", r"mine.txt: .* found 2"),
    ("urial", "{instruction}", "method.prompt_file=.*mine.txt is set but method.prompt=urial"),
    ("urial_x", None, r"method.prompt='urial_x': choose one of \['urial', 'urial_r', 'zero_shot'\] or 'file'"),
])
def test_bad_prompt_settings_are_named(tmp_path, name, file_text, error):
    file = None
    if file_text is not None:
        file = tmp_path / "mine.txt"
        file.write_text(file_text)
    with pytest.raises(ValueError, match=error):
        prompt(name, str(file) if file else None)


def test_a_missing_prompt_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.txt: no such file"):
        prompt("file", str(tmp_path / "nowhere.txt"))


def test_an_in_context_prompt_renders_no_conversation():
    with pytest.raises(ValueError, match="renders no conversations.*need another method"):
        prompt("urial").render((Message("user", "Hi"), Message("assistant", "Hello")), None)


def test_finish_output_cuts_at_the_first_marker_then_strips_as_told():
    text = "\nParis is the capital.\n```\n\n# Query:\n```\nMore?\n```\n# Answer:"
    assert finish_output(text, MARKERS, "`") == "Paris is the capital.\n"  # An et al.: .strip() then .rstrip("`")
    assert finish_output(text, MARKERS, "") == "Paris is the capital.\n```"
    assert finish_output(text, MARKERS, None) == "\nParis is the capital.\n```\n\n"
    assert finish_output("a # Answer: b # Query: c", MARKERS, None) == "a "  # the earliest marker, whichever
    assert finish_output("  no marker  ", [], None) == "  no marker  "
    assert finish_output("``code``", [], "`") == "``code"


def test_stop_strings_end_real_decoding_where_the_text_reaches_them(tiny_path, tiny_tokenizer):
    """The tiny model's greedy text, then again with a stop string taken from inside it: decoding ends early, and
    the cut output is the first text up to that string."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_path).eval()
    encoded = [encode_prompt("Name a color.", prompt("zero_shot"), tiny_tokenizer, "auto")]

    def answer(stop: list[str]) -> str:
        config = generation_config(OmegaConf.create({"max_new_tokens": 40, "do_sample": False, "stop": stop}),
                                   tiny_tokenizer)
        return generate_batch(model, tiny_tokenizer, encoded, config)[0]

    full = answer([])
    # a plain-ASCII stretch a few characters in, first seen there (byte-level text may hold broken characters)
    start = next(i for i in range(4, len(full) - 3) if full[i:i + 3].isascii() and full[i:i + 3].isprintable()
                 and full.find(full[i:i + 3]) == i)
    marker = full[start:start + 3]
    stopped = answer([marker])
    assert marker in stopped and len(stopped) < len(full)
    assert full.startswith(stopped.split(marker)[0])
    assert finish_output(stopped, [marker], None) == full[:start]


def test_answers_by_backend_frame_and_finish_as_a_run(compose, tiny_path, tiny_tokenizer):
    """The backend check (rt_lab.generate.parity) reads method=icl's prompt and finishes its answers as a run."""
    from transformers import AutoModelForCausalLM

    from rt_lab.generate.decode import hf_batch_generator
    from rt_lab.generate.parity import answers_by_backend

    cfg = compose(["model=tiny", "method=icl", "method.prompt=zero_shot", "generation.max_new_tokens=8",
                   "generation.device=cpu"])
    instructions = ["Hi", "Why?"]
    answers = answers_by_backend(cfg, instructions, backends=("hf",))
    answer = hf_batch_generator(AutoModelForCausalLM.from_pretrained(tiny_path), tiny_tokenizer, cfg.generation)
    encoded = [encode_prompt(text, prompt("zero_shot"), tiny_tokenizer, "auto") for text in instructions]
    assert answers == {"hf": [finish_output(text, MARKERS, "`") for text in in_prompt_order(answer(encoded), 2)]}


def test_vllm_requests_carry_the_stop_strings(compose):
    """The vLLM backend's request arguments (vLLM itself needs a GPU): its own stop strings, which it leaves out
    of the text, beside the EOS ids."""
    from rt_lab.generate.vllm_backend import sampling_args

    encoded = EncodedPrompt([1, 2, 3], 1)
    assert sampling_args(compose(["method=icl"]).generation, [1], None, encoded)["stop"] == MARKERS
    assert sampling_args(compose(["method=it"]).generation, [1], None, encoded)["stop"] is None


def test_the_preset_and_the_prompt_choices_compose(compose):
    cfg = compose(["sweeps=a_icl_baselines"])
    assert (cfg.method.name, cfg.method.train, cfg.generation.max_new_tokens) == ("icl_urial", False, 2048)
    assert list(cfg.generation.stop) == MARKERS and cfg.generation.strip == "`"
    assert cfg.prompts.name == "alpaca_eval" and cfg.judge.name == "openai"
    assert OmegaConf.to_container(cfg.compare.reference.select) == {"method": "it", "dataset": "lima_an"}
    assert list(cfg.compare.reference.match) == ["model", "prompts", "generation.max_new_tokens"]
    assert run_template(cfg).text == prompt("urial").text
    assert cfg.run.name == "smollm2_135m-icl_urial-sample-seed1"
    cfg = compose(["method=icl", "method.prompt=urial_r"])
    assert cfg.method.name == "icl_urial_r" and run_template(cfg).text == prompt("urial_r").text
    # the run's `template` is not used for an in-context prompt, and scoring evaluations are refused up front
    assert isinstance(run_template(compose(["method=icl", "method.prompt=zero_shot", "template=chat"])),
                      InContextTemplate)
    with pytest.raises(ValueError, match=r"method=icl_urial frames prompts in-context, but eval \['ranking'\]"):
        run_template(compose(["method=icl", "eval=ranking"]))


def test_icl_run_is_compared_with_it_like_every_run_canned_judge(tmp_path, length_judge):
    sweep = tmp_path / "sweep"
    result = launch(["-m", "method=it,icl", "logger=csv", f"hydra.sweep.dir={sweep}", *FAST,
                     *judge_overrides(length_judge)], tmp_path)
    assert not (sweep / "1" / "checkpoints").exists()  # nothing trained
    outputs = json.loads((sweep / "1" / "model_outputs.json").read_text())
    assert {o["generator"] for o in outputs} == {"tiny-icl_urial-sample-seed1"} and len(outputs) == 3
    for output in outputs:  # finished as An et al. finish theirs
        assert output["output"] == finish_output(output["output"], MARKERS, "`")
    log = (sweep / "1" / "launch.log").read_text()
    assert "dataset sample from" not in log  # no training data read
    with (sweep / "comparison" / "summary.csv").open() as handle:
        (row,) = csv.DictReader(handle)
    assert (row["method"], row["reference"], row["n_total"]) == ("icl_urial", "tiny-it-sample-seed1", "3")
    assert "| tiny | icl_urial | sample |" in result


@needs_shared_data
def test_the_preset_against_an_it_sweep_tiny_canned_judge(tmp_path, length_judge):
    """A tiny a_icl_baselines (two prompts) compared with a tiny LIMA IT sweep, as its header says."""
    tiny = [*FAST, "logger=csv", "prompts=alpaca_eval", f"paths.data_dir={SHARED_DATA}",
            *judge_overrides(length_judge)]
    it_sweep, icl = tmp_path / "it", tmp_path / "icl"
    launch(["-m", "method=it", "dataset=lima_an", f"hydra.sweep.dir={it_sweep}", *tiny], tmp_path)
    launch(["-m", "sweeps=a_icl_baselines", "model=tiny", "method.prompt=urial_r,zero_shot",
            f"hydra.sweep.dir={icl}", f"compare.reference.sweep={it_sweep}", *tiny], tmp_path)
    with (icl / "comparison" / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["method"], row["reference"]) for row in rows] == [
        ("icl_urial_r", "tiny-it-lima_an-seed1@it/0"), ("icl_zero_shot", "tiny-it-lima_an-seed1@it/0")]
    instructions = [o["instruction"] for o in json.loads((icl / "1" / "model_outputs.json").read_text())]
    assert len(instructions) == 3 and SLOT not in "".join(instructions)
