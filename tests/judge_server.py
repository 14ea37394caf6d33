"""A real HTTP server on loopback that speaks the chat-completions schema with a canned judge (a paid API's model
cannot run here). By default it favours the output containing "GOOD", more so when that output is shown first
(a position bias both_orders must average out); subclasses override `top_logprobs` (and `text_reply`, the answer
when a request asks for no logprobs). Markers in a prompt make it misbehave (FAIL429x2, FAIL500x2, ALWAYS500, SLOW,
BADJSON, NOLABELS: no label among the top logprobs, NOLOGPROBS: a reply without logprobs, as `transformers serve`
gives). `RefinerServer` answers rewriting requests instead (rt_lab.data.refine)."""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEY_ENV = "RT_LAB_TEST_JUDGE_KEY"
SECRET = "sk-test-secret-4711"
GOOD, BAD = "GOOD answer: Paris.", "bad answer: Lyon."
# the canned judge's top-logprob mass on each label: P(label of GOOD | both labels) = 0.8 when GOOD is shown
# first, 0.6 when second; the mass of the second label is split between "M" and " M" (whitespace variants count)
FIRST_GOOD = [("m", 0.72), ("M", 0.18), ("The", 0.05)]
SECOND_GOOD = [("M", 0.50), (" M", 0.04), ("m", 0.36), ("The", 0.05)]


def shown_outputs(prompt: str) -> tuple[str, str]:
    """The two outputs of a pairwise judge prompt, in the order shown, in rt_lab's template or AlpacaEval's."""
    if "Response m:\n<<<\n" in prompt:
        first, second = (prompt.split(f"Response {label}:\n<<<\n", 1)[1].split("\n>>>", 1)[0] for label in "mM")
        return first, second
    first, second = (part.split('"""', 1)[0] for part in prompt.split('"output": """')[1:3])
    return first, second


class CannedJudgeServer:
    def __init__(self) -> None:
        self.requests = 0
        self.probes = 0  # GET /models: what a launch's preflight asks (not a judgment)
        self.by_prompt: Counter[str] = Counter()
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_POST(self) -> None:
                try:
                    server.handle(self)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and hung up
                    pass

            def do_GET(self) -> None:
                server.list_models(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def handle(self, http: BaseHTTPRequestHandler) -> None:
        body = json.loads(http.rfile.read(int(http.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        with self.lock:
            self.requests += 1
            self.by_prompt[prompt] += 1
            count = self.by_prompt[prompt]
            self.bodies.append(body)
        if http.headers.get("Authorization") != f"Bearer {SECRET}":
            return self.send(http, 401, {"error": {"message": "bad key", "type": "invalid_request_error"}})
        for code, marker in ((429, "FAIL429x2"), (500, "FAIL500x2")):
            if marker in prompt and count <= 2:
                return self.send(http, code, {"error": {"message": f"canned {code}", "type": "server_error"}})
        if "ALWAYS500" in prompt:
            return self.send(http, 500, {"error": {"message": "canned 500", "type": "server_error"}})
        if "SLOW" in prompt and count == 1:
            time.sleep(1.0)
        if "BADJSON" in prompt:
            return self.send_raw(http, 200, b'{"choices": [ this is not json')
        logprobs = None
        if body.get("logprobs"):
            top = [("The", 0.6), ("Both", 0.3)] if "NOLABELS" in prompt else self.top_logprobs(prompt)
            content = top[0][0]
            if "NOLOGPROBS" not in prompt:
                logprobs = {"content": [{"token": top[0][0], "logprob": math.log(top[0][1]), "bytes": None,
                                         "top_logprobs": [{"token": t, "logprob": math.log(p), "bytes": None}
                                                          for t, p in top]}]}
        else:
            content = self.text_reply(prompt)
        self.send(http, 200, {
            "id": f"chatcmpl-{self.requests}", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "length", "logprobs": logprobs}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 1, "total_tokens": 101},
        })

    def list_models(self, http: BaseHTTPRequestHandler) -> None:
        """GET /v1/models, as OpenAI and vLLM answer it: the served model, for the right key only."""
        with self.lock:
            self.probes += 1
        if http.path.rstrip("/") != "/v1/models":
            return self.send(http, 404, {"error": {"message": "not found", "type": "invalid_request_error"}})
        if http.headers.get("Authorization") != f"Bearer {SECRET}":
            return self.send(http, 401, {"error": {"message": "bad key", "type": "invalid_request_error"}})
        self.send(http, 200, {"object": "list", "data": [{"id": "canned-judge", "object": "model"}]})

    def top_logprobs(self, prompt: str) -> list[tuple[str, float]]:
        """(token, probability) candidates of the answer's first token. The canned judge: favours the output
        containing "GOOD", more so when it is shown first."""
        return FIRST_GOOD if prompt.index("GOOD") < prompt.index("bad") else SECOND_GOOD

    def text_reply(self, prompt: str) -> str:
        """The reply's text when no logprobs are asked for: the canned judge's most likely label."""
        return self.top_logprobs(prompt)[0][0]

    def send(self, http: BaseHTTPRequestHandler, code: int, payload: dict) -> None:
        self.send_raw(http, code, json.dumps(payload).encode())

    @staticmethod
    def send_raw(http: BaseHTTPRequestHandler, code: int, data: bytes) -> None:
        http.send_response(code)
        http.send_header("Content-Type", "application/json")
        http.send_header("Content-Length", str(len(data)))
        http.end_headers()
        http.wfile.write(data)


class LengthJudgeServer(CannedJudgeServer):
    """A canned judge that prefers the longer response (P = 0.7); equal lengths: 0.5."""

    def top_logprobs(self, prompt: str) -> list[tuple[str, float]]:
        first, second = shown_outputs(prompt)
        p_second = 0.5 if len(first) == len(second) else 0.7 if len(second) > len(first) else 0.3
        return [("M", p_second), ("m", 1 - p_second)]


def judge_overrides(server: CannedJudgeServer) -> list[str]:
    """The `judge=openai` overrides that point a run at `server`."""
    return ["judge=openai", f"judge.base_url={server.url}", "judge.model=canned-judge",
            f"judge.api_key_env={KEY_ENV}", "judge.backoff_s=0.01"]


REWRITE_PREFIX = "Clearer: "  # RefinerServer's rewrite: this, then the original response


class RefinerServer(CannedJudgeServer):
    """A canned refiner: a short note, then rt_lab's marker line and the response with REWRITE_PREFIX before it.
    Markers in the response make it answer otherwise: NOMARKER (no marker line), EMPTYREWRITE (nothing after the
    marker), BOLDMARKER (the marker in Markdown bold with the rewrite on the same line)."""

    def text_reply(self, prompt: str) -> str:
        response = prompt.split("[Assistant response]\n", 1)[1].rsplit("\n[End of assistant response]", 1)[0]
        if "NOMARKER" in response:
            return "The response is already clear; I would keep it as it is."
        if "EMPTYREWRITE" in response:
            return "It reads well.\n\nRewritten response:\n"
        if "BOLDMARKER" in response:
            return f"A friendlier tone helps.\n**Rewritten response:** {REWRITE_PREFIX}{response}"
        return f"The wording could be more direct.\n\nRewritten response:\n{REWRITE_PREFIX}{response}\n"
