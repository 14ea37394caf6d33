"""The `openai` judge against a real `transformers serve` process (transformers' own OpenAI-compatible server)
serving SmolLM2-135M-Instruct on loopback, as a new user would try it. That server returns no log-probabilities:
judge.scoring=logprobs must stop at its first reply with an error naming the server and the fix, and
judge.scoring=text must judge. SmolLM2 is a weak judge, so the mechanics are checked, not its verdicts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Iterator

import pytest

from rt_lab.judges.backends import NoLogprobs
from rt_lab.judges import OpenAIJudge, judge_pairs

KEY_ENV = "RT_LAB_TEST_SERVE_KEY"  # transformers serve has no authentication; the client still wants a key
READY_S = 180  # model load + server start; seen ~10 s on 2 shared cores
PAIRS = (["Name a primary colour.", "What is 2 + 2?", "Translate 'bonjour' into English."],
         ["Red.", "4", "Hello."], ["A colour.", "5", "Goodbye."])


def free_port() -> int:
    try:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    except OSError as err:  # a sandbox without loopback sockets: nothing rt_lab can change
        pytest.skip(f"cannot bind a loopback port here ({err})")


@pytest.fixture(scope="module")
def serve(smollm2_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`transformers serve SMOLLM2_DIR` on 127.0.0.1 (the folder pins the model: requests must name it); its base
    URL once it answers, terminated afterwards whatever happens."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", smollm2_path, "--host", "127.0.0.1",
               "--port", str(port), "--device", "cpu", "--log-level", "warning"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + READY_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"transformers serve exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not answer within {READY_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def make_judge(url: str, model: str, **options) -> OpenAIJudge:
    return OpenAIJudge(base_url=url, model=model, api_key_env=KEY_ENV, protocol="alpaca_eval", both_orders=False,
                       max_concurrency=1, max_retries=1, backoff_s=0.1, timeout_s=120, **options)


def test_logprobs_scoring_stops_at_the_first_reply_naming_server_and_fix(serve, smollm2_path, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setenv(KEY_ENV, "EMPTY")
    judge = make_judge(serve, smollm2_path)
    with pytest.raises(NoLogprobs) as raised:
        judge_pairs(judge, *PAIRS, tmp_path / "cache.jsonl")
    assert judge.calls == 1
    message = str(raised.value)
    assert serve in message and smollm2_path in message and "judge.scoring=text" in message
    assert not (tmp_path / "cache.jsonl").exists() or not (tmp_path / "cache.jsonl").read_text()


def test_text_scoring_judges_with_alpaca_evals_prompt(serve, smollm2_path, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "EMPTY")
    judge = make_judge(serve, smollm2_path, scoring="text")
    cache = tmp_path / "cache.jsonl"
    judgments = judge_pairs(judge, *PAIRS, cache)
    assert judge.calls == 3
    for judgment in judgments:
        # a label read from the text is a whole win or loss; anything else is counted unparsable, with the reply
        assert judgment.value in (1.0, 2.0) or (judgment.value is None and "the reply" in judgment.reason)
    # seen: SmolLM2 answers "The best model identifier is: m." (the first output shown): parsed, not unparsable
    assert any(judgment.value is not None for judgment in judgments)
    assert len(cache.read_text().splitlines()) == 3
    assert judge_pairs(make_judge(serve, smollm2_path, scoring="text"), *PAIRS, cache) == judgments
