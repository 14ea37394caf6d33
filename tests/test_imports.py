"""Every package of rt_lab imports first, on its own, in a fresh interpreter: an import cycle between packages
shows only when the cycle's other end has not been imported yet."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import REPO


@pytest.mark.parametrize("package", ["rt_lab.data", "rt_lab.train", "rt_lab.generate", "rt_lab.judges",
                                     "rt_lab.compare", "rt_lab.eval", "rt_lab.run",
                                     "rt_lab.human", "rt_lab.human.app", "rt_lab.analysis.similarity",
                                     "rt_lab.data.incontext"])
def test_each_package_imports_first_in_a_fresh_interpreter(package):
    done = subprocess.run([sys.executable, "-c", f"import {package}"], cwd=REPO, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
