"""Training processes SIGKILLed at chosen points of their checkpoint saves (tests/test_checkpoint_kills.py).

    python tests/checkpoint_kill_worker.py PLAN.json

PLAN.json: {"runs": [{"dir": D, "overrides": [...], "kill_at": K or null, "delay_s": S, "states": bool}, ...]},
run in order. Each run is a child process forked from this one (the imports are done once here; nothing is
computed before a fork) that trains the tiny model in D from whatever D holds, as `run()` trains: a real Lightning
Trainer, a checkpoint every step, resuming from D/checkpoints/last.ckpt. Every file-system operation under
D/checkpoints is appended to D/events.jsonl before it happens (Python's audit events: an open for writing, rename,
remove, rmdir, mkdir, rmtree). With `kill_at` K the K-th one is never done: the child SIGKILLs itself there,
or `delay_s` later from another thread (a point inside the write, or the computation after it). `states`: the
module's weights after every step go to D/states/<step>.pt (the uninterrupted reference). The exit status of each
child is written to D/exit.json."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RT_LAB_ROOT", str(REPO))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

import rt_lab  # noqa: E402,F401  (registers the config resolvers)
from rt_lab.models import load_model, load_tokenizer, resolve_path  # noqa: E402
from rt_lab.train.fit import train  # noqa: E402

WRITE_MODES = set("wax+")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class KillPoints:
    """An audit hook: logs each file-system change under `folder` before it happens and dies at the K-th."""

    def __init__(self, folder: Path, log: Path, kill_at: int | None, delay_s: float) -> None:
        self.folder, self.kill_at, self.delay_s = str(folder), kill_at, delay_s
        self.log = log.open("a", buffering=1)  # a line is in the kernel's hands as soon as it is written
        self.count = 0
        self.in_rmtree = False  # rmtree removes what it holds by names relative to a folder's descriptor

    def __call__(self, event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            if (mode is None and flags & WRITE_FLAGS) or (mode is not None and WRITE_MODES & set(str(mode))):
                self.absolute(event, path)
        elif event == "shutil.rmtree":
            self.absolute(event, args[0])
            self.in_rmtree = self.under(args[0])  # after `absolute`, which ends an earlier rmtree
        elif event in ("os.rename", "os.remove", "os.rmdir", "os.mkdir"):
            if args[-1] not in (None, -1):  # a name relative to a folder's descriptor: rmtree emptying a folder
                if self.in_rmtree:
                    self.point(event, f"(in rmtree) {args[0]}")
            else:
                self.absolute(event, args[0], args[1] if event == "os.rename" else None)

    def under(self, path: object) -> bool:
        return isinstance(path, (str, bytes, os.PathLike)) and os.fsdecode(path).startswith(self.folder)

    def relative(self, path: object) -> str:
        """A path under the folder as it is named in the events: relative to it ("." for the folder itself)."""
        return os.fsdecode(path).removeprefix(self.folder).removeprefix("/") or "."

    def absolute(self, event: str, path: object, target: object = None) -> None:
        self.in_rmtree = False
        if self.under(path):
            shown = self.relative(path)
            if target is not None:
                shown += f" -> {self.relative(target)}"
            self.point(event, shown)

    def point(self, event: str, what: str) -> None:
        self.count += 1
        self.log.write(json.dumps({"n": self.count, "event": event, "path": what}) + "\n")
        if self.count == self.kill_at:
            if self.delay_s:
                threading.Thread(target=self.die_after, daemon=True).start()
            else:
                os.kill(os.getpid(), signal.SIGKILL)

    def die_after(self) -> None:
        time.sleep(self.delay_s)
        os.kill(os.getpid(), signal.SIGKILL)


class States(L.Callback):
    """The module's weights after every optimizer step, outside the checkpoints folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        from rt_lab.train.fsdp import full_module_state

        state = {key: value.detach().clone() for key, value in full_module_state(trainer.strategy).items()}
        self.folder.mkdir(parents=True, exist_ok=True)
        torch.save(state, self.folder / f"{trainer.global_step}.pt")


def train_in(run: dict, cfg) -> None:
    """The child: train as `run` says, then exit."""
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    folder = Path(run["dir"])
    checkpoints = folder / "checkpoints"
    sys.addaudithook(KillPoints(checkpoints, folder / "events.jsonl", run.get("kill_at"), run.get("delay_s", 0.0)))
    L.seed_everything(cfg.trainer.seed)
    path = resolve_path(cfg.model, None)
    model = load_model(cfg.model, path)
    callbacks = [States(folder / "states")] if run.get("states") else []
    train(cfg, model, load_tokenizer(cfg.model, path), instantiate(cfg.template), folder, [], callbacks)


def main(plan_file: str) -> None:
    plan = json.loads(Path(plan_file).read_text())
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        configs = [compose("config", overrides=run["overrides"], return_hydra_config=True) for run in plan["runs"]]
    for run, cfg in zip(plan["runs"], configs):
        folder = Path(run["dir"])
        folder.mkdir(parents=True, exist_ok=True)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                train_in(run, cfg)
            except BaseException as err:  # a failure is the test's to read, not this loop's
                print(f"{folder}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
                code = 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        exits = json.loads((folder / "exit.json").read_text()) if (folder / "exit.json").is_file() else []
        exits.append({"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"code": os.WEXITSTATUS(status)})
        (folder / "exit.json").write_text(json.dumps(exits))


if __name__ == "__main__":
    main(sys.argv[1])
