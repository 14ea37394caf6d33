"""`python -m rt_lab.human serve SWEEP_DIR --pairs rt:it [--raters N|NAME,...] [--port P]` runs the rating web
app; `python -m rt_lab.human report SWEEP_DIR` writes the tables and the plot."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from rt_lab.human.moderation import load_filter, regex_filter
from rt_lab.human.pairing import parse_pairs
from rt_lab.human.study import DEFAULT_RATERS, open_study
from rt_lab.layout import SweepDir


def serve_command(args: argparse.Namespace) -> None:
    try:
        from rt_lab.human.app import serve
    except ImportError as err:
        raise SystemExit(f"rt_lab.human serve needs Flask ({err}): pip install 'rt_lab[human]'") from err

    sweep = existing_sweep(args.sweep_dir)
    filters = ([regex_filter(pattern, "hide") for pattern in args.hide]
               + [regex_filter(pattern, "flag") for pattern in args.flag]
               + [load_filter(spec) for spec in args.moderation])
    match = [key.strip() for key in args.match.split(",")] if args.match else None
    study = open_study(sweep, parse_pairs(args.pairs), args.raters, match, args.sample, filters, args.db)
    store, verdicts = study.store, study.verdicts
    hidden = sum(v is not None and v.action == "hide" for v in verdicts.values())
    flagged = sum(v is not None and v.action == "flag" for v in verdicts.values())
    print(f"rt_lab.human: {len(study.items)} items ({hidden} hidden, {flagged} flagged by moderation) from {sweep}; "
          f"ratings in {store.path}", *(f"  left out: {note}" for note in study.notes), sep="\n", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"rt_lab.human: --host {args.host}: rater links travel unencrypted; keep it to a trusted network",
              flush=True)

    def ready(port: int) -> None:
        host = f"[{args.host}]" if ":" in args.host else args.host
        for rater in store.raters():
            print(f"  {rater.name}: http://{host}:{port}/r/{rater.token}", flush=True)
        print(f"rt_lab.human: serving on http://{host}:{port}/ (Ctrl-C stops; every rating is already saved)",
              flush=True)

    serve(store, args.host, args.port, ready)


def report_command(args: argparse.Namespace) -> None:
    from rt_lab.human.report import write_report

    sweep = existing_sweep(args.sweep_dir)
    text = write_report(sweep, args.db)
    layout = SweepDir(sweep)
    print(text, f"written under {layout.human}: {layout.human_report_md.name}, {layout.human_ratings_csv.name}, "
                f"{layout.human_acceptability_csv.name}, {layout.human_preferences_csv.name}, "
                f"{layout.human_preferences_plot.name}, {layout.human_agreement_csv.name}, "
                f"{layout.human_judge_agreement_csv.name}", sep="\n")


def existing_sweep(path: Path) -> Path:
    if not path.is_dir():
        raise SystemExit(f"rt_lab.human: {path}: no such sweep dir")
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rt_lab.human",
                                     description="Human evaluation of a sweep's outputs (An et al. §4).")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="the rating web app")
    serve.add_argument("sweep_dir", type=Path)
    serve.add_argument("--pairs", required=True,
                       help="METHOD_A:METHOD_B[,...] (method.name of the runs), e.g. rt:it")
    serve.add_argument("--raters", help=f"N (rater1..N) or NAME,NAME,...; default: those of an earlier serve, "
                                        f"else {DEFAULT_RATERS}. Each gets a link with a secret token")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000, help="0: any free port")
    serve.add_argument("--match", help="config keys the two runs of a pair share (default: the sweep's "
                                       "compare.reference.match), e.g. model,dataset,trainer.seed")
    serve.add_argument("--sample", type=int, help="rate this many instructions (drawn once, seed 0), not all")
    serve.add_argument("--hide", action="append", default=[], metavar="REGEX",
                       help="hide items whose instruction or a response matches (case-insensitive)")
    serve.add_argument("--flag", action="append", default=[], metavar="REGEX",
                       help="show matching items under a content warning")
    serve.add_argument("--moderation", action="append", default=[], metavar="MODULE:FUNCTION",
                       help="a filter (instruction, responses) -> rt_lab.human.Moderation(action, reason) or None")
    serve.add_argument("--db", type=Path, help="the ratings database (default: SWEEP_DIR/human/ratings.sqlite)")
    serve.set_defaults(run=serve_command)
    report = commands.add_parser("report", help="tables, plot and agreement from the ratings so far")
    report.add_argument("sweep_dir", type=Path)
    report.add_argument("--db", type=Path, help="the ratings database (default: SWEEP_DIR/human/ratings.sqlite)")
    report.set_defaults(run=report_command)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"rt_lab.human: {err}")


if __name__ == "__main__":
    main()
