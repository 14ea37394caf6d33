"""A sweeper for paired (zipped) values: the cartesian product of `params` (and command-line sweeps) times a
list of `paired` arms, each arm a list of overrides that go together (e.g. a method with its epoch count, a
model with its learning rate), so paper grids need no cartesian explosion. Every job is composed before any is
launched; one that does not compose (an unknown key, a wrong type) stops the sweep naming the job, as does a sweep
dir that cannot be written."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException

from rt_lab.overrides import override_key


class PairedSweeper(BasicSweeper):
    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None,
                 paired: Sequence[Sequence[str]] | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.paired = [list(arm) for arm in (paired or [])]

    def sweep(self, arguments: list[str]) -> Any:
        from rt_lab.config.validate import ConfigError
        from rt_lab.preflight import writable

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        why = writable(sweep_dir)
        if why:
            raise ConfigError(f"hydra.sweep.dir={sweep_dir}: cannot write there ({why}); set paths.output_dir (or "
                              "hydra.sweep.dir) to a writable dir. Nothing was launched")
        return super().sweep(arguments)

    def split_arguments(self, overrides: list[Override], max_batch_size: int | None) -> list[list[list[str]]]:
        (jobs,) = BasicSweeper.split_arguments(overrides, None)
        if self.paired:
            swept = {override.get_key_element() for override in overrides}
            for arm in self.paired:
                clash = swept & {override_key(item) for item in arm}
                if clash:
                    raise HydraException(f"hydra.sweeper.paired arm {arm} sets {sorted(clash)}, which params or the "
                                         "command line already sweep or set")
            jobs = [job + arm for job in jobs for arm in self.paired]
        if max_batch_size is None:
            return [jobs]
        return [list(chunk) for chunk in BasicSweeper.split_overrides_to_chunks(jobs, max_batch_size)]

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        for index, overrides in enumerate(batch):
            try:
                self.hydra_context.config_loader.load_sweep_config(master_config=self.config,
                                                                   sweep_overrides=list(overrides))
            except HydraException as err:
                from rt_lab.config.validate import ConfigError

                number = getattr(self, "job_idx", 0) + index
                raise ConfigError(f"job #{number} ({' '.join(overrides)}) does not compose; nothing was launched:\n"
                                  f"{err}") from err


