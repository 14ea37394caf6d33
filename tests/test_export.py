"""`adapter.export` on the tiny model: QLoRA merged into the bf16 base as An et al. do (checked against a merge by
hand from the adapter's own tensors), the adapter-only export, the 4-bit copy freed before the dense base loads,
and clear errors for an export that does not exist or does not fit the adapter."""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass, field

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rt_lab.train.adapters import quantization_config
from rt_lab.train.export import Base, is_adapter_folder
from rt_lab.generate.decode import encode_prompt, generate_batch, generation_config
from rt_lab.models import load_tokenizer, resolve_path
from rt_lab.layout import MERGED_ADAPTER, RunDir
from rt_lab.run import RunContext, train as train_stage
from rt_lab.train.fit import train

# Two optimizer steps at a high learning rate: enough for every lora_B to leave zero.
TINY = ["model=tiny", "logger=none", "dataset.limit=4", "data.batch_size=2", "data.micro_batch_size=2",
        "data.max_length=128", "trainer.lightning.max_steps=2", "trainer.optimizer.lr=3e-2",
        "trainer.schedule.name=constant", "trainer.schedule.warmup_ratio=0",
        "+trainer.lightning.enable_progress_bar=false"]
QLORA = TINY + ["adapter=qlora", "adapter.lora.lora_dropout=0"]
TEXT = "<|user|>\nWrite a haiku about rain.\n<|assistant|>\nSoft rain on the roof"


def hand_merged(base_path: str, adapter_folder) -> torch.nn.Module:
    """The base loaded in bf16 with W += (alpha / r) * B @ A for every LoRA layer, from the adapter's files."""
    settings = json.loads((adapter_folder / "adapter_config.json").read_text())
    assert not settings["use_rslora"] and not settings["use_dora"]
    scale = settings["lora_alpha"] / settings["r"]
    tensors = load_file(adapter_folder / "adapter_model.safetensors")
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.bfloat16)
    weights = model.state_dict()
    merged = 0
    for name, lora_a in tensors.items():
        if ".lora_A." not in name:
            continue
        lora_b = tensors[name.replace(".lora_A.", ".lora_B.")]
        target = name.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
        with torch.no_grad():
            # one rounding to bf16, of the exact fp32 sum
            weights[target].copy_((weights[target].float() + scale * (lora_b.float() @ lora_a.float())).bfloat16())
        merged += 1
    assert merged == 14  # 7 linear layers x 2 blocks: all-linear leaves out only the output head
    return model.eval()


def logits(model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=torch.tensor([tokenizer(TEXT).input_ids])).logits


def trained_model(cfg, tokenizer, template, run_dir):
    """The train stage of a run in `run_dir` (rt_lab.run.train), as run() calls it: the model it hands on."""
    ctx = RunContext(cfg, RunDir(run_dir), tokenizer, template, [], cfg.dataset)
    train_stage(ctx)
    return ctx.model


def greedy(model, tokenizer, cfg) -> list[str]:
    prompts = [encode_prompt(text, instantiate(cfg.template), tokenizer, "auto") for text in ("Hi", "Name a color")]
    return generate_batch(model.eval(), tokenizer, prompts,
                          generation_config(OmegaConf.merge(cfg.generation, {"max_new_tokens": 12}), tokenizer))


def test_qlora_merge_bf16_equals_a_hand_merge_into_the_bf16_base(compose, tmp_path):
    import bitsandbytes as bnb

    cfg = compose(QLORA)
    assert cfg.adapter.export == "merge_bf16"  # the default for adapter=qlora
    path = resolve_path(cfg.model, None)
    tokenizer = load_tokenizer(cfg.model, path)
    run_dir = tmp_path / "run"
    load = trained_model(cfg, tokenizer, instantiate(cfg.template), run_dir)
    folder = load.path
    adapter = folder / MERGED_ADAPTER
    assert RunDir(run_dir).trained_marker.is_file()
    assert not is_adapter_folder(folder) and is_adapter_folder(adapter)  # vLLM gets the dense folder
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    lora_b = {k: v for k, v in load_file(adapter / "adapter_model.safetensors").items() if ".lora_B." in k}
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values())  # trained, so the merge changes weights

    merged = load()
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    reference = hand_merged(path, adapter)
    expected = reference.state_dict()
    for name, weight in merged.state_dict().items():
        assert weight.dtype == torch.bfloat16, name
        assert torch.equal(weight, expected[name]), name
    # identical bf16 weights through the same bf16 forward: exactly equal logits and greedy text
    assert torch.equal(logits(merged, tokenizer), logits(reference, tokenizer))
    assert greedy(merged, tokenizer, cfg) == greedy(reference, tokenizer, cfg)

    # a rerun after trained.done exports nothing again and loads the same dense model
    written = (folder / "model.safetensors").stat().st_mtime_ns
    rerun = trained_model(cfg, tokenizer, instantiate(cfg.template), run_dir)
    assert torch.equal(logits(rerun(), tokenizer), logits(reference, tokenizer))
    assert (folder / "model.safetensors").stat().st_mtime_ns == written


def test_adapter_only_keeps_the_adapter_on_the_4bit_base(compose, tmp_path):
    import bitsandbytes as bnb
    from peft import PeftModel

    cfg = compose(QLORA + ["adapter.export=adapter_only"])
    tokenizer = load_tokenizer(cfg.model, resolve_path(cfg.model, None))
    run_dir = tmp_path / "run"
    load = trained_model(cfg, tokenizer, instantiate(cfg.template), run_dir)
    folder = load.path
    assert is_adapter_folder(folder) and not (folder / MERGED_ADAPTER).exists()
    assert not (folder / "model.safetensors").exists()
    model = load()
    assert isinstance(model, PeftModel)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    rerun = trained_model(cfg, tokenizer, instantiate(cfg.template), run_dir)
    assert torch.equal(logits(rerun(), tokenizer), logits(model, tokenizer))


class WeakrefAtTrainEnd(Callback):
    def __init__(self, refs: list) -> None:
        self.refs = refs  # not the callback: the trainer must be free to drop it with everything else

    def on_train_end(self, trainer, module):
        self.refs.append(weakref.ref(module.model))


@dataclass(frozen=True)
class WatchedBase(Base):
    """A real Base that notes, when the dense base is about to load, whether the trained 4-bit model is alive."""

    trained: list = field(default_factory=list)
    alive_at_load: list = field(default_factory=list)

    def compute_dtype_cfg(self):
        self.alive_at_load.append(self.trained[0]() is not None)
        return super().compute_dtype_cfg()


def test_merge_bf16_frees_the_4bit_model_before_loading_the_dense_base(compose, tmp_path, monkeypatch):
    """The run's own train stage, with a base that notes whether the trained 4-bit model is still alive when the
    dense base loads for the merge."""
    import rt_lab.run

    cfg = compose(QLORA + ["trainer.lightning.max_steps=1"])
    path = resolve_path(cfg.model, None)
    tokenizer = load_tokenizer(cfg.model, path)
    base = WatchedBase(cfg.model, path, quantization_config(cfg.adapter))
    monkeypatch.setattr(rt_lab.run, "run_base", lambda _: base)

    def fit_watched(cfg, model, tokenizer, template, run_dir, loggers, callbacks, dataset):
        return train(cfg, model, tokenizer, template, run_dir, loggers, [*callbacks, WeakrefAtTrainEnd(base.trained)],
                     dataset=dataset)

    monkeypatch.setattr(rt_lab.run, "fit", fit_watched)
    ctx = RunContext(cfg, RunDir(tmp_path), tokenizer, instantiate(cfg.template), [], cfg.dataset)
    train_stage(ctx)
    assert base.alive_at_load == [False]


@pytest.mark.parametrize("overrides, message", [
    (["adapter=qlora", "adapter.export=squash"],
     r"adapter.export='squash': not a registered adapter export; choose one of \['adapter_only', 'merge', "
     r"'merge_bf16'\]"),
    (["adapter=lora", "adapter.export=merge_bf16"],
     r"adapter.export='merge_bf16': needs adapter.quantization, which adapter=lora does not set"),
    (["adapter=full", "adapter.export=adapter_only"],
     r"adapter.export='adapter_only': needs adapter.lora, which adapter=full does not set"),
])
def test_an_export_that_does_not_exist_or_fit_fails_before_training(compose, tmp_path, overrides, message):
    from rt_lab.config.validate import ConfigError, validate

    with pytest.raises(ConfigError, match=message):
        validate(compose(TINY + overrides), files=False)


@pytest.mark.parametrize("adapter, kept_adapter", [("qlora", True), ("lora", False)])
def test_a_run_exports_a_dense_folder_and_generates(tmp_path, adapter, kept_adapter):
    from test_launch import FAST, launch

    launch([f"adapter={adapter}", "logger=none", *FAST], tmp_path)
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    assert (run_dir / "model" / "model.safetensors").is_file() and not is_adapter_folder(run_dir / "model")
    assert is_adapter_folder(run_dir / "model" / MERGED_ADAPTER) is kept_adapter
    assert len(json.loads((run_dir / "model_outputs.json").read_text())) == 3
