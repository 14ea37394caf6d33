"""Compose-based tests of conf/: every option of every group composes and carries its key facts, the sweep
presets compose, the papers' settings are what the configs say, and run dirs never collide."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from helpers import REPO

CONF = REPO / "conf"
SKIPPED_GROUPS = {"hydra", "local"}  # hydra: Hydra's own node; local: optional, git-ignored machine settings

SINGLE_TASK_DATASETS = {"gsm8k", "mbpp", "poetry", "recipes", "chess"}
HUB_MODELS = {
    "gemma2_2b": "google/gemma-2-2b",
    "gemma2_9b": "google/gemma-2-9b",
    "llama2_7b": "meta-llama/Llama-2-7b-hf",
    "llama31_8b": "meta-llama/Llama-3.1-8B",
    "mistral_7b": "mistralai/Mistral-7B-v0.3",
    "olmo_7b": "allenai/OLMo-7B-hf",
}
RUN_DIR = re.compile(r"/runs/(\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2})_([0-9a-f]{6})$")
SWEEP_DIR = re.compile(r"/multiruns/(\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2})_([0-9a-f]{6})$")


def discover_options() -> list[tuple[str, str]]:
    """(group, option) for every conf/<group>/<option>.yaml, leaving out hydra/, local/ and `_`-prefixed bases."""
    found = []
    for group_dir in sorted(p for p in CONF.iterdir() if p.is_dir() and p.name not in SKIPPED_GROUPS):
        for file in sorted(group_dir.glob("*.yaml")):
            if not file.stem.startswith("_"):
                found.append((group_dir.name, file.stem))
    return found


OPTIONS = discover_options()


def test_discovery_finds_every_group():
    groups = {group for group, _ in OPTIONS}
    # new groups are welcome, none may vanish
    assert {"adapter", "data", "dataset", "debug", "generation", "logger", "method", "model", "paths", "prompts",
            "rules", "template", "trainer"} <= groups
    assert ("model", "_hub") not in OPTIONS
    assert len(OPTIONS) >= 45


# --- per-group key facts -------------------------------------------------------------------------------------


def check_adapter(cfg: DictConfig, option: str) -> None:
    from rt_lab.train.export import exporter

    assert cfg.adapter.name == option
    exporter(cfg.adapter)  # a registered export that fits the adapter
    if option == "full":
        assert cfg.adapter.lora is None and cfg.adapter.quantization is None
        assert cfg.adapter.export == "merge"
    if option in ("lora", "qlora"):
        from peft import LoraConfig

        lora = instantiate(cfg.adapter.lora)
        assert isinstance(lora, LoraConfig)
        assert lora.target_modules == "all-linear"
        assert str(lora.task_type.value if hasattr(lora.task_type, "value") else lora.task_type) == "CAUSAL_LM"
    if option == "lora":
        assert (cfg.adapter.lora.r, cfg.adapter.lora.lora_alpha, cfg.adapter.lora.lora_dropout) == (16, 32, 0.05)
        assert cfg.adapter.quantization is None
        assert cfg.adapter.export == "merge"
    if option == "qlora":
        import torch
        from transformers import BitsAndBytesConfig

        quantization = instantiate(cfg.adapter.quantization)
        assert isinstance(quantization, BitsAndBytesConfig)
        assert quantization.load_in_4bit is True
        assert quantization.bnb_4bit_quant_type == "nf4"
        assert quantization.bnb_4bit_use_double_quant is True
        assert quantization.bnb_4bit_compute_dtype == torch.bfloat16
        assert cfg.adapter.export == "merge_bf16"  # An et al. merge into the bf16 base, not the 4-bit one


def check_data(cfg: DictConfig, option: str) -> None:
    from rt_lab.data.datamodule import Batching

    batching = Batching.from_config(cfg.data)
    assert batching.seed == cfg.trainer.seed  # the shuffle follows the run's seed
    # unset, a packed bin holds the tokens of the largest padded micro-batch
    assert batching.pack_length == cfg.data.micro_batch_size * cfg.data.max_length


def check_dataset(cfg: DictConfig, option: str) -> None:
    from rt_lab.data.formats import FORMATS

    dataset = cfg.dataset
    assert dataset.name == option
    assert dataset.single_task is (option in SINGLE_TASK_DATASETS)
    named_formats = [dataset.get("format"), (dataset.get("mirror") or {}).get("format"),
                     (dataset.get("hub") or {}).get("format")]
    named_formats = [name for name in named_formats if name]
    assert named_formats, f"dataset={option} names no format"
    assert set(named_formats) <= set(FORMATS), f"unregistered format in {named_formats}"
    assert dataset.get("file") or dataset.get("mirror") or dataset.get("hub"), "no source at all"
    assert dataset.get("max_messages") == (2 if option == "lima_an" else None)
    assert dataset.refusal_mix == 0 and dataset.refusals.mirror.file.endswith("safety_only_data_Instructions.json")


def check_debug(cfg: DictConfig, option: str) -> None:
    assert option == "fast"
    assert cfg.model.name == "tiny"
    assert {name for name, entry in cfg.logger.items() if entry} == {"csv"}  # `override /logger: csv` replaced wandb
    assert cfg.dataset.limit == 16
    assert cfg.prompts.limit == 4
    assert (cfg.data.batch_size, cfg.data.micro_batch_size) == (4, 2)
    assert cfg.trainer.lightning.max_epochs == 1
    assert cfg.data.max_length == 256
    assert cfg.generation.max_new_tokens == 16


def check_generation(cfg: DictConfig, option: str) -> None:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from rt_lab.generate.decode import generation_config
    from rt_lab.generate.backends import BACKENDS

    assert cfg.generation.backend in BACKENDS
    assert cfg.generation.do_sample is False  # greedy by default, as both papers decode
    vocab = models.WordLevel({"<eos>": 0, "<unk>": 1}, unk_token="<unk>")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(vocab), eos_token="<eos>", pad_token="<eos>")
    config = generation_config(cfg.generation, tokenizer)
    assert (config.do_sample, config.use_cache, config.max_new_tokens) == (False, True, cfg.generation.max_new_tokens)


def check_logger(cfg: DictConfig, option: str) -> None:
    if option == "none":
        assert not any(cfg.logger.values())
    elif option == "csv":
        from hydra.utils import get_class
        from lightning.pytorch.loggers import CSVLogger

        assert issubclass(get_class(cfg.logger.csv._target_), CSVLogger)
        assert cfg.logger.csv.save_dir == cfg.paths.run_dir
    elif option == "wandb":
        wandb = cfg.logger.wandb
        assert wandb._target_ == "rt_lab.loggers.wandb_logger"
        assert wandb.save_dir == cfg.paths.run_dir
        assert list(wandb.tags) == [cfg.method.name, cfg.dataset.name, cfg.model.name]
        # the group is the run dir's name (HydraConfig is set by the compose fixture)
        assert wandb.group == Path(cfg.hydra.run.dir).name
    else:
        assert all("_target_" in entry for entry in cfg.logger.values())


METHODS = {  # name: (train, user_turns, loss_on, requires_single_task)
    "base": (False, "keep", "assistant", False),
    "full": (True, "keep", "all", False),
    "it": (True, "keep", "assistant", False),
    "rt": (True, "blank", "assistant", False),
    "single_task": (True, "keep", "assistant", True),
    "rules": (False, "keep", "assistant", False),
    "icl": (False, "keep", "assistant", False),
}


def method_name(method: DictConfig, option: str) -> str:
    """A method's name is its option, but for method=icl, whose name carries its prompt (icl_urial, ...)."""
    return f"icl_{method.prompt}" if option == "icl" else option


def check_method(cfg: DictConfig, option: str) -> None:
    from rt_lab.data.masking import LOSS_ON
    from rt_lab.data.methods import USER_TURNS

    method = cfg.method
    assert method.name == method_name(method, option)
    assert method.user_turns in USER_TURNS
    assert method.loss_on in LOSS_ON
    assert isinstance(method.train, bool) and isinstance(method.requires_single_task, bool)
    if option in METHODS:
        assert (method.train, method.user_turns, method.loss_on, method.requires_single_task) == METHODS[option]
    assert list(cfg.rules.enabled) == (["eos_ramp", "uniform", "diversity"] if option == "rules" else [])
    # only method=icl stops decoding at strings and strips its outputs (An et al.'s URIAL markers and fence)
    expected_stop = ["# Query:", "# Answer:", "# Instruction"] if option == "icl" else []
    assert (list(cfg.generation.stop), cfg.generation.strip) == (expected_stop, "`" if option == "icl" else None)


def check_model(cfg: DictConfig, option: str) -> None:
    from rt_lab.data.tokens import BOS_MODES

    model = cfg.model
    assert model.name == option
    assert model.bos in BOS_MODES
    assert model.dtype in ("bfloat16", "float32", "float16")
    if option in HUB_MODELS:  # the _hub base settings are inherited
        assert model.name_or_path == HUB_MODELS[option]
        assert model.dtype == "bfloat16"
        assert model.local_path is None and model.revision is None
        assert model.trust_remote_code is False
        expected_attention = "eager" if option.startswith("gemma2") else "flash_attention_2"
        assert model.attn_implementation == expected_attention


def check_paths(cfg: DictConfig, option: str) -> None:
    # the compose fixture points output_dir and run_dir into tmp_path; the rest comes from the (cleared) env
    assert cfg.paths.data_dir is None
    assert cfg.paths.cache_dir is None
    assert cfg.hydra.run.dir.startswith(cfg.paths.output_dir + "/runs/")


def check_prompts(cfg: DictConfig, option: str) -> None:
    prompts = cfg.prompts
    assert prompts.name == option
    named_formats = [prompts.get("format"), (prompts.get("mirror") or {}).get("format"),
                     (prompts.get("hub") or {}).get("format")]
    assert {name for name in named_formats if name} <= {"instruction", "lima_conversations"}
    if option == "file":
        assert prompts.file is None  # given on the command line; validation refuses a run without it
    else:
        assert prompts.get("file") or prompts.get("mirror") or prompts.get("hub")


def check_template(cfg: DictConfig, option: str) -> None:
    from rt_lab.data.templates import ChatTemplate, TagTemplate

    template = instantiate(cfg.template)
    assert isinstance(template, (TagTemplate, ChatTemplate))
    if option == "chat":
        assert isinstance(template, ChatTemplate)
    if option == "tags":
        assert isinstance(template, TagTemplate)
        assert template.prompt(" Hi ", None) == "<|user|>\nHi\n<|assistant|>\n"
        assert (template.system_tag, template.append_eos, template.strip_content) == ("<|system|>\n", True, True)
    if option == "ab_tags":
        assert isinstance(template, TagTemplate)
        assert template.prompt("Hi", None) == "<|A|>\nHi\n<|B|>\n"
        assert template.system_tag == "<|system|>\n"  # inherited from tags


TRAINERS = {  # name: (accelerator, devices, strategy, precision, lr)
    "default": ("auto", 1, "auto", "32-true", 1.0e-5),
    "cpu": ("cpu", 1, "auto", "32-true", 2.0e-4),
    "gpu": ("gpu", 1, "auto", "bf16-mixed", 1.0e-5),
    "ddp": ("gpu", 2, "ddp", "bf16-mixed", 1.0e-5),
    "fsdp": ("gpu", 2, "rt_lab.train.fsdp.LayerWrappedFSDP", "bf16-mixed", 1.0e-5),
}


def check_trainer(cfg: DictConfig, option: str) -> None:
    import torch

    trainer = cfg.trainer
    lightning = trainer.lightning
    assert lightning._target_ == "lightning.Trainer"
    optimizer = instantiate(trainer.optimizer)
    assert isinstance(optimizer, functools.partial) and optimizer.func is torch.optim.AdamW
    # one optimizer step = batch_size rows, split evenly over micro-batches and devices
    assert cfg.data.batch_size % (cfg.data.micro_batch_size * lightning.devices * lightning.num_nodes) == 0
    assert trainer.schedule.name in ("linear", "cosine", "constant")
    if option in TRAINERS:
        expected = TRAINERS[option]
        strategy = lightning.strategy if isinstance(lightning.strategy, str) else lightning.strategy._target_
        actual = (lightning.accelerator, lightning.devices, strategy, lightning.precision,
                  optimizer.keywords["lr"])
        assert actual == expected
    if option == "fsdp":  # the strategy config builds (its layers resolve on the model: tests/test_fsdp.py)
        strategy = instantiate(lightning.strategy)
        assert (strategy.layers, strategy.activation_checkpointing, strategy._state_dict_type) == (None, False, "full")


def check_judge(cfg: DictConfig, option: str) -> None:
    from hydra.utils import get_class

    from rt_lab.judges import Judge

    assert cfg.judge.name == option and issubclass(get_class(cfg.judge._target_), Judge)
    assert "api_key" not in cfg.judge  # keys come from the environment only (judge.api_key_env names one)
    if cfg.judge.get("model") is not None and not isinstance(cfg.judge.model, str):  # in-process: a `model/` config
        check_model(OmegaConf.create({"model": cfg.judge.model}), cfg.judge.model.name)


CHECKS = {
    "adapter": check_adapter,
    "judge": check_judge,
    "data": check_data,
    "dataset": check_dataset,
    "debug": check_debug,
    "generation": check_generation,
    "logger": check_logger,
    "method": check_method,
    "model": check_model,
    "paths": check_paths,
    "prompts": check_prompts,
    "template": check_template,
    "trainer": check_trainer,
}


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes(compose, monkeypatch, group, option):
    for var in ("RT_LAB_DATA_DIR", "RT_LAB_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    cfg = compose([f"{group}={option}"])
    assert cfg.hydra.runtime.choices[group] == option
    assert group in cfg or group == "debug"  # debug is `# @package _global_`
    # every interpolation outside hydra's node resolves (run.name, logger tags, the resolvers)
    for key in cfg:
        if key != "hydra" and isinstance(cfg[key], DictConfig):
            OmegaConf.to_container(cfg[key], resolve=True)
    rules = f"[{','.join(cfg.rules.enabled)}]" if cfg.rules.enabled else ""
    assert cfg.run.name == f"{cfg.model.name}-{cfg.method.name}{rules}-{cfg.dataset.name}-seed{cfg.trainer.seed}"
    check = CHECKS.get(group)
    if check is None:  # a group added after these tests: it must at least compose to something
        assert cfg.get(group) is not None
    else:
        check(cfg, option)


def test_embedded_default(compose, monkeypatch):
    monkeypatch.delenv("RT_LAB_DATA_DIR", raising=False)
    cfg = compose()
    choices = cfg.hydra.runtime.choices
    assert (choices.model, choices.dataset, choices.method, choices.template, choices.adapter, choices.trainer,
            choices.prompts, choices.logger) == ("smollm2_135m", "sample", "rt", "tags", "lora", "cpu", "sample",
                                                 "wandb")
    assert choices.get("debug") is None and choices.get("sweeps") is None
    assert cfg.run.name == "smollm2_135m-rt-sample-seed1"


def test_prompts_file_requires_a_path(compose):
    from rt_lab.config.validate import ConfigError, validate

    with pytest.raises(ConfigError, match="prompts.file=None: no source at all"):
        validate(compose(["prompts=file"]), files=False)
    cfg = compose(["prompts=file", "prompts.file=/some/where.jsonl"])
    assert cfg.prompts.file == "/some/where.jsonl" and cfg.prompts.format == "instruction"


# --- sweep presets ---------------------------------------------------------------------------------------------

SWEEP_PRESETS = sorted((REPO / "sweeps").glob("*.yaml"))


def test_sweeps_dir_exists():
    assert (REPO / "sweeps").is_dir()


@pytest.mark.parametrize("preset", SWEEP_PRESETS or [None],
                         ids=[p.stem for p in SWEEP_PRESETS] or ["no-presets-yet"])
def test_sweep_preset_composes(compose, monkeypatch, preset):
    if preset is None:  # guard: an empty glob still collects a test, which checks where presets go
        assert (REPO / "sweeps").is_dir()
        assert compose().hydra.runtime.choices.get("sweeps") is None
        return
    monkeypatch.delenv("RT_LAB_DATA_DIR", raising=False)
    cfg = compose([f"sweeps={preset.stem}"])
    assert cfg.hydra.runtime.choices.sweeps == preset.stem
    choices = cfg.hydra.runtime.choices
    for group in ("model", "dataset", "method", "template", "adapter", "trainer", "prompts"):
        assert (CONF / group / f"{choices[group]}.yaml").is_file(), f"{group}={choices[group]}"
    assert cfg.model.name == choices.model and cfg.dataset.name == choices.dataset
    assert cfg.method.name == method_name(cfg.method, choices.method)
    for key in cfg:
        if key != "hydra" and isinstance(cfg[key], DictConfig):
            OmegaConf.to_container(cfg[key], resolve=True)


def test_the_presets_of_hewitt_et_als_remaining_experiments_and_the_refusal_mix(compose, monkeypatch):
    """Their scripts' settings: no_rephrase_expt (OLMo, lr 3e-6, IT 15 / RT 7 epochs, 5 seeds) and
    expt3_llama/finetune_gsm_checkpoint.sh (Llama-2, lr 1e-5, GSM for 10 epochs, every epoch, seed 1, against the
    LIMA IT run); An et al.'s refusal mix pairs RT with the IT run of the same mix and evaluates safety."""
    monkeypatch.delenv("RT_LAB_DATA_DIR", raising=False)
    rephrase = compose(["sweeps=h_no_rephrase"])
    assert (rephrase.model.name, rephrase.dataset.name, rephrase.trainer.optimizer.lr) == \
        ("olmo_7b", "lima_rephrased", 3e-6)
    assert rephrase.dataset.mirror.file == "hewitt/lima/lima_rephrased.jsonl"
    assert [list(arm) for arm in rephrase.hydra.sweeper.paired] == [
        ["method=it", "trainer.lightning.max_epochs=15"], ["method=rt", "trainer.lightning.max_epochs=7"]]
    assert rephrase.hydra.sweeper.params["trainer.seed"] == "1,2,3,4,5"
    gsm = compose(["sweeps=h_gsm_epochs"])
    assert (gsm.model.name, gsm.method.name, gsm.dataset.name, gsm.trainer.optimizer.lr, gsm.trainer.seed) == \
        ("llama2_7b", "single_task", "gsm8k", 1e-5, 1)
    assert (gsm.trainer.lightning.max_epochs, list(gsm.generation.at_epochs)) == (10, list(range(1, 11)))
    assert dict(gsm.compare.reference.select) == {"method": "it", "dataset": "lima"}
    mix = compose(["sweeps=a_refusal_mix"])
    assert mix.eval.safety.classifier == "judge" and "dataset.refusal_mix" in mix.compare.reference.match
    assert mix.compare.paper_table == "a_tables15_16"


def test_each_papers_presets_train_with_its_loss_normalisation(compose, monkeypatch):
    """Hewitt et al.: open-instruct's reduce_loss=mean (every row weighs the same); An et al.: the Hugging Face
    Trainer of their TRL SFTTrainer before transformers 4.46 (each micro-batch's token mean, averaged over the 8
    accumulation steps of 64 rows in micro-batches of 8)."""
    monkeypatch.delenv("RT_LAB_DATA_DIR", raising=False)
    for preset in SWEEP_PRESETS:
        cfg = compose([f"sweeps={preset.stem}"])
        if not cfg.method.train:
            continue
        expected = {"h_": "sequence", "a_": "micro_batch"}.get(preset.stem[:2], "token")
        assert cfg.trainer.loss_normalization == expected, preset.stem
        if expected == "micro_batch":
            assert (cfg.data.batch_size, cfg.data.micro_batch_size) == (64, 8), preset.stem


def test_sweeps_group_resolves_through_rt_lab_root(compose, monkeypatch, tmp_path):
    """`sweeps=NAME` finds <RT_LAB_ROOT>/sweeps/NAME.yaml via hydra.searchpath (shown with a temp root)."""
    root = tmp_path / "root"
    (root / "sweeps").mkdir(parents=True)
    (root / "sweeps" / "probe.yaml").write_text("# @package _global_\ntrainer:\n  seed: 77\n")
    monkeypatch.setenv("RT_LAB_ROOT", str(root))
    cfg = compose(["sweeps=probe"])
    assert cfg.trainer.seed == 77
    assert cfg.run.name.endswith("-seed77")
    assert cfg.hydra.runtime.choices.sweeps == "probe"
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="no_such_preset"):
        compose(["sweeps=no_such_preset"])


# --- the papers' settings --------------------------------------------------------------------------------------


def test_paper_facts(compose):
    assert compose(["method=rt"]).method.user_turns == "blank"
    assert compose(["method=it"]).method.user_turns == "keep"
    assert compose(["method=full"]).method.loss_on == "all"
    assert compose(["method=single_task"]).method.requires_single_task is True

    assert compose(["dataset=gsm8k"]).dataset.limit == 1000
    mbpp = compose(["dataset=mbpp"]).dataset
    assert list(mbpp.mirror.where.task_id) == [601, 974]
    assert mbpp.mirror.file == "mbpp/mbpp.jsonl"
    lima = compose(["dataset=lima"]).dataset
    assert (lima.limit, lima.max_messages) == (None, None)  # Hewitt et al.: all 1,030 conversations

    qlora = compose(["adapter=qlora"]).adapter
    assert (qlora.lora.r, qlora.lora.lora_alpha, qlora.lora.lora_dropout) == (64, 16, 0.1)
    assert qlora.lora.target_modules == "all-linear"  # inherited from lora
    assert qlora.lora.task_type == "CAUSAL_LM"
    assert qlora.quantization.load_in_4bit is True
    assert qlora.quantization.bnb_4bit_quant_type == "nf4"
    assert qlora.quantization.bnb_4bit_use_double_quant is True
    assert qlora.quantization.bnb_4bit_compute_dtype == "bfloat16"

    assert compose(["model=llama2_7b"]).model.pad_token == "<unk>"
    assert compose(["model=gemma2_2b"]).model.attn_implementation == "eager"
    assert compose(["model=gemma2_9b"]).model.attn_implementation == "eager"


# --- run dirs --------------------------------------------------------------------------------------------------


def test_run_dir_format(compose):
    first = compose()
    second = compose()
    for cfg in (first, second):
        run = RUN_DIR.search(cfg.hydra.run.dir)
        sweep = SWEEP_DIR.search(cfg.hydra.sweep.dir)
        assert run, cfg.hydra.run.dir
        assert sweep, cfg.hydra.sweep.dir
        assert cfg.hydra.run.dir.startswith(cfg.paths.output_dir + "/runs/")
        # one launch: run and sweep dir share the timestamp and the suffix, and re-reading gives the same value
        assert run.groups() == sweep.groups()
        assert cfg.hydra.run.dir == cfg.hydra.run.dir
    assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"] == "${hydra.job.num}"  # one subdir per job


COMPOSE_AND_PRINT = textwrap.dedent(
    """
    import rt_lab
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(config_dir={conf!r}, version_base="1.3"):
        cfg = compose("config", return_hydra_config=True)
    print(cfg.hydra.run.dir)
    """
)


def test_run_dirs_of_two_launches_differ(tmp_path):
    env = {**os.environ, "RT_LAB_ROOT": str(REPO), "RT_LAB_OUTPUT_DIR": str(tmp_path)}
    code = COMPOSE_AND_PRINT.format(conf=str(CONF))
    launches = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
    dirs = []
    for launch in launches:
        out, err = launch.communicate(timeout=120)
        assert launch.returncode == 0, err
        dirs.append(out.strip().splitlines()[-1])
    for run_dir in dirs:
        assert run_dir.startswith(f"{tmp_path}/runs/")
        assert RUN_DIR.search(run_dir), run_dir
    assert dirs[0] != dirs[1]
    assert RUN_DIR.search(dirs[0]).group(2) != RUN_DIR.search(dirs[1]).group(2)


def test_uid_resolver_is_cached_per_config():
    one = OmegaConf.create({"a": "${rt_lab.uid:}", "b": "x_${rt_lab.uid:}"})
    two = OmegaConf.create({"a": "${rt_lab.uid:}"})
    assert re.fullmatch(r"[0-9a-f]{6}", one.a)
    assert one.a == one.a
    assert one.b == f"x_{one.a}"  # cached: every use in one config sees the same value
    assert re.fullmatch(r"[0-9a-f]{6}", two.a)
    assert one.a != two.a  # a fresh config draws anew (collision chance 1 in 16.7 million)
