"""bench/tracing.py's arguments."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("options", [["--calls", "0"], ["--concurrency", "0"], ["--repeats", "0"], ["--spans", "0"]])
def test_the_tracing_benchmark_refuses_counts_it_cannot_measure(options):
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "bench/tracing.py", *options], cwd=root, capture_output=True, text=True)
    assert done.returncode == 2 and "--calls at least --concurrency" in done.stderr


def test_a_short_run_writes_every_variants_figures_where_it_is_told(tmp_path):
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "not-yet" / "tracing.json"  # a folder that does not exist yet, as bench/results on a clone
    options = ["--calls", "20", "--concurrency", "2", "--repeats", "1", "--spans", "50", "--out", str(out)]
    done = subprocess.run([sys.executable, "bench/tracing.py", *options], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert set(result["medians"]) == {"off", "instrumentation", "aisle"}
    assert all(figures["server_us"] > 0 and figures["client_us"] > 0 for figures in result["medians"].values())
    spans = result["span_us"]["medians"]
    assert set(spans) == {"proxy", "sdk", "aisle"} and min(spans.values()) > 0
