"""The W&B mode rt_lab decides (rt_lab/wandb_mode.py), each case in a fresh process whose environment is a user's:
no WANDB_* variable unless the case sets one, its own home, settings dir and .netrc. A reachable W&B host is a real
HTTP server on loopback; an unreachable one is a loopback port nobody listens on."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from helpers import FAST, REPO

KEY = "k" * 40


class AnyAnswer(BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:
        self.send_response(404)  # any status means the host answers
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def reachable_host() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), AnyAnswer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def user_env(home: Path, **variables: str) -> dict[str, str]:
    """A fresh user's environment: no W&B variable but `variables`, wandb's files under `home` only."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_") and key != "NETRC"}
    env.update(HOME=str(home), PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", **variables)
    return env


def decided(env: dict[str, str], tmp_path: Path) -> tuple[str, str]:
    """(mode, log) of `wandb_mode()` in a fresh process."""
    probe = ("import logging; logging.basicConfig(level=logging.INFO)\n"
             "from rt_lab.wandb_mode import wandb_mode\n"
             "import sys; assert 'wandb' not in sys.modules\n"  # decided before wandb is even imported
             "print('mode', wandb_mode())")
    done = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split("mode ", 1)[1].strip(), done.stderr


def write_netrc(home: Path, host: str) -> None:
    netrc = home / ".netrc"
    netrc.write_text(f"machine {host}\n  login user\n  password {'p' * 40}\n")
    netrc.chmod(0o600)


def test_no_configuration_at_all_logs_offline_and_says_how_to_upload(tmp_path):
    mode, log = decided(user_env(tmp_path), tmp_path)
    assert mode == "offline"
    assert "no W&B credentials" in log and "wandb sync" in log


def test_an_api_key_and_a_host_that_answers_log_online(tmp_path, reachable_host):
    mode, log = decided(user_env(tmp_path, WANDB_API_KEY=KEY, WANDB_BASE_URL=reachable_host), tmp_path)
    assert mode == "online"
    assert "credentials from WANDB_API_KEY" in log


def test_a_self_hosted_server_found_through_netrc_logs_online(tmp_path, reachable_host):
    write_netrc(tmp_path, reachable_host.split("//")[1])
    mode, log = decided(user_env(tmp_path, WANDB_BASE_URL=reachable_host), tmp_path)
    assert mode == "online"
    assert str(tmp_path / ".netrc") in log


def test_wandb_login_host_from_the_settings_file_and_its_netrc_entry_log_online(tmp_path, reachable_host):
    """`wandb login --host URL` writes the host to wandb's settings file and the key to .netrc."""
    settings = tmp_path / ".config" / "wandb" / "settings"
    settings.parent.mkdir(parents=True)
    settings.write_text(f"[default]\nbase_url = {reachable_host}\n")
    write_netrc(tmp_path, reachable_host.split("//")[1])
    assert decided(user_env(tmp_path), tmp_path)[0] == "online"


def test_a_netrc_entry_for_another_host_is_no_credentials(tmp_path):
    write_netrc(tmp_path, "wandb.lab.example")
    assert decided(user_env(tmp_path), tmp_path)[0] == "offline"


def test_credentials_but_an_unreachable_host_log_offline_with_a_warning_naming_the_fix(tmp_path):
    """A cluster node without internet: the run goes on offline rather than failing when wandb.init gives up."""
    mode, log = decided(user_env(tmp_path, WANDB_API_KEY=KEY, WANDB_BASE_URL=closed_port_url()), tmp_path)
    assert mode == "offline"
    assert "WARNING" in log and "did not answer" in log
    assert "wandb sync" in log and "logger.wandb.mode=offline" in log


@pytest.mark.parametrize("value,mode", [("dryrun", "offline"), ("disabled", "disabled"), ("online", "online")])
def test_a_wandb_mode_the_user_set_wins(tmp_path, value, mode):
    assert decided(user_env(tmp_path, WANDB_MODE=value), tmp_path)[0] == mode


def test_an_unknown_wandb_mode_is_refused_by_name(tmp_path):
    probe = "from rt_lab.wandb_mode import wandb_mode; wandb_mode()"
    done = subprocess.run([sys.executable, "-c", probe], env=user_env(tmp_path, WANDB_MODE="ofline"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "WANDB_MODE='ofline'" in done.stderr


def test_a_run_with_a_key_but_no_reachable_host_finishes_offline(tmp_path):
    """`python launch.py` as a user on a compute node types it: W&B configured, its host out of reach."""
    env = user_env(tmp_path, WANDB_API_KEY=KEY, WANDB_BASE_URL=closed_port_url(),
                   RT_LAB_OUTPUT_DIR=str(tmp_path / "outputs"))
    done = subprocess.run([sys.executable, str(REPO / "launch.py"), "logger=wandb", *FAST], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    assert len(json.loads((run_dir / "model_outputs.json").read_text())) == 3
    run_id = (run_dir / "wandb_run_id").read_text()
    assert [path.name.rsplit("-", 1)[1] for path in (run_dir / "wandb").glob("offline-run-*")] == [run_id]
    assert "did not answer" in (run_dir / "launch.log").read_text()
