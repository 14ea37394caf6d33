"""Importing the optional alpaca_eval package (`pip install "rt_lab[alpaca_eval]"`), which both the judge protocol
that follows AlpacaEval's annotator (rt_lab.judges.protocols) and the LC win rate (rt_lab.compare.lc_winrate) read."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import sys
import types
from typing import Iterator

INSTALL_HINT = 'pip install "rt_lab[alpaca_eval]"'


@contextlib.contextmanager
def pkg_resources_stand_in() -> Iterator[None]:
    """alpaca_eval 0.6.6 (the latest) imports pkg_resources, which setuptools >= 81 no longer ships, and uses only
    its `parse_version` and `get_distribution(name).version`. Where it is gone, a stand-in with those two is
    importable while alpaca_eval is first imported, then withdrawn so that nothing else ever sees it (alpaca_eval
    keeps its reference). Spares users a setuptools downgrade."""
    needed = importlib.util.find_spec("pkg_resources") is None and "alpaca_eval.utils" not in sys.modules
    if needed:
        from packaging.version import parse

        module = types.ModuleType("pkg_resources", "stand-in for alpaca_eval (rt_lab.alpaca_eval_import)")
        module.parse_version = parse  # type: ignore[attr-defined]
        module.get_distribution = (  # type: ignore[attr-defined]
            lambda name: types.SimpleNamespace(version=importlib.metadata.version(name)))
        sys.modules["pkg_resources"] = module
    try:
        yield
    finally:
        if needed:
            sys.modules.pop("pkg_resources", None)
