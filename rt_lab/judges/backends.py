"""The built-in judges: `openai`, any OpenAI-compatible chat-completions server (OpenAI, vLLM, `transformers
serve`, ...), and `hf_local`, a chat model in this process. Both follow a pairwise protocol (rt_lab.judges.protocols,
`judge.protocol`) and can generate a reasoned answer (`Judge.generate`) for judges that think before they decide.

`openai` reads a label two ways (`judge.scoring`): `logprobs`, the two labels' probability mass among the answer's
top log-probabilities (AlpacaEval 2's weighted annotators), or `text`, the label the answer spells (for servers
that return no log-probabilities, as AlpacaEval's non-weighted annotators read theirs). With `logprobs`, a reply
without log-probabilities stops the run at once: every other one would be unparsable too."""

from __future__ import annotations

import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from rt_lab.judges.base import (Judge, JudgeError, Judgment, LogprobReader, Messages, Reply, SpendCapExceeded,
                               label_verdict, text_verdict)
from rt_lab.judges.protocols import LABELS, build_protocol

SCORINGS = ("logprobs", "text")
TEXT_MAX_TOKENS = 16  # scoring=text: room for a short sentence around the label ("The best model is: m.")


class NoLogprobs(JudgeError):
    """A 200 reply without `logprobs`: the server does not return them (transformers serve, some proxies)."""


def parse_reply(body: str, labels: tuple[str, str] = LABELS, read: LogprobReader | None = None) -> Judgment:
    """The verdict in a chat-completions body, read from the first token's top logprobs by `read` (default
    `label_verdict`). Raises NoLogprobs when the reply carries none at all."""
    try:
        reply = json.loads(body)
    except json.JSONDecodeError as err:
        return Judgment(None, f"reply body is not JSON ({err.msg})")
    try:
        choice = reply["choices"][0]
    except (KeyError, IndexError, TypeError):
        return Judgment(None, "reply has no choices[0]")
    if isinstance(choice, dict) and choice.get("logprobs") is None:
        raise NoLogprobs("the reply has no logprobs")
    try:
        top = [(entry["token"], float(entry["logprob"])) for entry in choice["logprobs"]["content"][0]["top_logprobs"]]
    except (KeyError, IndexError, TypeError, AttributeError, OverflowError, ValueError):
        return Judgment(None, "reply has no choices[0].logprobs.content[0].top_logprobs with token/logprob entries")
    return read(top) if read else label_verdict(top, labels)


def reply_text(body: str) -> Reply:
    try:
        text = json.loads(body)["choices"][0]["message"]["content"]
    except (json.JSONDecodeError, KeyError, IndexError, TypeError):
        return Reply(None, "reply has no choices[0].message.content")
    return Reply(text) if isinstance(text, str) else Reply(None, "choices[0].message.content is not text")


def probe_server(base_url: str, api_key: str, timeout_s: float = 10.0) -> str | None:
    """One cheap request to an OpenAI-compatible server (GET /models, which costs no tokens): None when it answers
    and takes the key, else what is wrong. Any other answer counts as reachable: some servers serve no /models."""
    request = urllib.request.Request(f"{base_url.rstrip('/')}/models", headers={"Authorization": f"Bearer {api_key}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return None
    except urllib.error.HTTPError as err:
        return f"the server refuses the key (HTTP {err.code})" if err.code in (401, 403) else None
    except (urllib.error.URLError, OSError) as err:
        return f"no answer from {base_url} ({getattr(err, 'reason', None) or err})"


class OpenAIJudge(Judge):
    """Any OpenAI-compatible chat-completions server. The API key is read from the environment variable
    `api_key_env` names and is never logged or cached."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", protocol: str = "rt_lab",
                 annotator: str | None = None, both_orders: bool = True, scoring: str = "logprobs",
                 max_concurrency: int = 4, max_retries: int = 5, backoff_s: float = 1.0, timeout_s: float = 60.0,
                 max_calls: int = 2000) -> None:
        import openai

        if scoring not in SCORINGS:
            raise JudgeError(f"judge.scoring={scoring!r}; expected one of {list(SCORINGS)}")
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise JudgeError(f"judge.api_key_env={api_key_env}: the environment variable {api_key_env} is not set "
                             "(for a server without authentication set it to any value, e.g. EMPTY)")
        # retries are ours (backoff, spend cap), so the client's own are off
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout_s)
        self.base_url, self.model, self.scoring = base_url, model, scoring
        self.protocol = build_protocol(protocol, annotator)
        self.both_orders, self.max_concurrency = both_orders, max_concurrency
        self.max_retries, self.backoff_s, self.max_calls = max_retries, backoff_s, max_calls
        self.calls = 0  # HTTP requests sent by this judge, retries included: what the spend cap counts
        self._lock = threading.Lock()

    def identity(self) -> dict[str, Any]:
        return {"judge": "openai", "model": self.model, **self.protocol.identity, "both_orders": self.both_orders,
                "scoring": self.scoring}

    def _spend(self) -> None:
        with self._lock:
            if self.calls >= self.max_calls:
                raise SpendCapExceeded(f"judge.max_calls={self.max_calls} reached ({self.model} at {self.base_url})")
            self.calls += 1

    def _backoff(self, attempt: int) -> None:
        # jitter spreads the retries of concurrent workers that failed together
        time.sleep(self.backoff_s * 2 ** attempt * (1 + random.random()))

    def _ask(self, messages: Messages, **params: Any) -> tuple[str | None, str]:
        """The body of the server's greedy reply, or None and the transport failure after every retry."""
        import openai

        failure = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._backoff(attempt - 1)
            self._spend()
            try:
                raw = self.client.chat.completions.with_raw_response.create(
                    model=self.model, messages=messages, temperature=0, **params)
            except openai.APITimeoutError:
                failure = "timeout"
            except openai.APIConnectionError as err:
                failure = f"connection error ({err.__cause__ or err})"
            except (openai.RateLimitError, openai.InternalServerError) as err:
                failure = f"HTTP {err.status_code}"
            except openai.APIStatusError as err:
                # 400/401/404...: every other pair would fail the same way
                raise JudgeError(f"judge {self.model} at {self.base_url}: HTTP {err.status_code} ({err.message})") \
                    from err
            else:
                return raw.text, ""
        return None, f"{failure} on all {self.max_retries + 1} attempts"

    def choose(self, messages: Messages, labels: tuple[str, str], read: LogprobReader | None = None) -> Judgment:
        if self.scoring == "text":
            reply = self.generate(messages, TEXT_MAX_TOKENS)
            return Judgment(None, reply.reason, reply.final) if reply.text is None else text_verdict(reply.text, labels)
        body, failure = self._ask(messages, max_tokens=1, logprobs=True, top_logprobs=self.protocol.top_logprobs)
        if body is None:
            return Judgment(None, failure, final=False)
        try:
            return parse_reply(body, labels, read)
        except NoLogprobs as err:
            raise NoLogprobs(
                f"judge.scoring=logprobs, but the judge server {self.base_url} (model {self.model}) answered without "
                "logprobs: it does not return log-probabilities (`transformers serve` does not). Set "
                "judge.scoring=text to read the label from the reply's text, or serve the judge with a server "
                "that returns logprobs (vLLM, OpenAI)") from err

    def generate(self, messages: Messages, max_tokens: int) -> Reply:
        body, failure = self._ask(messages, max_tokens=max_tokens)
        return Reply(None, failure, final=False) if body is None else reply_text(body)


class HFLocalJudge(Judge):
    """A local chat model (`model`: a `model/` config) in this process. The answer's first-token distribution is
    read in full, so every token that spells a label is a candidate (no top-k cut)."""

    def __init__(self, model: Any, cache_dir: str | None = None, protocol: str = "rt_lab",
                 annotator: str | None = None, both_orders: bool = True, max_length: int = 4096) -> None:
        from rt_lab.models import load_model, load_tokenizer, resolve_path

        path = resolve_path(model, cache_dir)
        self.name = model.get("name_or_path") or model.name
        self.tokenizer = load_tokenizer(model, path)
        if not self.tokenizer.chat_template:
            raise JudgeError(f"judge.model={model.name}: its tokenizer has no chat template; a judge must be a "
                             "chat model")
        self.model = load_model(model, path).eval()
        self.protocol = build_protocol(protocol, annotator)
        self.both_orders, self.max_length = both_orders, max_length
        self.max_concurrency = 1  # one forward at a time: the model is not shared across threads
        self._label_ids: dict[tuple[str, str], list[int]] = {}

    def identity(self) -> dict[str, Any]:
        return {"judge": "hf_local", "model": self.name, **self.protocol.identity, "both_orders": self.both_orders}

    def label_ids(self, labels: tuple[str, str]) -> list[int]:
        """Every vocabulary id whose text is one of the labels up to surrounding whitespace."""
        if labels not in self._label_ids:
            vocab = range(len(self.tokenizer))
            texts = self.tokenizer.batch_decode([[i] for i in vocab])
            self._label_ids[labels] = [i for i, text in zip(vocab, texts) if text.strip() in labels]
        return self._label_ids[labels]

    def _prompt(self, messages: Messages) -> tuple[Any, str | None]:
        """The prompt's token ids on the model's device, or None and why it cannot be asked."""
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        if ids.shape[1] > self.max_length:
            return None, f"the judge prompt is {ids.shape[1]} tokens, over judge.max_length={self.max_length}"
        return ids.to(self.model.device), None

    def choose(self, messages: Messages, labels: tuple[str, str], read: LogprobReader | None = None) -> Judgment:
        import torch

        ids, reason = self._prompt(messages)
        if ids is None:
            return Judgment(None, reason)
        with torch.inference_mode():
            logits = self.model(input_ids=ids, logits_to_keep=1).logits[0, -1]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        top = [(self.tokenizer.decode([i]), float(logprobs[i])) for i in self.label_ids(labels)]
        return read(top) if read else label_verdict(top, labels)

    def generate(self, messages: Messages, max_tokens: int) -> Reply:
        import torch

        ids, reason = self._prompt(messages)
        if ids is None:
            return Reply(None, reason)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                      do_sample=False, pad_token_id=pad)
        return Reply(self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
