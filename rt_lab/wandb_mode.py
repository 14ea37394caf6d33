"""The W&B mode of a process (online, offline or disabled), decided once, before wandb builds its settings, and
handed to every `wandb.init` as its `mode` argument.

Why not leave it to wandb or Lightning: wandb reads `WANDB_MODE` only when it first builds its process-wide
settings, and Lightning's `WandbLogger(offline=True)` sets that variable later, when its run starts, so wandb then
asks for an API key it does not have. Nothing here imports wandb.

`auto` reads what wandb reads, in its order: a `WANDB_MODE` the user set wins; then credentials (`WANDB_API_KEY`,
`WANDB_IDENTITY_TOKEN_FILE`, an `api_key` in wandb's settings file, a `.netrc` entry for the W&B host, which is
`WANDB_BASE_URL`, else the settings file's `base_url`, else W&B's cloud). Without credentials the run logs offline.
With them the host gets one request: a host that does not answer (a compute node without internet) sends the run
offline with a warning that says how to upload it, rather than failing the run."""

from __future__ import annotations

import configparser
import functools
import logging
import netrc
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

MODES = ("online", "offline", "disabled")
# what wandb accepts in WANDB_MODE, as one of MODES
ENV_MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline", "disabled": "disabled"}
DEFAULT_BASE_URL = "https://api.wandb.ai"
REACHABLE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class WandbMode:
    mode: str  # one of MODES
    reason: str  # why, in a sentence a user can act on
    warning: bool = False  # the user asked for more than they get (credentials, but the host does not answer)


def wandb_mode(requested: str = "auto") -> str:
    """The mode every wandb.init of this process gets, for `logger.wandb.mode` = `requested` (auto, online, offline
    or disabled). Decided on first use and logged once; later calls return the same."""
    return _decided(requested).mode


@functools.cache
def _decided(requested: str) -> WandbMode:
    decision = decide(requested, os.environ)
    (log.warning if decision.warning else log.info)("W&B %s: %s", decision.mode, decision.reason)
    return decision


def decide(requested: str, environ: os._Environ[str] | dict[str, str]) -> WandbMode:
    """The decision for `requested` in environment `environ`, with its reason (no caching, no logging)."""
    if requested in MODES:
        return WandbMode(requested, f"logger.wandb.mode={requested}")
    if requested != "auto":
        raise ValueError(f"logger.wandb.mode={requested!r}: expected auto, {', '.join(MODES)}")
    if environ.get("WANDB_MODE"):
        value = environ["WANDB_MODE"]
        if value not in ENV_MODES:
            raise ValueError(f"WANDB_MODE={value!r}: wandb accepts {', '.join(ENV_MODES)}; unset it to let rt_lab "
                             "decide")
        return WandbMode(ENV_MODES[value], f"WANDB_MODE={value}")
    host = base_url(environ)
    source = credentials_source(environ, host)
    offline_fix = ("runs are saved under each run dir's wandb/; upload them with "
                   "`wandb sync <run dir>/wandb/offline-run-*`")
    if source is None:
        return WandbMode("offline", f"no W&B credentials (WANDB_API_KEY, `wandb login`, or a .netrc entry for "
                                    f"{urlsplit(host).netloc}); {offline_fix}")
    problem = unreachable(host)
    if problem:
        return WandbMode("offline", f"credentials found ({source}) but {host} did not answer ({problem}); "
                                    f"{offline_fix} from a machine that reaches it, or set logger.wandb.mode=offline "
                                    "to skip this check", warning=True)
    return WandbMode("online", f"credentials from {source}, {host} answers")


def settings_file(environ: os._Environ[str] | dict[str, str]) -> Path:
    """wandb's global settings file (`wandb login --host` writes the host there)."""
    config_dir = environ.get("WANDB_CONFIG_DIR")
    return Path(config_dir).expanduser() / "settings" if config_dir else Path.home() / ".config" / "wandb" / "settings"


def settings_value(environ: os._Environ[str] | dict[str, str], key: str) -> str | None:
    parser = configparser.ConfigParser()
    try:
        parser.read(settings_file(environ))
    except configparser.Error as err:
        raise ValueError(f"{settings_file(environ)}: unreadable W&B settings file ({err})") from err
    return parser.get("default", key, fallback=None) or None


def base_url(environ: os._Environ[str] | dict[str, str]) -> str:
    return (environ.get("WANDB_BASE_URL") or settings_value(environ, "base_url") or DEFAULT_BASE_URL).rstrip("/")


def credentials_source(environ: os._Environ[str] | dict[str, str], host: str) -> str | None:
    """Where wandb would find credentials for `host`, or None."""
    for variable in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        if environ.get(variable):
            return variable
    if settings_value(environ, "api_key"):
        return str(settings_file(environ))
    path = Path(environ["NETRC"]).expanduser() if environ.get("NETRC") else Path.home() / ".netrc"
    try:
        entry = netrc.netrc(path).authenticators(urlsplit(host).netloc)
    except FileNotFoundError:
        return None
    except (netrc.NetrcParseError, OSError) as err:
        raise ValueError(f"{path}: unreadable .netrc ({err}); fix it or set logger.wandb.mode") from err
    return str(path) if entry and entry[2] else None


def unreachable(host: str) -> str | None:
    """None when `host` answers an HTTP request (any status) within REACHABLE_TIMEOUT_S, else what went wrong."""
    try:
        urllib.request.urlopen(urllib.request.Request(host, method="HEAD"), timeout=REACHABLE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, ValueError) as err:
        return str(getattr(err, "reason", err))
    return None
