"""What the human-evaluation tests share: a small sweep laid out as real runs leave it (rt and it at two seeds, base
at one, an unfinished rt run), the real `python -m rt_lab.human serve` as a subprocess on a free loopback port,
and plain HTTP requests to it."""

from __future__ import annotations

import http.client
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import urlencode, urlsplit

from helpers import REPO, write_run

INSTRUCTIONS = ["Name a prime number larger than ten.", "Write a haiku about rain.", "How do I boil an egg?"]
# per (method, seed): one answer per instruction. The lengths decide the canned length judge: rt's answer is the
# longer one on every seed-1 item and on seed 2's first item, the shorter one on seed 2's other two.
ANSWERS = {
    ("rt", 1): ["Eleven is prime: its only divisors are one and itself.", "Soft rain on tin roofs / "
                "the garden drinks in silence / puddles hold the sky", "Cover the egg with cold water, bring it to "
                "a boil, then simmer for nine minutes and cool it in cold water."],
    ("it", 1): ["13.", "Rain falls / on the hill", "Boil it for ten minutes."],
    ("rt", 2): ["Seventeen, since no number between one and seventeen divides it.", "Drip.", "Boil it."],
    ("it", 2): ["29.", "Grey clouds gather low / a hush, then the first cold drops / the street smells of stone",
                "Put the egg in boiling water for seven minutes, then move it to iced water before peeling."],
    ("base", 1): ["Prime numbers are numbers. Prime numbers are numbers.", "Rain rain rain rain.",
                  "Eggs are laid by hens."],
}
JOBS = [("rt", 1), ("it", 1), ("rt", 2), ("it", 2), ("base", 1)]  # job number = index; job 5: rt seed 3, unfinished


def make_sweep(root: Path, compose: Callable) -> Path:
    for number, (method, seed) in enumerate(JOBS):
        outputs = [{"instruction": instruction, "output": answer, "generator": f"{method}-seed{seed}"}
                   for instruction, answer in zip(INSTRUCTIONS, ANSWERS[method, seed])]
        write_run(root, number, compose, [f"method={method}", f"trainer.seed={seed}"], outputs)
    write_run(root, len(JOBS), compose, ["method=rt", "trainer.seed=3"], None, done=False)
    return root


class HumanServer:
    """`python -m rt_lab.human serve SWEEP --port 0 ARGS` until closed (or killed); `url`, `raters` (name -> URL)."""

    def __init__(self, sweep: Path, args: Sequence[str], log: Path) -> None:
        self.log = log.open("ab")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        self.process = subprocess.Popen([sys.executable, "-m", "rt_lab.human", "serve", str(sweep), "--port", "0",
                                         *args], stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.process.stdout], daemon=True).start()
        self.output: list[str] = []
        self.raters: dict[str, str] = {}
        while True:
            try:
                line = lines.get(timeout=120)
            except queue.Empty:
                self.close()
                raise RuntimeError(f"rt_lab.human serve did not start in 120 s: {self.output}") from None
            self.output.append(line)
            rater = re.fullmatch(r"  (\S+): (http://\S+)\n", line)
            if rater:
                self.raters[rater[1]] = rater[2]
            served = re.match(r"rt_lab\.human: serving on (http://\S+/)", line)
            if served:
                self.url = served[1]
                return

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when a machine loses power or an OOM killer strikes."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=60)
        self.log.close()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)
        self.log.close()


def request(url: str, fields: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    """GET `url`, or POST `fields` to it as a form; (status, headers, body), redirects not followed."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        if fields is None:
            connection.request("GET", path)
        else:
            connection.request("POST", path, urlencode(fields),
                               {"Content-Type": "application/x-www-form-urlencoded"})
        reply = connection.getresponse()
        return reply.status, dict(reply.getheaders()), reply.read().decode("utf-8")
    finally:
        connection.close()
