"""The declared configuration (rt_lab/config/): every group typed by its schema, unknown keys and wrong types refused
at composition, bad values refused by validation naming the key, and, at launch, every job of a sweep validated
before any starts (a real `launch.py -m` in a fresh process, as a user types it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from helpers import REPO
from rt_lab.config.adapter import AdapterConfig
from rt_lab.config.compare import CompareConfig
from rt_lab.config.data import DataConfig
from rt_lab.config.dataset import DatasetConfig
from rt_lab.config.generation import GenerationConfig
from rt_lab.config.judge import LocalJudgeConfig, OpenAIJudgeConfig
from rt_lab.config.logger import LoggerConfig
from rt_lab.config.method import MethodConfig
from rt_lab.config.model import ModelConfig
from rt_lab.config.paths import PathsConfig
from rt_lab.config.root import RootConfig
from rt_lab.config.rules import RulesConfig
from rt_lab.config.source import PromptsConfig
from rt_lab.config.template import ChatTemplateConfig, TagTemplateConfig
from rt_lab.config.trainer import TrainerConfig
from rt_lab.config.validate import ConfigError, validate

GROUP_SCHEMAS = {"paths": PathsConfig, "model": ModelConfig, "dataset": DatasetConfig, "rules": RulesConfig,
                 "method": MethodConfig, "adapter": AdapterConfig, "data": DataConfig, "trainer": TrainerConfig,
                 "generation": GenerationConfig, "prompts": PromptsConfig, "logger": LoggerConfig,
                 "compare": CompareConfig}


def test_every_group_of_the_default_config_is_typed_by_its_schema(compose):
    cfg = compose([])
    for group, schema in GROUP_SCHEMAS.items():
        assert OmegaConf.get_type(cfg[group]) is schema, group
    assert OmegaConf.get_type(cfg.template) is TagTemplateConfig
    assert OmegaConf.get_type(cfg.judge) is LocalJudgeConfig
    assert OmegaConf.get_type(cfg.judge.model) is ModelConfig
    assert isinstance(validate(cfg), RootConfig)


@pytest.mark.parametrize("overrides,node,schema", [
    (["template=chat"], "template", ChatTemplateConfig),
    (["template=tulu"], "template", TagTemplateConfig),
    (["judge=openai"], "judge", OpenAIJudgeConfig),
    (["dataset/refine=openai"], "dataset.refine.backend", OpenAIJudgeConfig),
    (["dataset/refine=hf_local"], "dataset.refine.backend", LocalJudgeConfig),
])
def test_groups_whose_options_differ_in_shape_take_each_options_schema(compose, overrides, node, schema):
    assert OmegaConf.get_type(OmegaConf.select(compose(overrides), node)) is schema


@pytest.mark.parametrize("override,names", [
    ("model.dtyp=float32", "dtyp"),  # a typo'd key
    ("generation.max_new_tokens=many", "max_new_tokens"),  # a wrong type
    ("data.packing=maybe", "packing"),
    ("generation.at_epochs=5", "at_epochs"),
    ("rules.diversity.penalty=high", "penalty"),
    ("judge.both_orders=sometimes", "both_orders"),
])
def test_unknown_keys_and_wrong_types_do_not_compose(compose, override, names):
    with pytest.raises(ConfigCompositionException) as err:
        compose([override])
    assert names in str(err.value) + str(err.value.__cause__)


@pytest.mark.parametrize("overrides,message", [
    (["generation.max_new_tokens=-5"], "generation.max_new_tokens=-5: must be at least 1"),
    (["generation.top_p=0"], "generation.top_p=0"),
    (["generation.min_new_tokens=300"], "exceeds generation.max_new_tokens=256"),
    (["generation.device=tpu"], "generation.device='tpu'"),
    (["generation.backend=trt"], "generation.backend='trt': not a registered generation backend"),
    (["trainer.optimizer.lr=abc"], "trainer.optimizer.lr='abc': must be a number"),
    (["trainer.schedule.name=cosyne"], "trainer.schedule.name='cosyne'"),
    (["trainer.schedule.warmup_ratio=1.0"], "warmup_ratio=1.0: must be in [0.0, 1.0)"),
    (["trainer.loss_normalization=mean"], "trainer.loss_normalization='mean': not a registered loss normalization"),
    (["trainer.checkpoint_every_n_steps=0"], "trainer.checkpoint_every_n_steps=0"),
    (["method.user_turns=erase"], "method.user_turns='erase': not a registered user-turn transform"),
    (["method.loss_on=half"], "method.loss_on='half'"),
    (["adapter.export=zip"], "adapter.export='zip': not a registered adapter export"),
    (["model.dtype=fp8"], "model.dtype='fp8': expected one of"),
    (["model.bos=sometimes"], "model.bos='sometimes'"),
    (["rules.enabled=[eos_ramp,eos]"], "rules.enabled='eos': not a registered rule"),
    (["rules.diversity.scope=all"], "rules.diversity.scope='all'"),
    (["data.micro_batch_size=0"], "data.micro_batch_size=0"),
    (["dataset.format=qa"], "dataset.format='qa': not a registered record format"),
    (["dataset.refusal_mix=-1"], "dataset.refusal_mix=-1"),
    (["judge=openai", "judge.scoring=words"], "judge.scoring='words'"),
    (["judge.protocol=mine"], "judge.protocol='mine': not a registered judge protocol"),
    (["compare.length_controlled=maybe"], "compare.length_controlled='maybe'"),
    (["compare.reference.multiple=any"], "compare.reference.multiple='any'"),
    (["compare.paper_table=h_table9"], "compare.paper_table='h_table9'"),
    (["logger=wandb", "logger.wandb.mode=cloud"], "logger.wandb.mode='cloud'"),
    (["eval=safety", "eval.safety.unclassified=drop"], "eval.safety.unclassified='drop'"),
    (["eval=safety", "eval.safety.sets=[advbench,nope]"], "['nope'] are not in eval.safety.catalog"),
    (["eval=safety", "eval.safety.catalog.advbench.role=evil"], "eval.safety.catalog.advbench.role='evil'"),
    (["method=single_task", "dataset=lima"], "dataset=lima is not a single-task dataset"),
    (["trainer=ddp", "data.batch_size=3"], "data.batch_size=3 is not divisible by the world size 2"),
    (["generation.at_epochs=[30]", "trainer.lightning.max_epochs=20"], "[30] outside 1..trainer.lightning"),
    (["prompts=file"], "prompts.file=None: no source at all"),
])
def test_bad_values_are_refused_naming_the_key_and_why(compose, overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(compose(overrides), files=False)
    assert message in str(err.value)


def test_what_must_exist_is_checked_when_asked(compose, tmp_path):
    for overrides, message in [(["dataset.file=/nope/rows.jsonl"], "dataset.file=/nope/rows.jsonl: no such file"),
                               (["prompts=file", "prompts.file=/nope.jsonl"], "prompts.file=/nope.jsonl"),
                               (["paths.data_dir=/nope"], "paths.data_dir=/nope: no such folder"),
                               (["compare.reference.sweep=/nope"], "compare.reference.sweep=/nope: no such sweep"),
                               ([f"paths.data_dir={tmp_path}", "dataset=lima"], "lima_data.jsonl does not exist"),
                               ([f"dataset.file={tmp_path}"], f"dataset.file={tmp_path}: is a folder; give a file")]:
        with pytest.raises(ConfigError) as err:
            validate(compose(overrides))
        assert message in str(err.value), overrides
        validate(compose(overrides), files=False)  # the values themselves are fine


# --- at launch: every job of a sweep, before any starts ------------------------------------------------------

BAD_AT_LAUNCH = [
    (["trainer.optimizr.lr=1"], "Key 'optimizr' not in 'TrainerConfig'"),  # a typo'd key: no job composes
    (["trainer.optimizer.lr=abc"], "trainer.optimizer.lr='abc': must be a number"),
    (["generation.max_new_tokens=-5"], "generation.max_new_tokens=-5: must be at least 1"),
    (["generation.at_epochs=[30]", "trainer.lightning.max_epochs=20"], "[30] outside 1..trainer.lightning"),
    (["dataset.file=/nope/rows.jsonl"], "dataset.file=/nope/rows.jsonl: no such file"),
    (["prompts=file", "prompts.file=/nope/prompts.jsonl"], "prompts.file=/nope/prompts.jsonl: no such file"),
    (["compare.reference.sweep=/nope/sweep"], "compare.reference.sweep=/nope/sweep: no such sweep dir"),
]


def launch_fails(args: list[str], cwd) -> str:
    env = dict(os.environ, RT_LAB_OUTPUT_DIR=str(cwd / "outputs"))
    done = subprocess.run([sys.executable, str(REPO / "launch.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode != 0, done.stdout[-2000:]
    return done.stdout + done.stderr


@pytest.mark.parametrize("bad,message", BAD_AT_LAUNCH, ids=[bad[0].split("=")[0] for bad, _ in BAD_AT_LAUNCH])
def test_a_bad_value_stops_a_three_job_sweep_before_any_job_starts(tmp_path, bad, message):
    sweep = tmp_path / "sweep"
    out = launch_fails(["-m", "method=rt,it,base", "model=tiny", "logger=csv", f"hydra.sweep.dir={sweep}", *bad],
                       tmp_path)
    assert message in out
    jobs = "#0 (method=rt" in out and "#1 (method=it" in out
    assert jobs or "does not compose" in out or "Could not override" in out
    assert not any(path.name.isdigit() for path in sweep.glob("*")), "a job started"  # no job dir at all
    assert not (tmp_path / "outputs").exists()


def test_a_dry_run_names_the_one_bad_job(tmp_path):
    out = launch_fails(["-m", "model=tiny", "method=rt,it", "trainer.optimizer.lr=1e-4,abc", "logger=csv",
                        "hydra.launcher.dry_run=true", f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert "2 of the 4 jobs to run have an invalid config; nothing was launched" in out
    assert "#1 (model=tiny method=rt trainer.optimizer.lr=abc logger=csv)" in out
    assert "#3 (model=tiny method=it trainer.optimizer.lr=abc logger=csv)" in out
    assert "#0 (" not in out and "#2 (" not in out


def test_the_configuration_reference_is_generated_from_the_schemas_and_current():
    """docs/configuration.md is `python -m rt_lab.config.reference`'s output; a schema change without it fails."""
    from rt_lab.config.reference import reference

    assert (REPO / "docs" / "configuration.md").read_text(encoding="utf-8") == reference(), \
        "stale: python -m rt_lab.config.reference docs/configuration.md"
    text = reference()
    assert "| `generation.max_new_tokens` | int | `256` | The longest answer, in new tokens. |" in text
    assert "`judge` — OpenAIJudgeConfig" in text and "`eval.safety` — SafetyConfig" in text


# --- one console command -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command,expected", [
    ([], "run         a run, or a sweep with -m"),
    (["compare"], "usage: rt-lab compare [-h] [--pick-epoch] sweep_dir"),
    (["human"], "usage: rt-lab human [-h] {serve,report,raters}"),
    (["analyze"], "usage: rt-lab analyze [-h] [--task TASK]"),
    (["safety"], "usage: rt-lab safety [-h] {validate-keyword}"),
    (["reference"], "usage: rt-lab reference [-h] [--check] path"),
    (["run"], "== Configuration groups =="),
])
def test_every_command_answers_help_under_rt_lab(command, expected):
    import shutil

    executable = shutil.which("rt-lab") or pytest.fail("rt-lab is not on PATH: pip install -e . installs it")
    done = subprocess.run([executable, *command, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert expected in done.stdout


def test_rt_lab_run_is_python_launch_py(tmp_path):
    """The same Hydra application: the same composed config, printed by either."""
    import shutil

    printed = []
    for command in ([shutil.which("rt-lab"), "run"], [sys.executable, str(REPO / "launch.py")]):
        done = subprocess.run([*command, "--cfg", "job", "method=it", "model=tiny"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        printed.append(done.stdout)
    assert printed[0] == printed[1] and "name: it" in printed[0]
