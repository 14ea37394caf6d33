"""`judge/`: the pairwise judge of win rates (rt_lab/judges/), also the backend that rewrites training responses
(dataset/refine) and judges refusals (eval.safety.judge)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from rt_lab.config.checks import ConfigValueError, at_least, one_of, registered
from rt_lab.config.model import ModelConfig


@dataclass
class JudgeConfig:
    _target_: str = MISSING
    """The judge's class (rt_lab/judges/backends.py)."""
    name: str = MISSING
    """The judge's short name, part of every cache key of what it judged or wrote."""
    protocol: str = "rt_lab"
    """How a pair is put (rt_lab/judges/protocols.py): alpaca_eval (an AlpacaEval annotator, as the papers) or
    rt_lab (rt_lab's own prompt)."""
    annotator: Optional[str] = "weighted_alpaca_eval_gpt4_turbo"
    """protocol=alpaca_eval: one of the alpaca_eval package's evaluators_configs."""
    both_orders: bool = True
    """Judge (reference, model) and (model, reference) and average (cancels the position bias; twice the calls);
    false: the protocol's one order, as AlpacaEval."""

    def check(self) -> None:
        registered("protocol", self.protocol, "rt_lab.judges.protocols:PROTOCOLS")

    def preflight(self, reach_server: bool) -> None:
        """What the judge needs from its surroundings when it is used, checked at launch (rt_lab/preflight.py)
        and again before a comparison judges: a `ConfigValueError` naming the key and the fix. `reach_server`:
        one cheap request to a judge behind a server. A judge in this process needs nothing."""


@dataclass
class OpenAIJudgeConfig(JudgeConfig):
    """Any OpenAI-compatible chat-completions server (OpenAI, vLLM, transformers serve)."""

    _target_: str = "rt_lab.judges.backends.OpenAIJudge"
    name: str = "openai"
    base_url: str = "https://api.openai.com/v1"
    """The server's base URL."""
    model: str = "gpt-4-1106-preview"
    """The served model's name."""
    api_key_env: str = "OPENAI_API_KEY"
    """The NAME of the environment variable holding the key (never the key); a server without auth: any set
    variable, e.g. one holding EMPTY."""
    scoring: str = "logprobs"
    """logprobs (weighted, from the top log-probabilities) or text (the label the reply spells)."""
    max_concurrency: int = 4
    """Requests in flight."""
    max_retries: int = 5
    """Per request, on HTTP 429/5xx, timeouts and connection errors."""
    backoff_s: float = 1.0
    """The first retry waits backoff_s * (1..2), doubling each retry."""
    timeout_s: float = 60.0
    """Per request."""
    max_calls: int = 2000
    """Spend cap: HTTP requests per run, retries included."""

    def check(self) -> None:
        super().check()
        one_of("scoring", self.scoring, ("logprobs", "text"))
        for key in ("max_concurrency", "max_calls"):
            at_least(key, getattr(self, key), 1)
        for key in ("max_retries", "backoff_s"):
            at_least(key, getattr(self, key), 0)

    def preflight(self, reach_server: bool) -> None:
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ConfigValueError("api_key_env", self.api_key_env, f"the environment variable {self.api_key_env} is "
                                   f"not set; export {self.api_key_env}=<key> where you launch (a server without "
                                   f"authentication: {self.api_key_env}=EMPTY)")
        if reach_server:
            from rt_lab.judges.backends import probe_server

            problem = probe_server(self.base_url, key, min(self.timeout_s, 10.0))
            if problem:
                raise ConfigValueError("base_url", self.base_url, f"{problem}; start the server, or fix the URL or "
                                       f"the key in {self.api_key_env} (a launch without network: "
                                       "hydra.launcher.reach_servers=false; the comparison checks again before it "
                                       "judges)")


@dataclass
class LocalJudgeConfig(JudgeConfig):
    """A chat model in this process, read from its full next-token distribution."""

    _target_: str = "rt_lab.judges.backends.HFLocalJudge"
    name: str = "hf_local"
    model: ModelConfig = MISSING
    """A `model/` config: model@judge.model=NAME, or judge.model.local_path=DIR."""
    cache_dir: Optional[str] = "${paths.cache_dir}"
    """Where converted models are cached."""
    max_length: int = 4096
    """Longer judge prompts are unparsable (counted), not truncated."""

    def check(self) -> None:
        super().check()
        at_least("max_length", self.max_length, 1)
