"""FSDP (`trainer=fsdp`, rt_lab/train/fsdp.py) on CPUs: torch's FSDP runs there over gloo, so two real processes
(torchrun) train the tiny model through rt_lab's train(). They must take the same steps as one plain device (the
fused LM-head loss included), every decoder layer must be its own FSDP unit (checkpointed when asked), a run
stopped after 2 steps must resume from `last.ckpt` (a file, or a folder of shards) to the same weights, and
bf16-mixed must keep fp32 master weights.

Left to the GPU (benchmarks/gpu_check.py): NCCL, CUDA bf16 autocast inside the units, FSDP's CPU offload of a
full state dict (on a CPU torch's offload crashes, so rt_lab gathers without it there)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers import REPO, TINY, run_python
from rt_lab.train.fsdp import layer_classes
from test_training import fit

ON_CPU = ["trainer=fsdp", "trainer.lightning.accelerator=cpu"]
# SGD with momentum: an optimizer state to resume, and no Adam normalisation to blow up summation-order noise
STEPS = TINY + ["adapter=full", "dataset.limit=12", "data.shuffle=false", "trainer.lightning.max_steps=3",
                "trainer.checkpoint_every_n_steps=2", "trainer.lightning.precision=32-true",
                "trainer.optimizer._target_=torch.optim.SGD", "~trainer.optimizer.betas",
                "+trainer.optimizer.momentum=0.9", "trainer.optimizer.lr=0.05", "trainer.schedule.name=constant",
                "trainer.schedule.warmup_ratio=0", "trainer.max_grad_norm=0.5"]
BF16 = TINY + ["adapter=full", "model.dtype=bfloat16", "dataset.limit=8", "trainer.lightning.max_steps=2",
               "data.shuffle=false", "trainer.optimizer.lr=1e-5", "trainer.schedule.name=constant",
               "trainer.schedule.warmup_ratio=0"]


# --- which modules become units -----------------------------------------------------------------------------------

def meta_model(config) -> nn.Module:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def test_units_are_the_decoder_layers_of_tiny_llama_and_smollm2(tiny_path, smollm2_path):
    from transformers import AutoConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    for path in (tiny_path, smollm2_path):
        model = meta_model(AutoConfig.from_pretrained(path))
        assert layer_classes(model) == (LlamaDecoderLayer,)
        assert sum(isinstance(m, LlamaDecoderLayer) for m in model.modules()) == model.config.num_hidden_layers


def test_units_follow_each_architecture_and_can_be_named():
    from transformers import Gemma2Config

    gemma = meta_model(Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=2, num_key_value_heads=1, head_dim=16))
    assert [cls.__name__ for cls in layer_classes(gemma)] == ["Gemma2DecoderLayer"]
    assert [cls.__name__ for cls in layer_classes(gemma, ["Gemma2MLP", "Gemma2Attention"])] == \
        ["Gemma2Attention", "Gemma2MLP"]
    with pytest.raises(ValueError, match=r"\['LlamaDecoderLayer'\] are not module classes of Gemma2ForCausalLM"):
        layer_classes(gemma, ["LlamaDecoderLayer"])
    with pytest.raises(ValueError, match="lists no _no_split_modules.*strategy.layers"):
        layer_classes(nn.Sequential(nn.Linear(2, 2)))


def test_lightnings_single_unit_fsdp_is_refused(compose):
    from rt_lab.config.validate import ConfigError, validate

    with pytest.raises(ConfigError, match="whole model as one FSDP unit.*use trainer=fsdp"):
        validate(compose(["model=tiny", "trainer=gpu", "trainer.lightning.strategy=fsdp"]), files=False)
    validate(compose(["model=tiny", "trainer=ddp"]), files=False)


# --- two processes --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """One torchrun of two CPU processes: each state_dict_type stopped after 2 steps and resumed to 3; bf16-mixed
    from bf16 weights, 2 steps."""
    out = tmp_path_factory.mktemp("fsdp")
    jobs = []
    for kind in ("full", "sharded"):
        overrides = STEPS + ON_CPU + [f"trainer.lightning.strategy.state_dict_type={kind}",
                                      "trainer.gradient_checkpointing=true"]
        jobs += [{"name": kind, "stop_at": 2, "overrides": overrides}, {"name": kind, "overrides": overrides}]
    jobs.append({"name": "bf16", "overrides": BF16 + ON_CPU})
    spec = out / "jobs.json"
    spec.write_text(json.dumps({"out": str(out), "jobs": jobs}))
    run_python(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                str(REPO / "tests" / "fsdp_worker.py"), str(spec)], cwd=out, timeout=900)
    return out


def attempts(out: Path, name: str) -> list[tuple[dict, dict[str, torch.Tensor]]]:
    runs = out / name
    return [(json.loads((runs / f"{n}.json").read_text()), torch.load(runs / f"{n}.pt"))
            for n in range(len(list(runs.glob("*.json"))))]


def test_each_decoder_layer_is_a_checkpointed_unit_with_fp32_master_weights(two_ranks):
    report, _ = attempts(two_ranks, "full")[0]
    wrapping = report["wrapping"]
    bf16 = attempts(two_ranks, "bf16")[0][0]["wrapping"]
    assert report["world_size"] == 2 and wrapping["root_is_fsdp"]
    assert wrapping["units"] == wrapping["checkpointed"] == ["LlamaDecoderLayer", "LlamaDecoderLayer"]
    assert not wrapping["hf_gradient_checkpointing"]  # transformers' own would recompute a second time
    # the fused LM head + cross-entropy, which reads the head's weight itself: gathered inside the root's forward
    assert wrapping["fused_loss"] and bf16["fused_loss"]
    assert wrapping["flat_param_dtypes"] == ["torch.float32"]
    assert wrapping["mixed_precision"] == ["torch.float32"] * 3  # 32-true
    assert (bf16["units"], bf16["checkpointed"]) == (["LlamaDecoderLayer", "LlamaDecoderLayer"], [])
    # bf16 compute on fp32 flat parameters; gradients reduced and buffers (RoPE inv_freq) kept in fp32
    assert bf16["flat_param_dtypes"] == ["torch.float32"]
    assert bf16["mixed_precision"] == ["torch.bfloat16", "torch.float32", "torch.float32"]


@pytest.mark.parametrize("kind", ["full", "sharded"])
def test_stopped_and_resumed_fsdp_takes_the_steps_of_one_device(compose, tmp_path, two_ranks, kind):
    single, single_losses = fit(compose(STEPS + ["trainer=cpu"]), tmp_path)
    (first, after_two), (second, resumed) = attempts(two_ranks, kind)
    assert sorted(first["losses"]) == ["1", "2"] and sorted(second["losses"]) == ["3"]
    assert (two_ranks / kind / "checkpoints" / "last.ckpt").is_dir() == (kind == "sharded")
    losses = {**first["losses"], **second["losses"]}
    for step, loss in single_losses.items():
        assert losses[str(step)] == pytest.approx(loss, rel=1e-5), step
    reference = dict(single.named_parameters())
    assert set(resumed) == set(reference)
    gathered = torch.load(two_ranks / kind / "1-state.pt")  # what generation.at_epochs exports mid-training
    assert set(gathered) == {f"model.{name}" for name in resumed}
    for name, value in resumed.items():
        torch.testing.assert_close(value, reference[name].detach(), rtol=1e-4, atol=1e-6, msg=name)
        assert not torch.equal(value, after_two[name]), f"{name} did not move in step 3"
        assert torch.equal(gathered[f"model.{name}"], value), name


def test_bf16_mixed_under_fsdp_moves_every_weight_that_got_a_gradient(compose, tmp_path, tiny_path, two_ranks):
    """As tests/test_precision.py for one device: at lr 1e-5 from bf16 weights, the elements that a 32-bit run
    moves must move (16-bit master weights would round most updates away)."""
    from transformers import AutoModelForCausalLM

    start = {n: p.detach().float()
             for n, p in AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.bfloat16).named_parameters()}
    fit(compose(BF16 + ["trainer.lightning.precision=32-true"]), tmp_path)
    reference = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    moved = {n: reference["state_dict"][f"model.{n}"] != start[n] for n in start}
    assert sum(int(m.sum()) for m in moved.values()) > 0.5 * sum(m.numel() for m in moved.values())
    checkpoint = torch.load(two_ranks / "bf16" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    weights = {key.removeprefix("model."): value for key, value in checkpoint["state_dict"].items()}
    assert set(weights) == set(start) and all(w.dtype == torch.float32 for w in weights.values())
    hit = sum(int((weights[n] != start[n])[moved[n]].sum()) for n in start)
    # all but a few embedding elements, whose gradients FSDP sums in bf16 (the compute dtype) to exactly zero;
    # bf16 weights move under 10% of them (tests/test_precision.py)
    assert hit > 0.999 * sum(int(m.sum()) for m in moved.values())
    _, exported = attempts(two_ranks, "bf16")[0]
    assert all(value.dtype == torch.bfloat16 for value in exported.values())  # back in model.dtype


def test_launch_with_two_fsdp_processes_exports_and_generates_once(tmp_path):
    """`launch.py trainer=fsdp` as users run it: Lightning starts the second process (the script again, same run
    dir); both train, rank 0 alone exports the gathered model and answers the prompts."""
    from safetensors.torch import load_file

    from helpers import FAST, launch
    from rt_lab.layout import RunDir

    run = RunDir(tmp_path / "run")
    launch(FAST + ON_CPU + ["adapter=full", "logger=csv", "trainer.checkpoint_every_n_steps=1",
                            f"hydra.run.dir={run.path}"], tmp_path)
    assert run.done_marker.is_file() and run.trained_marker.is_file()
    assert len(json.loads(run.outputs.read_text())) == 3
    assert "rank 0 exports and generates" in (run.path / "train_ddp_process_1.log").read_text()
    exported = load_file(run.model / "model.safetensors")
    trained = torch.load(run.checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert set(exported) == {key.removeprefix("model.") for key in trained}
    for name, value in exported.items():
        assert torch.equal(value, trained[f"model.{name}"]), name
