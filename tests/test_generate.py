"""Generation: answers appended as they finish, and a resume that answers only what is missing and ends with the
same file."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from rt_lab.generate.decode import encode_prompt, generate_outputs, hf_batch_generator, in_prompt_order
from rt_lab.data.prompts import load_prompts
from rt_lab.data.templates import TagTemplate

GENERATION = OmegaConf.create({"max_new_tokens": 10, "batch_size": 4, "do_sample": False, "temperature": 1.0,
                               "top_p": 1.0})


@pytest.fixture(scope="module")
def prompts():
    return load_prompts(OmegaConf.create({"name": "sample", "file": "pkg://sample_data/sample_prompts.jsonl",
                                          "format": "instruction", "limit": None}))


def run(model, tokenizer, prompts, out_dir):
    answer = hf_batch_generator(model, tokenizer, GENERATION)
    return generate_outputs(answer, tokenizer, TagTemplate(), prompts, "auto", "tiny-test", out_dir)


def test_outputs_are_alpaca_eval_records_in_prompt_order(tiny_path, tiny_tokenizer, prompts, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    records = json.loads(run(model, tiny_tokenizer, prompts, tmp_path).read_text())
    assert [r["instruction"] for r in records] == [p.instruction for p in prompts]
    assert {r["generator"] for r in records} == {"tiny-test"} and {r["dataset"] for r in records} == {"sample"}
    assert len((tmp_path / "generations.jsonl").read_text().splitlines()) == len(prompts)


def test_interrupted_generation_resumes_to_the_same_file(tiny_path, tiny_tokenizer, prompts, tmp_path, caplog):
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    uninterrupted = run(model, tiny_tokenizer, prompts, tmp_path / "a").read_text()
    crashed = tmp_path / "b"
    run(model, tiny_tokenizer, prompts, crashed)
    # What a kill leaves on disk after four answers and part of the next record: no final file.
    lines = (crashed / "generations.jsonl").read_text().splitlines(keepends=True)
    (crashed / "generations.jsonl").write_text("".join(lines[:4]) + lines[4][:15])
    (crashed / "model_outputs.json").unlink()
    with caplog.at_level("INFO"):
        resumed = run(model, tiny_tokenizer, prompts, crashed).read_text()
    assert "resuming generation: 4 of 12 prompts already answered" in caplog.text
    assert resumed == uninterrupted
    lines = (crashed / "generations.jsonl").read_text().splitlines()
    assert len(lines) == len(prompts) and all(json.loads(line) for line in lines)


def test_a_corrupt_line_before_the_end_is_an_error(tiny_path, tiny_tokenizer, prompts, tmp_path):
    (tmp_path / "generations.jsonl").write_text('{"id": "prompt-00", "output": "x"}\nnot json\n')
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    with pytest.raises(ValueError, match="generations.jsonl: line 2: invalid JSON"):
        run(model, tiny_tokenizer, prompts, tmp_path)


def test_vllm_backend_without_vllm_says_how_to_get_it(compose, tiny_path, tiny_tokenizer):
    from rt_lab.generate.vllm_backend import vllm_batch_generator  # imports without vLLM

    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install 'rt_lab\[vllm\]'"):
            vllm_batch_generator(tiny_path, compose(["model=tiny"]), tiny_tokenizer)
    else:
        pytest.skip("vLLM is installed here")


def test_generation_device_auto_is_the_gpu_when_there_is_one():
    from rt_lab.generate.decode import generation_device

    assert generation_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert generation_device("cuda:1") == torch.device("cuda", 1)
    assert generation_device("cpu") == torch.device("cpu")


PREFIX = "Answer in one short sentence. "


def test_instruction_prefix_is_read_by_the_model_but_not_written_to_the_records(tiny_path, tiny_tokenizer,
                                                                                prompts, tmp_path):
    """Hewitt et al.'s --instruction_prefix: the model answers `prefix + instruction` exactly as it answers a
    prompt set that spells the prefix out, while model_outputs.json keeps the plain instruction."""
    from rt_lab.data.prompts import Prompt

    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    template = TagTemplate()
    generate = hf_batch_generator(model, tiny_tokenizer, GENERATION)
    seen = []

    def answer(prompts):
        seen.extend(prompts)
        return generate(prompts)

    prefixed = json.loads(generate_outputs(answer, tiny_tokenizer, template, prompts, "auto", "tiny-test",
                                           tmp_path / "prefix", instruction_prefix=PREFIX).read_text())
    spelled = [Prompt(p.id, PREFIX + p.instruction, p.dataset) for p in prompts]
    literal = json.loads(generate_outputs(generate, tiny_tokenizer, template, spelled, "auto", "tiny-test",
                                          tmp_path / "literal").read_text())
    assert [r["instruction"] for r in prefixed] == [p.instruction for p in prompts]
    assert [r["output"] for r in prefixed] == [r["output"] for r in literal]
    texts = sorted(tiny_tokenizer.decode(p.ids, skip_special_tokens=True) for p in seen)
    assert texts == sorted(f"<|user|>\n{PREFIX}{p.instruction}\n<|assistant|>\n" for p in prompts)
    # the rule head's instruction scope starts where the prefix starts: the user's turn as the model reads it
    assert all(tiny_tokenizer.decode(p.ids[p.instruction_start:]).startswith(PREFIX.split()[0]) for p in seen)


def test_a_launched_run_prefixes_its_eval_prompts(tmp_path):
    """`generation.instruction_prefix` reaches generation in a real run (method=base: the tiny model as built): its
    answers are those of a run whose prompt file spells the prefix out."""
    from helpers import FAST, launch

    sample = load_prompts(OmegaConf.create({"name": "sample", "file": "pkg://sample_data/sample_prompts.jsonl",
                                           "format": "instruction", "limit": 3}))
    spelled = tmp_path / "spelled.jsonl"
    spelled.write_text("".join(json.dumps({"instruction": PREFIX + p.instruction}) + "\n" for p in sample))
    common = [*FAST, "method=base", "logger=none"]
    # quoted: Hydra strips the spaces around an unquoted override value, the prefix's trailing one too
    launch([*common, f'generation.instruction_prefix="{PREFIX}"', f"hydra.run.dir={tmp_path / 'prefix'}"], tmp_path)
    launch([*common, "prompts=file", f"prompts.file={spelled}", f"hydra.run.dir={tmp_path / 'spelled'}"], tmp_path)
    prefixed, literal = (json.loads((tmp_path / run / "model_outputs.json").read_text()) for run in ("prefix", "spelled"))
    assert [r["instruction"] for r in prefixed] == [p.instruction for p in sample]
    assert [r["instruction"] for r in literal] == [PREFIX + p.instruction for p in sample]
    assert [r["output"] for r in prefixed] == [r["output"] for r in literal]


def test_answers_by_backend_are_what_the_runs_generator_answers(compose, tiny_path, tiny_tokenizer):
    """The function the GPU check calls with backends hf and vllm, here with hf alone."""
    from rt_lab.generate.parity import answers_by_backend
    from rt_lab.generate.rules import build_rules

    cfg = compose(["model=tiny", "method=rules", "generation.max_new_tokens=8", "generation.batch_size=2",
                   "generation.device=cpu"])
    instructions = ["Hi", "Tell me a story.", "Why?"]
    answers = answers_by_backend(cfg, instructions, backends=("hf",))
    answer = hf_batch_generator(AutoModelForCausalLM.from_pretrained(tiny_path), tiny_tokenizer, cfg.generation,
                                build_rules(cfg.rules, tiny_tokenizer))
    prompts = [encode_prompt(text, TagTemplate(), tiny_tokenizer, "auto") for text in instructions]
    assert answers == {"hf": in_prompt_order(answer(prompts), len(prompts))}
