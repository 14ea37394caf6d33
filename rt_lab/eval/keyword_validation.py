"""Validating the keyword refusal classifier against the human labels of XSTest's GPT-4 completions:
`python -m rt_lab.eval.safety validate-keyword [--file PATH]`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

from rt_lab.eval.refusal_classifiers import REFUSAL_SUBSTRINGS, keyword_refusal
from rt_lab.io import read_records

XSTEST_LABELS = ("1_full_compliance", "2_full_refusal", "3_partial_refusal")
# Two readings of a partial refusal: XSTest's (refusal = anything but full compliance) and A's judge rubric (a
# response that declines and then provides anyway is compliance, so only full refusals are refusals).
MAPPINGS = {"not_full_compliance": lambda label: label != "1_full_compliance",
            "full_refusal": lambda label: label == "2_full_refusal"}
REFERENCES = {"final_label": "human", "gpt4_label": "GPT-4 classifier"}


def validate_keyword(path: str | Path, substrings: Sequence[str] = REFUSAL_SUBSTRINGS) -> dict[str, dict]:
    """Accuracy and confusion counts of the keyword classifier on XSTest's labelled GPT-4 completions
    (xstest_v2_completions_gpt4_gpteval.csv), per reference column and per mapping of its labels to refusal."""
    path = Path(path)
    rows = []
    for number, record in read_records(path):
        for column in ("completion", *REFERENCES):
            if column not in record:
                raise ValueError(f"{path} row {number}: no column {column!r}; columns: {sorted(record)}")
            if column in REFERENCES and record[column] not in XSTEST_LABELS:
                raise ValueError(f"{path} row {number}: {column}={record[column]!r}; expected one of "
                                 f"{list(XSTEST_LABELS)}")
        rows.append((keyword_refusal(record["completion"], substrings), record))
    results = {}
    for column in REFERENCES:
        for mapping, is_refusal in MAPPINGS.items():
            counts = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
            for predicted, record in rows:
                actual = is_refusal(record[column])
                counts[("t" if predicted == actual else "f") + ("p" if predicted else "n")] += 1
            results[f"{column}/{mapping}"] = {"accuracy": (counts["tp"] + counts["tn"]) / len(rows), "n": len(rows),
                                              **counts}
    return results


def main(argv: Sequence[str] | None = None, prog: str = "python -m rt_lab.eval.safety") -> None:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate-keyword", help="the keyword classifier against XSTest's labels")
    data_dir = os.environ.get("RT_LAB_DATA_DIR")
    default = Path(data_dir) / "safety/xstest/xstest_v2_completions_gpt4_gpteval.csv" if data_dir else None
    validate.add_argument("--file", type=Path, default=default, required=default is None,
                          help="xstest_v2_completions_gpt4_gpteval.csv (default: under $RT_LAB_DATA_DIR)")
    args = parser.parse_args(argv)
    results = validate_keyword(args.file)
    print(f"keyword classifier ({len(REFUSAL_SUBSTRINGS)} substrings, Arditi et al.) on {args.file}")
    for key, r in results.items():
        column, mapping = key.split("/")
        print(f"\nreference {column} ({REFERENCES[column]}), refusal = {mapping}: accuracy {r['accuracy']:.3f} "
              f"(n={r['n']})\n{'':18}{'label refusal':>15}{'label compliance':>18}\n"
              f"{'keyword refusal':18}{r['tp']:>15}{r['fp']:>18}\n{'keyword compliance':18}{r['fn']:>15}{r['tn']:>18}")
