"""The OpenAI-compatible pairwise judge (rt_lab.judges) against a real HTTP server on loopback that speaks the
chat-completions schema with a canned judge: it always favours the output containing "GOOD", more so when that
output is shown first (a position bias both_orders must average out). Markers in an instruction make the server
misbehave (FAIL429x2, FAIL500x2, ALWAYS500, SLOW, NOLOGPROBS, NOLABELS, BADJSON). Both protocols: rt_lab's prompt,
and AlpacaEval's annotator checked against alpaca_eval's own annotator code as the oracle."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from judge_server import BAD, GOOD, KEY_ENV, SECRET, CannedJudgeServer
from rt_lab.judges.backends import NoLogprobs
from rt_lab.judges import JudgeError, OpenAIJudge, SpendCapExceeded, build_judge, judge_pairs, parse_reply
from rt_lab.alpaca_eval_compat import pkg_resources_for_alpaca_eval

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def server():
    canned = CannedJudgeServer()
    try:
        yield canned
    finally:
        canned.close()


@pytest.fixture
def make_judge(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)

    def _make(**overrides) -> OpenAIJudge:
        options = dict(base_url=server.url, model="canned-judge", api_key_env=KEY_ENV, protocol="rt_lab",
                       both_orders=True,
                       max_concurrency=2, max_retries=3, backoff_s=0.01, timeout_s=5.0, max_calls=100)
        return OpenAIJudge(**{**options, **overrides})

    return _make


def preferences(judgments) -> list[float | None]:
    return [j.value for j in judgments]


def test_weighted_preference_both_orders_canned_judge(make_judge, server, tmp_path):
    # model GOOD vs reference bad: reference first -> P(M) = 0.54 / 0.9 = 0.6; model first -> P(m) = 0.72 / 0.9
    # = 0.8; mean 0.7 -> p = 1.7. Model bad vs reference GOOD: P(M) = 0.18 / 0.9 = 0.2 and 1 - 0.54 / 0.9 = 0.4
    # -> p = 1.3. Identical outputs: 1.5 without a request.
    judgments = judge_pairs(make_judge(), ["Capital of France?"] * 3, [GOOD, BAD, GOOD], [BAD, GOOD, GOOD],
                            tmp_path / "cache.jsonl")
    assert preferences(judgments) == pytest.approx([1.7, 1.3, 1.5])
    assert all(j.reason is None for j in judgments)
    assert server.requests == 4
    for body in server.bodies:
        assert (body["model"], body["max_tokens"], body["logprobs"], body["top_logprobs"], body["temperature"]) == \
            ("canned-judge", 1, True, 5, 0)


def test_weighted_preference_one_order_canned_judge(make_judge, server, tmp_path):
    # reference first only: the position bias is not averaged out (0.6 instead of 0.7)
    judgments = judge_pairs(make_judge(both_orders=False), ["Capital of France?"] * 2, [GOOD, BAD], [BAD, GOOD],
                            tmp_path / "cache.jsonl")
    assert preferences(judgments) == pytest.approx([1.6, 1.2])
    assert server.requests == 2


def test_judge_built_from_config_group_is_the_papers_protocol_canned_judge(server, tmp_path, monkeypatch, compose):
    monkeypatch.setenv(KEY_ENV, SECRET)
    cfg = compose(["judge=openai"]).judge
    assert cfg._target_ == "rt_lab.judges.backends.OpenAIJudge" and cfg.api_key_env == "OPENAI_API_KEY"
    assert (cfg.protocol, cfg.annotator, cfg.both_orders, cfg.scoring) == (
        "alpaca_eval", "weighted_alpaca_eval_gpt4_turbo", False, "logprobs")
    cfg.merge_with({"base_url": server.url, "api_key_env": KEY_ENV, "backoff_s": 0.01})
    judge = build_judge(cfg)
    assert isinstance(judge, OpenAIJudge) and judge.identity()["annotator"] == "weighted_alpaca_eval_gpt4_turbo"
    judgments = judge_pairs(judge, ["Capital?"], [GOOD], [BAD], tmp_path / "c.jsonl")
    assert server.requests == 1 and judgments[0].value > 1.5  # the canned judge prefers GOOD: the model wins


@pytest.mark.parametrize("marker,code", [("FAIL429x2", 429), ("FAIL500x2", 500), ("SLOW", None)])
def test_transient_failures_are_retried_canned_judge(make_judge, server, tmp_path, marker, code):
    # SLOW: the server sleeps 1 s on the first request, past the client's timeout
    judge = make_judge(both_orders=False, max_retries=3, timeout_s=0.5 if marker == "SLOW" else 5.0)
    judgments = judge_pairs(judge, [f"{marker} Capital of France?"], [GOOD], [BAD], tmp_path / "cache.jsonl")
    assert preferences(judgments) == pytest.approx([1.6])
    failures = 2 if code else 1  # SLOW: the first request times out
    assert server.requests == failures + 1 == judge.calls


def test_permanent_500_is_unparsable_after_max_retries_canned_judge(make_judge, server, tmp_path):
    cache = tmp_path / "cache.jsonl"
    judgments = judge_pairs(make_judge(max_retries=2), ["ALWAYS500 Capital?", "Capital?"], [GOOD, GOOD], [BAD, BAD],
                            cache)
    assert judgments[0].value is None
    assert judgments[0].reason == "reference first: HTTP 500 on all 3 attempts"
    assert judgments[1].value == pytest.approx(1.7)
    assert server.by_prompt.most_common(1)[0][1] == 3
    # a server outage is not an answer: not cached, so a rerun asks again (and only for that pair)
    before = server.requests
    again = judge_pairs(make_judge(max_retries=0), ["ALWAYS500 Capital?", "Capital?"], [GOOD, GOOD], [BAD, BAD],
                        cache)
    assert again[0].value is None and again[1].value == pytest.approx(1.7)
    assert server.requests - before == 1


def test_malformed_replies_are_unparsable_with_reasons_canned_judge(make_judge, server, tmp_path):
    cache = tmp_path / "cache.jsonl"
    instructions = ["NOLABELS Capital?", "BADJSON Capital?", "Capital?"]
    judgments = judge_pairs(make_judge(), instructions, [GOOD] * 3, [BAD] * 3, cache)
    reasons = [j.reason for j in judgments]
    assert preferences(judgments)[:2] == [None, None]
    assert judgments[2].value == pytest.approx(1.7)
    assert reasons[0] == "reference first: neither label ['m', 'M'] among the top logprobs ['The', 'Both']"
    assert reasons[1].startswith("reference first: reply body is not JSON")
    # a malformed reply is an answer: cached with its reason, never asked again
    before = server.requests
    assert [j.reason for j in judge_pairs(make_judge(), instructions, [GOOD] * 3, [BAD] * 3, cache)] == reasons
    assert server.requests == before


def test_parse_reply_renormalises_over_the_two_labels():
    body = {"choices": [{"logprobs": {"content": [{"top_logprobs": [
        {"token": "m", "logprob": math.log(0.1)}, {"token": " M ", "logprob": math.log(0.3)},
        {"token": "x", "logprob": math.log(0.5)}]}]}}]}
    assert parse_reply(json.dumps(body)).value == pytest.approx(0.75)
    body["choices"][0]["logprobs"]["content"][0]["top_logprobs"] = [{"token": "M", "logprob": -0.1}]
    assert parse_reply(json.dumps(body)).value == 1.0  # the other label is not among the top: mass 0


def test_cache_rerun_makes_no_requests_canned_judge(make_judge, server, tmp_path):
    cache = tmp_path / "cache.jsonl"
    rows = (["Q1", "Q2", "Q3", "Q4"], [GOOD, BAD, GOOD, GOOD], [BAD, GOOD, BAD + " (v2)", GOOD])
    first = judge_pairs(make_judge(), *rows, cache)
    assert server.requests == 6  # 3 pairs x 2 orders; the identical pair costs nothing
    assert len(cache.read_text().splitlines()) == 3
    fresh = make_judge()
    assert judge_pairs(fresh, *rows, cache) == first
    assert server.requests == 6 and fresh.calls == 0
    assert SECRET not in cache.read_text()
    # what affects the answer is in the key: another judge model asks again
    judge_pairs(make_judge(model="another-judge"), *rows, cache)
    assert server.requests == 12


def test_spend_cap_stops_and_resume_judges_only_the_rest_canned_judge(make_judge, server, tmp_path):
    cache = tmp_path / "cache.jsonl"
    rows = ([f"Question {i}?" for i in range(6)], [GOOD] * 6, [BAD] * 6)
    with pytest.raises(SpendCapExceeded, match=r"max_calls=3 reached.*3 of 6 pairs are answered and cached"):
        judge_pairs(make_judge(both_orders=False, max_calls=3), *rows, cache)
    assert server.requests == 3
    assert len(cache.read_text().splitlines()) == 3  # every pair that got its answer is saved
    resumed = judge_pairs(make_judge(both_orders=False), *rows, cache)
    assert preferences(resumed) == pytest.approx([1.6] * 6)
    assert server.requests == 6  # only the 3 missing pairs were asked
    assert max(server.by_prompt.values()) == 1


def test_torn_last_cache_line_is_cut_and_rejudged_canned_judge(make_judge, server, tmp_path):
    cache = tmp_path / "cache.jsonl"
    rows = ([f"Question {i}?" for i in range(4)], [GOOD] * 4, [BAD] * 4)
    judge_pairs(make_judge(), *rows, cache)
    assert server.requests == 8
    cache.write_bytes(cache.read_bytes()[:-20])  # a crash mid-write of the last judgment
    resumed = judge_pairs(make_judge(), *rows, cache)
    assert preferences(resumed) == pytest.approx([1.7] * 4)
    assert server.requests == 10  # one pair, both orders
    lines = cache.read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line)["value"] == pytest.approx(1.7) for line in lines)


def test_torn_last_line_of_a_read_only_cache_is_skipped_and_the_file_left_alone_canned_judge(make_judge, server,
                                                                                               tmp_path, caplog):
    """Another run's cache (`also_cached`, e.g. its epochs' judgments) is read, never written: its torn last line
    is skipped with a warning naming it, and that pair judged again into this run's own cache."""
    other, cache = tmp_path / "other_run" / "judgments.jsonl", tmp_path / "cache.jsonl"
    rows = ([f"Question {i}?" for i in range(4)], [GOOD] * 4, [BAD] * 4)
    other.parent.mkdir()
    judge_pairs(make_judge(), *rows, other)
    torn = other.read_bytes()[:-20]  # that run crashed mid-write of its last judgment
    other.write_bytes(torn)
    with caplog.at_level("WARNING", logger="rt_lab.io"):
        resumed = judge_pairs(make_judge(), *rows, cache, also_cached=[other])
    assert other.read_bytes() == torn
    assert any(str(other) in record.getMessage() and "torn last line" in record.getMessage()
               for record in caplog.records)
    assert preferences(resumed) == pytest.approx([1.7] * 4)
    assert server.requests == 10  # 4 pairs x 2 orders for the other run, then the torn pair again
    assert len(cache.read_text().splitlines()) == 1


def test_malformed_cache_line_names_file_and_line(make_judge, tmp_path):
    cache = tmp_path / "cache.jsonl"
    cache.write_text('{"key": "a", "value": 1.5, "reason": null}\nnot json\n{"key": "b"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{cache}: line 2: invalid JSON")):
        judge_pairs(make_judge(), ["Q"], [GOOD], [BAD], cache)
    cache.write_text('{"key": "a", "value": 1.5, "reason": null}\n{"key": "b"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{cache}: line 2 lacks ['value', 'reason']")):
        judge_pairs(make_judge(), ["Q"], [GOOD], [BAD], cache)


def test_wrong_key_stops_at_once_canned_judge(make_judge, server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    judge = make_judge(both_orders=False, max_concurrency=1)
    with pytest.raises(JudgeError, match="HTTP 401"):
        judge_pairs(judge, [f"Q{i}" for i in range(5)], [GOOD] * 5, [BAD] * 5, tmp_path / "cache.jsonl")
    assert server.requests == 1  # not retried, and no other pair is asked


def test_missing_key_variable_is_named(monkeypatch, server):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(JudgeError, match=f"environment variable {KEY_ENV} is not set"):
        OpenAIJudge(base_url=server.url, model="canned-judge", api_key_env=KEY_ENV)


# --- scoring: servers without log-probabilities --------------------------------------------------------------


def test_a_reply_without_logprobs_stops_the_run_at_once_naming_server_and_fix_canned_judge(make_judge, server,
                                                                                          tmp_path):
    rows = ([f"NOLOGPROBS question {i}?" for i in range(5)], [GOOD] * 5, [BAD] * 5)
    with pytest.raises(NoLogprobs) as raised:
        judge_pairs(make_judge(max_concurrency=1), *rows, tmp_path / "cache.jsonl")
    message = str(raised.value)
    assert server.url in message and "canned-judge" in message
    assert "judge.scoring=text" in message and "vLLM" in message and "0 of 5 pairs are answered" in message
    assert server.requests == 1  # not one unparsable judgment after another


@pytest.mark.parametrize(("reply", "p_second"), [("M", 1.0), (" m.", 0.0), ("'M'\nIt is clearer.", 1.0),
                                                  ("The best model identifier is: m.", 0.0), ("Model M", 1.0),
                                                  ("M is better than m", None), ("mM", None), ("I'm unsure", None),
                                                  ("", None)])
def test_text_scoring_reads_the_one_label_the_reply_names(reply, p_second):
    from rt_lab.judges.base import text_verdict

    verdict = text_verdict(reply, ("m", "M"))
    assert verdict.value == p_second and (verdict.reason is None) == (p_second is not None)


def test_text_scoring_asks_for_no_logprobs_canned_judge(make_judge, server, tmp_path):
    from rt_lab.judges.backends import TEXT_MAX_TOKENS

    cache = tmp_path / "cache.jsonl"
    rows = (["Q1", "Q2"], [GOOD, BAD], [BAD, GOOD])
    # the canned judge's text is its most likely label, the GOOD output's in either order
    assert preferences(judge_pairs(make_judge(scoring="text"), *rows, cache)) == [2.0, 1.0]
    assert all("logprobs" not in body and body["max_tokens"] == TEXT_MAX_TOKENS for body in server.bodies)
    judge_pairs(make_judge(), *rows, cache)  # the scoring is part of the cache key: logprobs asks again
    assert server.requests == 8


# --- the alpaca_eval protocol: alpaca_eval's own annotator code is the oracle ---------------------------------

ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"


@pytest.fixture(scope="module")
def alpaca_eval_annotator():
    """alpaca_eval's own single annotator for ANNOTATOR; nothing is sent through it."""
    with pkg_resources_for_alpaca_eval():
        from alpaca_eval.annotators import PairwiseAnnotator
    return PairwiseAnnotator(annotators_config=ANNOTATOR, caching_path=None).annotators[ANNOTATOR]


def alpaca_eval_oracle(annotator, server: CannedJudgeServer, instructions, outputs, references) -> dict:
    """Per instruction: the chat messages alpaca_eval would send and the preference it would compute from the
    canned judge's logprobs for them (its preprocessing, prompt, parser and un-switching)."""
    import pandas as pd
    from alpaca_eval.utils import prompt_to_chatml

    rows = annotator._preprocess(pd.DataFrame({"instruction": instructions, "output_1": references,
                                               "output_2": outputs}))
    prompts, rows = annotator._make_prompts(rows)
    messages = dict(zip(rows.instruction, (prompt_to_chatml(prompt) for prompt in prompts)))
    switched = dict(zip(rows.instruction, rows.is_switched_outputs))
    parsed = [annotator.fn_completion_parser({"logprobs": {"content": [{"top_logprobs": [
        {"token": token, "logprob": math.log(p)} for token, p in server.top_logprobs(messages[i][-1]["content"])]}]}})[0]
        for i in rows.instruction]
    preference = dict(zip(rows.instruction, annotator._postprocess(rows.assign(preference=parsed)).preference))
    return {i: (messages[i], preference[i], switched[i]) for i in instructions}


def test_alpaca_eval_protocol_is_alpaca_evals_prompt_order_and_parser_canned_judge(make_judge, server, tmp_path,
                                                                                   alpaca_eval_annotator):
    # braces, quotes and a placeholder-like word in the texts reach the judge as alpaca_eval would send them
    instructions = [f"Question {i}: which {{fruit}} is \"\"\"red\"\"\"?" for i in range(40)]
    outputs = [f"{GOOD} {i}" if i % 3 else f"{BAD} {i}" for i in range(40)]
    references = [f"{BAD} ref {i}" if i % 3 else f"{GOOD} ref {i}" for i in range(40)]
    judge = make_judge(protocol="alpaca_eval", both_orders=False, max_concurrency=4)
    judgments = judge_pairs(judge, instructions, outputs, references, tmp_path / "cache.jsonl")
    oracle = alpaca_eval_oracle(alpaca_eval_annotator, server, instructions, outputs, references)
    # one request per pair, each exactly the messages alpaca_eval builds, outputs in the order it draws
    assert server.requests == 40
    assert sorted(json.dumps(body["messages"]) for body in server.bodies) == \
        sorted(json.dumps(messages) for messages, _, _ in oracle.values())
    for body in server.bodies:
        assert (body["max_tokens"], body["logprobs"], body["top_logprobs"], body["temperature"]) == (1, True, 5, 0)
    switched = [oracle[i][2] for i in instructions]
    assert 0 < sum(switched) < 40  # both orders occur
    # the preference is alpaca_eval's logprob_parser on the same logprobs, un-switched as alpaca_eval does
    assert preferences(judgments) == pytest.approx([oracle[i][1] for i in instructions])
    # the canned " M" candidate counts for rt_lab's reader but not for AlpacaEval's exact-token parser
    assert preferences(judgments) != pytest.approx(preferences(judge_pairs(
        make_judge(protocol="rt_lab", both_orders=False), instructions, outputs, references, tmp_path / "r.jsonl")))


def test_alpaca_eval_order_draw_is_fixed_per_instruction_canned_judge(make_judge, server, tmp_path):
    instructions = [f"Question {i}?" for i in range(12)]
    rows = (instructions, [GOOD] * 12, [BAD] * 12)
    first = judge_pairs(make_judge(protocol="alpaca_eval", both_orders=False), *rows, tmp_path / "a.jsonl")
    sent = sorted(json.dumps(body["messages"]) for body in server.bodies)
    # a rerun in another order, with other pairs beside them, shows each pair the same way
    more = [f"Another question {i}?" for i in range(5)]
    again = judge_pairs(make_judge(protocol="alpaca_eval", both_orders=False), more + instructions[::-1],
                        [GOOD] * 17, [BAD] * 17, tmp_path / "b.jsonl")
    assert preferences(again)[5:] == preferences(first)[::-1]
    assert set(sent) <= {json.dumps(body["messages"]) for body in server.bodies[12:]}
    # the model's GOOD output shown first (switched): P(m) = 0.72 / 0.9 -> 1.8; shown second: P(M) = 0.5 / 0.86
    # (the " M" candidate is not AlpacaEval's token) -> 1 + 0.5 / 0.86
    assert sorted(set(round(p, 6) for p in preferences(first))) == pytest.approx([1 + 0.5 / 0.86, 1.8])


def test_protocols_never_share_cached_judgments_canned_judge(make_judge, server, tmp_path):
    cache = tmp_path / "cache.jsonl"
    rows = (["Q1", "Q2"], [GOOD, GOOD], [BAD, BAD])
    for protocol in ("rt_lab", "alpaca_eval"):
        judge_pairs(make_judge(protocol=protocol, both_orders=False), *rows, cache)
    judge_pairs(make_judge(protocol="alpaca_eval", both_orders=True), *rows, cache)
    assert server.requests == 2 + 2 + 4
    assert len(cache.read_text().splitlines()) == 6


def test_alpaca_eval_protocol_errors_name_the_key_and_the_fix(monkeypatch):
    from rt_lab.judges.protocols import build_protocol

    with pytest.raises(JudgeError, match=r"judge.annotator=no_such_annotator: alpaca_eval 0.6.6 has no .*choose "
                                         r"one of \[.*weighted_alpaca_eval_gpt4_turbo"):
        build_protocol("alpaca_eval", "no_such_annotator")
    with pytest.raises(JudgeError, match=r"judge.annotator=alpaca_eval_gpt4_turbo_fn .*logprob_parser"):
        build_protocol("alpaca_eval", "alpaca_eval_gpt4_turbo_fn")
    with pytest.raises(KeyError, match=r"judge.protocol='alpaca' is not a registered judge protocol"):
        build_protocol("alpaca")
    monkeypatch.setitem(sys.modules, "alpaca_eval", None)  # as on an install without the extra
    with pytest.raises(JudgeError, match=re.escape('pip install "rt_lab[alpaca_eval]"')):
        build_protocol("alpaca_eval")


def test_alpaca_eval_protocol_with_the_local_smollm2_judge(compose, smollm2_path, tmp_path):
    """hf_local follows the alpaca_eval protocol too (SmolLM2-135M is too weak for its verdicts to mean anything)."""
    judge = build_judge(compose(["judge=hf_local", "judge.protocol=alpaca_eval", "judge.both_orders=false"]).judge)
    judgments = judge_pairs(judge, ["Name a primary colour.", "What is 2 + 2?"], ["Red.", "4"], ["Blue.", "5"],
                            tmp_path / "cache.jsonl")
    assert all(j.reason is None and 1 <= j.value <= 2 for j in judgments)
