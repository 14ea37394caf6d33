"""Instruction similarity (Hewitt et al. §5.2, Fig. 5): does a single-task model answer an instruction more like its
task's responses the more the instruction resembles its task's instructions?

For every instruction a run answered (its `model_outputs.json`), with sentence embeddings (rt_lab.analysis.embeddings)
and cosine similarity:
  x = mean similarity of the instruction to the task's training instructions;
  y = mean similarity of the run's response to the task's training responses minus mean similarity to the general
      set's responses (LIMA: every assistant turn of its training rows).
The task's rows are the ones the run trained on when the task is the run's own dataset (its saved config), else
`conf/dataset/<task>.yaml` as a launch would load it; the general set is `conf/dataset/<general>.yaml`. Files
come from the run's `paths.data_dir` (or `--data-dir`) as in a launch.

    python -m rt_lab.analysis.similarity RUN_DIR --task gsm8k

writes, under RUN_DIR/analysis/similarity_<task>/ (or --out): `points.csv` (one row per instruction), `scatter.png`,
`summary.json` (Spearman's rank correlation of x and y, with ties averaged) and `embeddings/` (a cache per text set:
a rerun embeds only what changed)."""

from __future__ import annotations

import argparse
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from omegaconf import OmegaConf

from rt_lab.config.dataset import DatasetConfig
from rt_lab.config.root import RootConfig
from rt_lab.analysis.embeddings import Embed, Encoder, describe, texts_key
from rt_lab.compare.runs import Run, load_run
from rt_lab.io import atomic_write_bytes, atomic_write_json
from rt_lab.layout import RunDir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inputs:
    """Everything the analysis embeds: the run's (instruction, output) pairs and the two training sets' texts."""

    instructions: list[str]
    outputs: list[str]
    task_instructions: list[str]
    task_responses: list[str]
    general_responses: list[str]


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n; tied values share the mean of the ranks they span (as scipy.stats.rankdata's default)."""
    _, group, counts = np.unique(np.asarray(values, dtype=float), return_inverse=True, return_counts=True)
    # a group of `count` equal values ends at rank cumsum(counts); its ranks' mean lies (count - 1) / 2 below that
    return (np.cumsum(counts) - (counts - 1) / 2)[group]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: the Pearson correlation of the average ranks; NaN when either side is constant."""
    rx, ry = average_ranks(x), average_ranks(y)
    if len(rx) < 2 or rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def unit_rows(vectors: np.ndarray, label: str) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{label}: {int((norms == 0).sum())} embeddings are all zeros; cosine is undefined")
    return vectors / norms


def mean_cosine(rows: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """For each unit row, its mean cosine with the unit rows of `pool` (= its dot product with their mean)."""
    return rows @ pool.mean(axis=0)


def similarity_points(inputs: Inputs, embed: Embed, cache: Path | None = None) -> list[dict[str, Any]]:
    """One row per answered instruction: x, y and y's two parts."""
    unit = {name: unit_rows(embedded(embed, texts, name, cache), name) for name, texts in vars(inputs).items()}
    x = mean_cosine(unit["instructions"], unit["task_instructions"])
    to_task = mean_cosine(unit["outputs"], unit["task_responses"])
    to_general = mean_cosine(unit["outputs"], unit["general_responses"])
    return [{"instruction": instruction, "output": output, "x_instruction_to_task": float(xi),
             "response_to_task": float(task), "response_to_general": float(general), "y": float(task - general)}
            for instruction, output, xi, task, general in zip(inputs.instructions, inputs.outputs, x, to_task,
                                                               to_general)]


def embedded(embed: Embed, texts: Sequence[str], label: str, cache: Path | None) -> np.ndarray:
    """`embed(texts)`, or the cached vectors of the same embedder and texts (`<cache>/<label>.npz`)."""
    if not texts:
        raise ValueError(f"{label}: nothing to embed")
    key = texts_key(describe(embed), texts)
    path = cache / f"{label}.npz" if cache else None
    if path and path.is_file():
        with np.load(path) as saved:
            if str(saved["key"]) == key:
                log.info("%s: cached embeddings (%s)", label, path)
                return saved["vectors"]
    vectors = np.asarray(embed(texts, label), dtype=np.float32)
    if vectors.shape[0] != len(texts):
        raise ValueError(f"{label}: the embedder returned {vectors.shape[0]} vectors for {len(texts)} texts")
    if path:
        save_npz(path, vectors=vectors, key=np.array(key))
    return vectors


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


# --- where the texts come from --------------------------------------------------------------------------------


def finished_run(run_dir: Path) -> Run:
    """The run (rt_lab.compare's view of a job dir) whose answers the analysis reads."""
    layout = RunDir(run_dir)
    if not layout.hydra_config.is_file():
        raise FileNotFoundError(f"{run_dir}: no {layout.hydra_config.relative_to(run_dir)}; give a run dir "
                                "(one job of a launch)")
    if not layout.outputs.is_file():
        raise FileNotFoundError(f"{run_dir}: no {layout.outputs.name}; the run has not finished generating")
    return load_run(run_dir)


def dataset_config(run_cfg: RootConfig, name: str) -> DatasetConfig:
    """The run's own dataset config when it is `name` (the rows it trained on), else conf/dataset/<name>.yaml."""
    if OmegaConf.select(run_cfg, "dataset.name") == name:
        return run_cfg.dataset
    from hydra.errors import MissingConfigException

    from rt_lab.overrides import compose_root

    try:
        return compose_root([f"dataset={name}"]).dataset
    except MissingConfigException as err:
        raise ValueError(f"no dataset config {name!r} (conf/dataset/{name}.yaml)") from err


def turns(rows: Sequence[Any], role: str, dataset: str, first_only: bool) -> list[str]:
    texts = []
    for row in rows:
        found = [m.content for m in row.messages if m.role == role]
        if not found:
            raise ValueError(f"dataset {dataset} row {row.id}: no {role} turn")
        texts.extend(found[:1] if first_only else found)
    return texts


def load_inputs(run: Run, task: str, general: str = "lima", data_dir: str | None = None,
                general_limit: int | None = None) -> Inputs:
    from rt_lab.data.datasets import load_rows

    data_dir = data_dir or OmegaConf.select(run.cfg, "paths.data_dir")
    answered = run.outputs()
    task_cfg, general_cfg = dataset_config(run.cfg, task), dataset_config(run.cfg, general)
    if general_limit:
        general_cfg = OmegaConf.merge(general_cfg, {"limit": general_limit, "sample": None})
    task_rows, general_rows = load_rows(task_cfg, data_dir), load_rows(general_cfg, data_dir)
    return Inputs(instructions=[record["instruction"] for record in answered],
                  outputs=[record["output"] for record in answered],
                  task_instructions=turns(task_rows, "user", task, first_only=True),
                  task_responses=turns(task_rows, "assistant", task, first_only=True),
                  general_responses=turns(general_rows, "assistant", general, first_only=False))


# --- outputs --------------------------------------------------------------------------------------------------


def scatter(points: Sequence[dict[str, Any]], rho: float, task: str, general: str, title: str, path: Path) -> Path:
    from rt_lab.compare.plots import pyplot, save_figure

    figure, axis = pyplot().subplots(figsize=(5.5, 4.5))
    axis.scatter([p["x_instruction_to_task"] for p in points], [p["y"] for p in points], s=10, alpha=0.6)
    axis.axhline(0, color="grey", linestyle="--", linewidth=1)
    axis.set_xlabel(f"instruction similarity to {task} training instructions")
    axis.set_ylabel(f"response similarity: {task} minus {general} responses")
    axis.set_title(f"{title}\nSpearman rho = {rho:.3f} (n = {len(points)})", fontsize=9)
    return save_figure(figure, path)


def analyse(run_dir: Path, task: str, embed: Embed, general: str = "lima", data_dir: str | None = None,
            general_limit: int | None = None, out: Path | None = None) -> dict[str, Any]:
    """Run the analysis on one run dir and write its files; returns the summary."""
    from rt_lab.compare.report import write_csv

    out = out or RunDir(run_dir).analysis_dir(f"similarity_{task}")
    run = finished_run(run_dir)
    inputs = load_inputs(run, task, general, data_dir, general_limit)
    points = similarity_points(inputs, embed, out / "embeddings")
    rho = spearman([p["x_instruction_to_task"] for p in points], [p["y"] for p in points])
    summary = {"run": str(run_dir), "run_name": run.name, "task": task, "general": general, "embedder": describe(embed),
               "n": len(points), "spearman": rho, "n_task_rows": len(inputs.task_instructions),
               "n_general_responses": len(inputs.general_responses),
               "mean_x": float(np.mean([p["x_instruction_to_task"] for p in points])),
               "mean_y": float(np.mean([p["y"] for p in points]))}
    write_csv(out / "points.csv", points)
    scatter(points, rho, task, general, run.name, out / "scatter.png")
    atomic_write_json(out / "summary.json", summary)
    return summary


def main(argv: Sequence[str] | None = None, prog: str = "python -m rt_lab.analysis.similarity") -> None:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--task", help="the single-task dataset (conf/dataset/<task>.yaml); default: the run's own")
    parser.add_argument("--general", default="lima", help="the general set whose responses y subtracts (default lima)")
    parser.add_argument("--general-limit", type=int, help="only the general set's first N rows (a quick look)")
    parser.add_argument("--embedder", default="minilm",
                        help="minilm (offline default), nomic (Hewitt et al.'s nomic-ai/nomic-embed-text-v1), or "
                             "any Hub id or model folder")
    parser.add_argument("--prefix", default="", help="text put before every input (nomic's task prefixes, e.g. "
                                                     "'clustering: ')")
    parser.add_argument("--max-length", type=int, default=256, help="tokens embedded per text (default 256)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", help="the dataset mirror (default: the run's paths.data_dir)")
    parser.add_argument("--out", type=Path, help="default RUN_DIR/analysis/similarity_<task>/")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    task = args.task or own_task(args.run_dir)
    embed = Encoder(args.embedder, args.max_length, args.batch_size, args.prefix, args.device)
    summary = analyse(args.run_dir, task, embed, args.general, args.data_dir, args.general_limit, args.out)
    out = args.out or RunDir(args.run_dir).analysis_dir(f"similarity_{task}")
    print(f"Spearman rho (x: instruction similarity to {task}, y: response similarity {task} - {args.general}) = "
          f"{summary['spearman']:.4f} over {summary['n']} instructions\nwritten: {out}", flush=True)


def own_task(run_dir: Path) -> str:
    dataset = finished_run(run_dir).cfg.dataset
    if not dataset.get("single_task"):
        raise ValueError(f"{run_dir}: the run trained on {dataset.name}, not a single task; name one with --task")
    return str(dataset.name)


if __name__ == "__main__":
    main()
