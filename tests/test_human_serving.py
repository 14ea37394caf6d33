"""The rating app as deployed to raters on other machines: the real `python -m rt_lab.human serve` on waitress, over
HTTP. Security headers, request limits and error pages that never repeat a whole value, an access log without
tokens, a database only its owner reads, every acknowledged rating kept when the server is killed under three
raters, rater links revoked and rotated while serving, a second or unbindable serve that leaves the running study
alone, and report CSVs a spreadsheet opens as text. The page itself under its
security policy, in Chromium: test_human_browser.py."""

from __future__ import annotations

import csv
import socket
import sqlite3
import stat
import subprocess
import sys
import threading

import pytest

from helpers import REPO, write_run
from human_server import HumanServer, make_sweep, request
from rt_lab.compare.report import SPREADSHEET_CELL_CHARACTERS
from rt_lab.human.app import MAX_REQUEST_BYTES, SECURITY_HEADERS
from rt_lab.layout import SweepDir


@pytest.fixture
def sweep(tmp_path, compose):
    return make_sweep(tmp_path / "sweep", compose)


@pytest.fixture
def server(sweep, tmp_path):
    served = HumanServer(sweep, ["--pairs", "rt:it", "--raters", "alice,bob"], tmp_path / "server.log")
    yield served
    served.close()


def human(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rt_lab.human", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_every_reply_carries_the_security_headers_from_waitress(server):
    alice = server.raters["alice"]
    page = request(alice)[2]
    stylesheet = page.split('rel="stylesheet" href="', 1)[1].split('"', 1)[0]
    for url in (server.url, alice, server.url + "r/unknown", server.url.rstrip("/") + stylesheet):
        status, headers, _ = request(url)
        assert status in (200, 404)
        assert {name: headers.get(name) for name in SECURITY_HEADERS} == SECURITY_HEADERS, url
        assert headers["Server"] == "rt_lab.human"  # waitress (ident), not Werkzeug's development server
    assert "frame-ancestors 'none'" in SECURITY_HEADERS["Content-Security-Policy"]
    assert "<style>" not in page and "<script>" not in page  # nothing inline for the policy to block


def test_a_huge_request_is_refused_and_no_error_page_repeats_a_whole_value(server):
    alice = server.raters["alice"]
    item = request(alice)[2].split('name="item" value="', 1)[1].split('"', 1)[0]
    huge = "A" * (2 * MAX_REQUEST_BYTES)
    status, _, page = request(f"{alice}/rate", {"item": item, "preference": huge})
    assert status == 413 and huge[:1000] not in page and len(page) < 5000
    long_value = "B" * (MAX_REQUEST_BYTES // 2)  # under the limit, but no valid preference
    status, _, page = request(f"{alice}/rate", {"item": item, "preference": long_value})
    assert status == 400 and "32,768 characters" in page and long_value[:100] not in page
    status, _, page = request(f"{alice}?item={'C' * 5000}")
    assert status == 404 and "5,000 characters" in page and "C" * 100 not in page


def test_the_access_log_names_raters_never_their_tokens(server, tmp_path):
    alice, bob = server.raters["alice"], server.raters["bob"]
    request(alice)
    request(f"{bob}?item=nope")
    request(f"{alice}/rate", {"item": "x", "final": "1"})
    request(server.url + "r/guessed-token")
    server.close()
    log = (tmp_path / "server.log").read_text()
    assert '"GET /r/[alice]" 200' in log and '"GET /r/[bob]" 404' in log
    assert '"POST /r/[alice]/rate" 400' in log and '"GET /r/[unknown rater]" 404' in log
    for url in (alice, bob):
        assert url.rsplit("/", 1)[1] not in log
    assert "guessed-token" not in log


def test_the_database_is_readable_by_its_owner_only(server, sweep):
    alice = server.raters["alice"]
    item = request(alice)[2].split('name="item" value="', 1)[1].split('"', 1)[0]
    db = SweepDir(sweep).human_ratings
    with sqlite3.connect(db) as reader:  # SQLite keeps -wal and -shm only while a connection is open
        reader.execute("SELECT COUNT(*) FROM ratings").fetchall()
        assert request(f"{alice}/rate", {"item": item, "left": "excellent", "final": "0"})[0] == 204
        for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_revoked_link_opens_nothing_at_once_and_a_rotated_one_replaces_it(server, sweep):
    alice = server.raters["alice"]
    item = request(alice)[2].split('name="item" value="', 1)[1].split('"', 1)[0]
    full = {"item": item, "left": "excellent", "right": "sufficient", "preference": "left", "final": "1"}
    assert request(f"{alice}/rate", full)[0] == 303

    revoked = human("raters", str(sweep), "--revoke", "alice")
    assert revoked.returncode == 0 and "opens nothing from now on" in revoked.stdout
    assert request(alice)[0] == 404 and request(f"{alice}/rate", full)[0] == 404  # the running server, at once
    assert "alice: revoked" in human("raters", str(sweep)).stdout
    report = human("report", str(sweep))
    assert report.returncode == 0 and "1 ratings" in report.stdout  # her rating stays

    rotated = human("raters", str(sweep), "--rotate", "alice")
    new_path = rotated.stdout.split("new link, after the serve's address: ", 1)[1].split(" ", 1)[0]
    status, _, page = request(server.url.rstrip("/") + new_path)
    assert status == 200 and "1 of 6 rated" in page  # the same rater: ratings and order kept
    assert request(alice)[0] == 404
    assert request(server.raters["bob"])[0] == 200  # nobody else touched
    unknown = human("raters", str(sweep), "--rotate", "carol")
    assert unknown.returncode != 0 and "no rater 'carol'" in unknown.stderr and "alice, bob" in unknown.stderr


def visible(sweep) -> int:
    with sqlite3.connect(SweepDir(sweep).human_ratings) as db:
        return db.execute("SELECT COUNT(*) FROM items WHERE moderation IS NOT 'hide'").fetchone()[0]


def test_a_second_serve_leaves_the_running_study_alone(server, sweep):
    before = visible(sweep)
    second = human("serve", str(sweep), "--pairs", "rt:it", "--hide", "egg", "--port", "0")
    assert second.returncode != 0 and "being served already" in second.stderr
    assert "serving on http://127.0.0.1:" in second.stderr  # where the running one is
    assert visible(sweep) == before
    status, _, page = request(server.raters["alice"])
    assert status == 200 and "0 of 6 rated" in page


def test_a_serve_that_cannot_bind_its_port_changes_nothing(sweep, tmp_path):
    first = HumanServer(sweep, ["--pairs", "rt:it"], tmp_path / "server.log")
    first.close()
    before = visible(sweep)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        failed = human("serve", str(sweep), "--pairs", "rt:it", "--hide", "egg", "--port", str(port))
    assert failed.returncode != 0 and f"cannot listen on 127.0.0.1:{port}" in failed.stderr
    assert "nothing in the study changed" in failed.stderr
    assert visible(sweep) == before


def test_report_csvs_open_in_a_spreadsheet_as_text(tmp_path, compose):
    """Instructions that a spreadsheet would run as formulas, and one longer than a cell holds."""
    instructions = ["=HYPERLINK(\"http://example.com\",\"x\")", "+1+1", "-2*3", "@SUM(A1:A2)", "\tindented",
                    "Plain question?", "L" * 40_000]
    sweep = tmp_path / "sweep"
    for number, method in enumerate(("rt", "it")):
        write_run(sweep, number, compose, [f"method={method}"],
                  [{"instruction": text, "output": f"{method} answer {i}"} for i, text in enumerate(instructions)])
    server = HumanServer(sweep, ["--pairs", "rt:it", "--raters", "alice"], tmp_path / "server.log")
    try:
        alice = server.raters["alice"]
        for _ in instructions:
            item = request(alice)[2].split('name="item" value="', 1)[1].split('"', 1)[0]
            fields = {"item": item, "left": "excellent", "right": "sufficient", "preference": "tie", "final": "1"}
            assert request(f"{alice}/rate", fields)[0] == 303
    finally:
        server.close()
    assert human("report", str(sweep)).returncode == 0
    with SweepDir(sweep).human_ratings_csv.open(newline="") as handle:
        cells = {row["instruction"] for row in csv.DictReader(handle)}
    assert {cell for cell in cells if cell.startswith("'")} == {"'" + text for text in instructions[:5]}
    assert "Plain question?" in cells
    (long,) = [cell for cell in cells if cell.startswith("LLL")]
    assert len(long) == SPREADSHEET_CELL_CHARACTERS and long.endswith("[... cut: 40,000 characters in all]")


def test_every_acknowledged_rating_survives_a_sigkill_under_three_raters(sweep, tmp_path):
    """Three raters submitting at once; the server killed mid-stream: each rating whose reply came back is on disk."""
    server = HumanServer(sweep, ["--pairs", "rt:it", "--raters", "3"], tmp_path / "server.log")
    acknowledged: list[tuple[str, str]] = []
    enough = threading.Event()

    def rate(name: str, url: str) -> None:
        try:
            while True:
                page = request(url)[2]
                if 'name="item"' not in page:
                    return  # all rated
                item = page.split('name="item" value="', 1)[1].split('"', 1)[0]
                fields = {"item": item, "left": "excellent", "right": "not_acceptable", "preference": "left",
                          "final": "1"}
                if request(f"{url}/rate", fields)[0] == 303:
                    acknowledged.append((name, item))
                    if len(acknowledged) >= 6:
                        enough.set()
        except OSError:  # the server is gone
            return

    raters = [threading.Thread(target=rate, args=item) for item in server.raters.items()]
    for thread in raters:
        thread.start()
    assert enough.wait(60)
    server.kill()
    for thread in raters:
        thread.join(60)
    with sqlite3.connect(SweepDir(sweep).human_ratings) as db:
        stored = set(db.execute("SELECT rater, item FROM ratings WHERE submitted_at IS NOT NULL").fetchall())
    assert len(acknowledged) >= 6 and set(acknowledged) <= stored
