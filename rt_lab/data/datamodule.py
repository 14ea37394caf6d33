"""Training data as optimizer-step windows: each item is every micro-batch one rank computes for one step.

A window holds `batch_size` rows (global, across ranks). Inside it rows are sorted by length and either padded
into micro-batches or packed into bins, which only changes the compute, never the rows or the loss of the step.
Windows come from a seeded per-epoch shuffle, so a resumed run re-derives its position from `global_step`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import lightning as L
import torch

from rt_lab.data.collate import Batch, collate_padded
from rt_lab.data.datasets import load_rows
from rt_lab.data.masking import IGNORE, Example, encode_rows
from rt_lab.data.methods import user_turns
from rt_lab.data.packing import best_fit_decreasing, collate_packed
from rt_lab.data.templates import Template

log = logging.getLogger(__name__)

def count_windows(num_examples: int, batch_size: int, world_size: int) -> int:
    full, tail = divmod(num_examples, batch_size)
    return full + (tail >= world_size)  # a tail window must give every rank a row


@dataclass(frozen=True)
class Batching:
    """How rows become optimizer steps (the `data/` config): `batch_size` rows a step across all devices, in
    micro-batches of `micro_batch_size` rows or packed bins of `pack_length` tokens, in a `seed`ed per-epoch
    shuffle."""

    batch_size: int
    micro_batch_size: int
    packing: bool = False
    pack_length: int = 0
    shuffle: bool = True
    seed: int = 0

    @classmethod
    def from_config(cls, data: Any) -> Batching:
        # By default a packed micro-batch holds as many tokens as the largest padded one would.
        pack_length = data.get("pack_length") or data.micro_batch_size * data.max_length
        if pack_length < data.max_length:
            raise ValueError(f"data.pack_length={pack_length} is shorter than data.max_length={data.max_length}")
        return cls(data.batch_size, data.micro_batch_size, data.packing, pack_length, data.shuffle, data.seed)


@dataclass
class WindowLoader:
    """Iterable of optimizer-step windows (lists of micro-batch dicts) for one rank. `position(windows)` gives the
    (epoch, first window) to start from: Lightning's restored step on a resume."""

    examples: Sequence[Example]
    batching: Batching
    pad_id: int
    rank: int = 0
    world_size: int = 1
    position: Callable[[int], tuple[int, int]] = lambda windows: (0, 0)

    def __post_init__(self) -> None:
        if self.batching.batch_size % self.world_size:
            raise ValueError(f"data.batch_size={self.batching.batch_size} is not divisible by the "
                             f"{self.world_size} devices")
        self.num_windows = count_windows(len(self.examples), self.batching.batch_size, self.world_size)

    def __len__(self) -> int:
        return self.num_windows

    def order(self, epoch: int) -> list[int]:
        if not self.batching.shuffle:
            return list(range(len(self.examples)))
        generator = torch.Generator().manual_seed(self.batching.seed + epoch)
        return torch.randperm(len(self.examples), generator=generator).tolist()

    def window(self, order: Sequence[int], index: int) -> list[Batch]:
        rows = [self.examples[i] for i in order[index * self.batching.batch_size:(index + 1) * self.batching.batch_size]]
        rows.sort(key=lambda example: -len(example.input_ids))
        mine = rows[self.rank::self.world_size]
        if self.batching.packing:
            bins = best_fit_decreasing([len(example.input_ids) for example in mine], self.batching.pack_length)
            return [collate_packed([mine[i] for i in b]) for b in bins]
        return [collate_padded(mine[i:i + self.batching.micro_batch_size], self.pad_id)
                for i in range(0, len(mine), self.batching.micro_batch_size)]

    def __iter__(self) -> Iterator[list[Batch]]:
        epoch, start = self.position(self.num_windows)
        order = self.order(epoch)
        for index in range(start, self.num_windows):
            yield self.window(order, index)

    # Lightning checks for this interface before trusting a mid-epoch resume; the position itself is
    # re-derived from the restored global step, so the state only guards against a changed data setup.
    def state_dict(self) -> dict[str, Any]:
        return {"num_examples": len(self.examples), "batch_size": self.batching.batch_size, "seed": self.batching.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state != self.state_dict():
            raise ValueError(f"checkpoint was written for data {state}, but this run has {self.state_dict()}")


class InstructionDataModule(L.LightningDataModule):
    """Loads a dataset config, applies the method's user-turn transform, renders, tokenizes and labels it."""

    def __init__(self, data: Any, dataset: Any, method: Any, template: Template, tokenizer: Any, bos: str,
                 data_dir: str | None = None) -> None:
        super().__init__()
        self.batching = Batching.from_config(data)
        self.max_length = data.max_length
        self.dataset_cfg = dataset
        self.method = method
        self.template = template
        self.tokenizer = tokenizer
        self.bos = bos
        self.data_dir = data_dir
        self.examples: list[Example] = []

    def setup(self, stage: str | None = None) -> None:
        if self.examples:
            return
        transform = user_turns(self.method.user_turns)
        rows = [transform(row) for row in load_rows(self.dataset_cfg, self.data_dir)]
        self.examples = encode_rows(rows, self.template, self.tokenizer, self.method.loss_on, self.max_length,
                                    self.bos)
        supervised = sum(example.num_supervised for example in self.examples)
        log.info("%d training rows, %d supervised tokens", len(self.examples), supervised)

    def steps_per_epoch(self) -> int:
        """Optimizer steps (windows) per epoch, after the trainer's `limit_train_batches`."""
        trainer = self.trainer
        windows = count_windows(len(self.examples), self.batching.batch_size, trainer.world_size if trainer else 1)
        limit = trainer.limit_train_batches if trainer else 1.0
        return min(windows, limit) if isinstance(limit, int) else int(windows * limit)

    def _position(self, windows: int) -> tuple[int, int]:
        """(epoch, first window) for the iterator Lightning is about to start: one optimizer step per window.
        Lightning restores global_step before it first iterates the training data."""
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        epoch = trainer.current_epoch
        return epoch, max(0, trainer.global_step - epoch * self.steps_per_epoch())

    def train_dataloader(self) -> WindowLoader:
        trainer = self.trainer
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            raise ValueError(f"tokenizer {self.tokenizer.name_or_path!r} has no pad token; set model.pad_token")
        return WindowLoader(self.examples, self.batching, pad_id,
                            rank=trainer.global_rank if trainer else 0, world_size=trainer.world_size if trainer else 1,
                            position=self._position)
