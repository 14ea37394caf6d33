"""The items of a human study: for each `A:B` pair of methods, every finished run of method A is matched with
its run of method B exactly as the sweep comparison matches a run with its reference (rt_lab.compare.runs:
`compare.reference.match`, by default the same model, dataset, seed, prompts and max_new_tokens), and each
instruction both answered becomes one item: the instruction and the two responses."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf

from rt_lab.compare.judging import align
from rt_lab.compare.runs import describe, find_runs, pair_runs, varying_overrides


@dataclass(frozen=True)
class Item:
    id: str  # a hash of the pair, the two run dirs and the instruction: stable across serves, says nothing
    pair: str  # "rt:it"
    method_a: str  # the methods as the comparison tables name them (a rule head's rules included)
    method_b: str
    model: str
    dataset: str
    seed: str
    setting: str  # the overrides that vary between the sweep's A runs (e.g. dataset.refusal_mix=100)
    run_a: str  # run.name of each side
    run_b: str
    dir_a: str  # each run dir, relative to the sweep dir
    dir_b: str
    instruction: str
    response_a: str
    response_b: str

    def record(self) -> dict[str, str]:
        return asdict(self)


def parse_pairs(spec: str) -> list[tuple[str, str]]:
    """"rt:it,base:it" -> [("rt", "it"), ("base", "it")]."""
    pairs = []
    for part in spec.split(","):
        a, colon, b = part.strip().partition(":")
        if not colon or not a or not b or ":" in b:
            raise ValueError(f"--pairs {spec!r}: {part!r} is not METHOD_A:METHOD_B (e.g. rt:it)")
        if a == b:
            raise ValueError(f"--pairs {spec!r}: {part!r} pairs a method with itself")
        pairs.append((a, b))
    if len(set(pairs)) < len(pairs):
        raise ValueError(f"--pairs {spec!r}: a pair is given twice")
    return pairs


def build_items(sweep_dir: Path, pairs: Sequence[tuple[str, str]], match: Sequence[str] | None = None,
                sample: int | None = None) -> tuple[list[Item], list[str]]:
    """Every item of the study and lines naming the runs left out (unfinished, or without a partner). `match`:
    the config keys both runs of a pair share (default: the sweep's `compare.reference.match`); `sample`: keep
    this many instructions, drawn once (seed 0) from all the study's instructions, in every run pair."""
    runs = find_runs(sweep_dir)
    methods = sorted({str(run.value("method")) for run in runs})
    items: list[Item] = []
    notes: list[str] = []
    for a, b in pairs:
        for method in (a, b):
            if method not in methods:
                raise ValueError(f"--pairs {a}:{b}: no run in {sweep_dir} has method {method} (its methods: "
                                 f"{methods})")
        side_a = [run for run in runs if run.value("method") == a]
        keys = list(match) if match is not None else list(side_a[0].cfg.compare.reference.match)
        selector = OmegaConf.create({"reference": {"select": {"method": b}, "match": keys, "multiple": "error",
                                                   "sweep": None, "file": None}})
        try:
            matched, unpaired = pair_runs([run for run in runs if run.value("method") in (a, b)], selector)
        except ValueError as err:
            raise ValueError(f"--pairs {a}:{b}: {err} (here: --match KEY,... sets the keys, now {keys})") from err
        notes += [f"{a}:{b}: {line}" for line in unpaired]
        notes += [f"{a}:{b}: {run.name} ({run.dir.name}) is unfinished" for run in side_a if not run.done]
        varying = varying_overrides(side_a)
        for run, reference in matched:
            described = describe(run, varying)
            method_b = describe(reference.run, set())["method"]
            dir_a, dir_b = (str(r.dir.relative_to(sweep_dir)) for r in (run, reference.run))
            seen: set[str] = set()
            for instruction, output, other in zip(*align(run, reference)):
                key = json.dumps([f"{a}:{b}", dir_a, dir_b, instruction], ensure_ascii=False)
                item_id = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
                if item_id in seen:
                    raise ValueError(f"{run.layout.outputs}: the instruction {instruction[:60]!r} is answered "
                                     "twice; a study rates each instruction once per pair of runs")
                seen.add(item_id)
                items.append(Item(item_id, f"{a}:{b}", described["method"], method_b, str(described["model"]),
                                  str(described["dataset"]), str(described["seed"]), described["setting"],
                                  run.name, reference.run.name, dir_a, dir_b, instruction, output, other))
    if sample is not None:
        instructions = sorted({item.instruction for item in items})
        random.Random(0).shuffle(instructions)
        kept = set(instructions[:sample])
        items = [item for item in items if item.instruction in kept]
    return items, notes
