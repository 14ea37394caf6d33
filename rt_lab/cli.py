"""`rt-lab`: every command of rt_lab under one name. `rt-lab COMMAND --help` lists a command's options.

    rt-lab run [-m] key=value ...            a run, or a sweep with -m (the same as python launch.py)
    rt-lab compare SWEEP_DIR [key=value ...]  judge a sweep's runs against their references: tables, plots
    rt-lab human serve|raters|report ...     the human-rating app and its report
    rt-lab analyze RUN_DIR ...                instruction similarity of a run's answers (Hewitt et al. §5.2)
    rt-lab safety validate-keyword           the keyword refusal classifier against XSTest's labels
    rt-lab reference PATH [--check]          the configuration reference, generated from the schemas
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence


def run(argv: Sequence[str], prog: str) -> None:
    from rt_lab.launch import main

    sys.argv = [prog, *argv]  # Hydra reads its command line from sys.argv
    main()


def compare(argv: Sequence[str], prog: str) -> None:
    from rt_lab.compare.cli import main

    main(argv, prog)


def human(argv: Sequence[str], prog: str) -> None:
    from rt_lab.human.__main__ import main

    main(argv, prog)


def analyze(argv: Sequence[str], prog: str) -> None:
    from rt_lab.analysis.similarity import main

    main(argv, prog)


def safety(argv: Sequence[str], prog: str) -> None:
    from rt_lab.eval.keyword_validation import main

    main(argv, prog)


def reference(argv: Sequence[str], prog: str) -> None:
    from rt_lab.config.reference import main

    main(argv, prog)


COMMANDS: dict[str, tuple[Callable[[Sequence[str], str], None], str]] = {
    "run": (run, "a run, or a sweep with -m: python launch.py's command line (Hydra overrides)"),
    "compare": (compare, "judge a sweep's runs against their references: win-rate tables, plots, W&B"),
    "human": (human, "the human-rating app (serve, raters) and its report"),
    "analyze": (analyze, "instruction similarity of a run's answers (Hewitt et al. §5.2)"),
    "safety": (safety, "validate-keyword: the keyword refusal classifier against XSTest's labels"),
    "reference": (reference, "write or --check the configuration reference generated from the schemas"),
}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rt-lab", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="commands:\n" + "\n".join(f"  {name:<11} {about}"
                                                                      for name, (_, about) in COMMANDS.items()))
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the command's own arguments (COMMAND --help)")
    args = parser.parse_args(argv)
    command, _ = COMMANDS[args.command]
    command(args.args, f"rt-lab {args.command}")


if __name__ == "__main__":
    main()
