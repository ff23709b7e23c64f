"""bench/tracing.py's arguments."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("options", [["--calls", "0"], ["--concurrency", "0"], ["--repeats", "0"], ["--spans", "0"]])
def test_the_tracing_benchmark_refuses_counts_it_cannot_measure(options):
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "bench/tracing.py", *options], cwd=root, capture_output=True, text=True)
    assert done.returncode == 2 and "--calls at least --concurrency" in done.stderr
