"""`generation/`: how a run answers its prompts (rt_lab/generate/): greedy by default, with the KV cache and
continuous batching of rt_lab's own loop, or vLLM; resumable."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from rt_lab.config.checks import ConfigValueError, at_least, registered


@dataclass
class GenerationConfig:
    backend: str = "hf"
    """hf (rt_lab's decoding loop over the transformers model) or vllm (rt_lab/generate/backends.py)."""
    max_new_tokens: int = 256
    """The longest answer, in new tokens."""
    min_new_tokens: Optional[int] = None
    """Decode at least this many tokens (EOS blocked until then)."""
    batch_size: int = 16
    """Rows decoding at once (refilled as rows finish); vllm: prompts per engine call."""
    device: str = "auto"
    """hf backend: auto (the first GPU if any, else the CPU), cpu or cuda:N."""
    instruction_prefix: str = ""
    """Read before every eval instruction (Hewitt et al.'s --instruction_prefix); model_outputs.json keeps the
    plain instruction. Quote it on the command line: 'generation.instruction_prefix="Answer briefly. "'."""
    do_sample: bool = False
    """Sample instead of greedy decoding."""
    temperature: float = 1.0
    """Sampling temperature (do_sample=true)."""
    top_p: float = 1.0
    """Nucleus sampling mass (do_sample=true)."""
    stop: list[str] = field(default_factory=lambda: "${method.stop}")  # type: ignore[arg-type,return-value]
    """Cut every output before the first of these strings (decoding stops there too); method=icl sets URIAL's."""
    strip: Optional[str] = "${method.strip}"
    """null: outputs as decoded; a string: outputs stripped of whitespace, then of these characters at their end."""
    at_epochs: Optional[list[int]] = None
    """Epoch selection (Hewitt et al.): also answer at the end of these epochs of the one training run, e.g.
    [5,7,10,15,20] with max_epochs 20; outputs in <run_dir>/epochs/<N>/."""
    vllm: dict[str, Any] = field(default_factory=lambda: {"enforce_eager": False})
    """generation.backend=vllm: vllm.LLM's arguments, which win over rt_lab's (dtype=model.dtype, the rule head);
    enforce_eager: true skips torch.compile (a CPU engine starts ~70 s sooner). Add any with
    +generation.vllm.NAME=VALUE."""

    def check(self) -> None:
        registered("backend", self.backend, "rt_lab.generate.backends:BACKENDS")
        at_least("max_new_tokens", self.max_new_tokens, 1)
        at_least("min_new_tokens", self.min_new_tokens, 0)
        at_least("batch_size", self.batch_size, 1)
        at_least("temperature", self.temperature, 0)
        if not 0 < self.top_p <= 1:
            raise ConfigValueError("top_p", self.top_p, "must be in (0, 1]")
        if self.min_new_tokens and self.min_new_tokens > self.max_new_tokens:
            raise ConfigValueError("min_new_tokens", self.min_new_tokens,
                                   f"exceeds generation.max_new_tokens={self.max_new_tokens}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigValueError("device", self.device, "expected auto, cpu or cuda[:N]")
