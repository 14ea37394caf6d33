"""`python -m rt_lab.human serve SWEEP_DIR --pairs rt:it [--raters N|NAME,...] [--port P]` runs the rating web
app; `python -m rt_lab.human raters SWEEP_DIR [--revoke NAME | --rotate NAME]` manages the raters' links;
`python -m rt_lab.human report SWEEP_DIR` writes the tables and the plot."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from rt_lab.human.moderation import load_filter, regex_filter
from rt_lab.human.pairing import parse_pairs
from rt_lab.human.store import Store
from rt_lab.human.study import DEFAULT_RATERS, open_study
from rt_lab.layout import SweepDir


def serve_command(args: argparse.Namespace) -> None:
    try:
        from rt_lab.human.app import RedactTokens, bind, claimed, port_of, serve_forever
    except ImportError as err:
        raise SystemExit(f"rt_lab.human serve needs Flask and waitress ({err}): pip install 'rt_lab[human]'") from err

    sweep = existing_sweep(args.sweep_dir)
    filters = ([regex_filter(pattern, "hide") for pattern in args.hide]
               + [regex_filter(pattern, "flag") for pattern in args.flag]
               + [load_filter(spec) for spec in args.moderation])
    match = [key.strip() for key in args.match.split(",")] if args.match else None
    db = args.db or SweepDir(sweep).human_ratings
    handler = logging.StreamHandler()
    handler.addFilter(RedactTokens())
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s", handlers=[handler])
    # the order matters: one serve per study, and a port bound, before anything in the study changes
    with claimed(db) as claim:
        server = bind(Store(db), args.host, args.port)
        host, port = f"[{args.host}]" if ":" in args.host else args.host, port_of(server)
        claim.note(f"serving on http://{host}:{port}/")
        study = open_study(sweep, parse_pairs(args.pairs), args.raters, match, args.sample, filters, db)
        store, verdicts = study.store, study.verdicts
        hidden = sum(v is not None and v.action == "hide" for v in verdicts.values())
        flagged = sum(v is not None and v.action == "flag" for v in verdicts.values())
        print(f"rt_lab.human: {len(study.items)} items ({hidden} hidden, {flagged} flagged by moderation) from "
              f"{sweep}; ratings in {store.path}", *(f"  left out: {note}" for note in study.notes), sep="\n",
              flush=True)
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"rt_lab.human: --host {args.host}: rater links travel unencrypted unless a TLS proxy is in "
                  "front (README: human evaluation)", flush=True)
        for rater in store.raters():
            if not rater.revoked:
                print(f"  {rater.name}: http://{host}:{port}/r/{rater.token}", flush=True)
        print(f"rt_lab.human: serving on http://{host}:{port}/ (Ctrl-C stops; every rating is "
              "already saved)", flush=True)
        serve_forever(server)


def raters_command(args: argparse.Namespace) -> None:
    """List the study's raters, or revoke or rotate one's link; a running serve sees the change at once."""
    sweep = existing_sweep(args.sweep_dir)
    db = args.db or SweepDir(sweep).human_ratings
    if not db.is_file():
        raise FileNotFoundError(f"{db}: no ratings database; start the study with `python -m rt_lab.human serve "
                                f"{sweep} --pairs A:B`")
    store = Store(db)
    if args.revoke:
        store.revoke(args.revoke)
        print(f"rt_lab.human: {args.revoke}'s link opens nothing from now on; their ratings stay "
              f"(`--rotate {args.revoke}` gives them a new link)")
    if args.rotate:
        rater = store.rotate(args.rotate)
        print(f"rt_lab.human: {rater.name}'s new link, after the serve's address: /r/{rater.token} (the old one "
              "opens nothing from now on)")
    if not (args.revoke or args.rotate):
        for rater in store.raters():
            print(f"  {rater.name}: {'revoked' if rater.revoked else 'active'}")


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


def main(argv: Sequence[str] | None = None, prog: str = "python -m rt_lab.human") -> None:
    parser = argparse.ArgumentParser(prog=prog,
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
    raters = commands.add_parser("raters", help="list the raters, or revoke or rotate one's link")
    raters.add_argument("sweep_dir", type=Path)
    change = raters.add_mutually_exclusive_group()
    change.add_argument("--revoke", metavar="NAME", help="the rater's link opens nothing from now on")
    change.add_argument("--rotate", metavar="NAME", help="a new link for the rater (printed); the old one stops")
    raters.add_argument("--db", type=Path, help="the ratings database (default: SWEEP_DIR/human/ratings.sqlite)")
    raters.set_defaults(run=raters_command)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"rt_lab.human: {err}")


if __name__ == "__main__":
    main()
