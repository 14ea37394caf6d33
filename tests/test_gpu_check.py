"""benchmarks/gpu_check.py, the one-command GPU check, in its CPU mode (`--device cpu --tiny`): every section runs
the same code as on a GPU at tiny shapes, in its own subprocess; vLLM, which this suite's environment lacks (it has
a venv of its own: make test-vllm), is a skipped row with its reason, a section past its time limit a failed row.
The real shapes need a GPU, which CI does not have."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(REPO / "benchmarks"))

from gpu_check import datasheet_peak, mfu  # noqa: E402


def gpu_check(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_every_section_runs_at_tiny_shapes_on_the_cpu(tmp_path):
    result = gpu_check("--device", "cpu", "--tiny", "--json", str(tmp_path / "check.json"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "check.json").read_text())
    rows = {row["check"]: row for row in report["rows"]}
    assert [row["status"] for row in report["rows"]] == ["ok"] * 8 + ["skipped"]
    assert report["device"]["name"] == "CPU" and report["device"]["peak_tflops"] is None

    full = rows["full fine-tune, bf16-mixed"]
    assert full["tokens_per_s"] > 0 and full["mfu"] is None  # no peak FLOP/s for a CPU
    assert full["numbers"]["weights_moved"] > 0.99  # fp32 master weights under bf16 compute
    assert rows["QLoRA (4-bit nf4, r=64, grad ckpt)"]["numbers"]["trainable"] > 0
    packed, unpacked = rows["packing: packed"]["numbers"], rows["packing: unpacked"]["numbers"]
    assert packed["losses"]["1"] == pytest.approx(unpacked["losses"]["1"], rel=1e-2)
    assert rows["FSDP, world size 1"]["numbers"]["units"] == ["LlamaDecoderLayer", "LlamaDecoderLayer"]
    for kind in ("full", "sharded"):  # stopped after step 2, resumed: the uninterrupted run's weights (CPU: exactly)
        assert rows[f"FSDP save/resume ({kind})"]["numbers"]["relative_weight_difference"] < 1e-6
    assert rows["generation: hf backend"]["tokens_per_s"] > 0
    assert "vllm is not installed" in rows["generation: vllm backend"]["details"]  # its own venv: make test-vllm
    # the one table: a header and a line per row
    table = result.stdout[result.stdout.index("| check |"):].splitlines()
    assert len([line for line in table if line.startswith("| ")]) == 1 + len(rows)


def test_a_section_past_its_time_limit_is_a_failed_row(tmp_path):
    result = gpu_check("--device", "cpu", "--tiny", "--sections", "fsdp,generation", "--section-timeout", "1",
                       "--json", str(tmp_path / "check.json"), timeout=120)
    assert result.returncode == 1
    rows = json.loads((tmp_path / "check.json").read_text())["rows"]
    assert [(row["check"], row["status"]) for row in rows] == [("fsdp", "failed"), ("generation", "failed")]
    assert all("timed out after 1 s" in row["details"] for row in rows)
    assert "| fsdp | failed |" in result.stdout


def test_real_shapes_on_a_cpu_and_unknown_sections_are_refused():
    result = gpu_check("--device", "cpu", timeout=60)
    assert result.returncode == 2 and "--device cpu --tiny" in result.stderr
    result = gpu_check("--device", "cpu", "--tiny", "--sections", "full_ft,speed", timeout=60)
    assert result.returncode == 2 and "unknown sections ['speed']" in result.stderr


def test_peak_flops_come_from_the_device_name():
    assert datasheet_peak("NVIDIA H100 80GB HBM3") == datasheet_peak("NVIDIA H200") == 989.0
    assert datasheet_peak("NVIDIA H100 PCIe") == 756.0
    assert datasheet_peak("Tesla T4") is None


def test_mfu_counts_the_lm_head_but_not_a_separate_input_embedding():
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1)
    untied = LlamaForCausalLM(LlamaConfig(**shape, tie_word_embeddings=False))
    tied = LlamaForCausalLM(LlamaConfig(**shape, tie_word_embeddings=True))
    h100 = {"peak_tflops": 989.0}
    assert untied.num_parameters() - tied.num_parameters() == 100 * 16
    for model in (untied, tied):  # both do the same FLOPs per token: the lookup is free, the head is not
        assert mfu(model, 1e6, h100) == pytest.approx(6 * tied.num_parameters() * 1e6 / 989e12)
    assert mfu(tied, 1e6, {"peak_tflops": None}) is None
