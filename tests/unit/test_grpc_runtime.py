"""The gRPC runtime every process starts with: set before grpc is imported, an operator's value kept."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.core.grpc_runtime import EXPERIMENTS, VARIABLE, configure_grpc_runtime, grpc_runtime_in_force

ROOT = Path(__file__).resolve().parents[2]


def test_sets_the_experiments_when_the_environment_has_none_and_grpc_is_not_imported():
    environ: dict[str, str] = {}
    assert configure_grpc_runtime(environ, modules={}) == EXPERIMENTS
    assert environ == {VARIABLE: EXPERIMENTS}


@pytest.mark.parametrize("value", ["", "-event_engine_client", "some_other_experiment"])
def test_an_operators_value_wins_even_empty(value):
    environ = {VARIABLE: value}
    assert configure_grpc_runtime(environ, modules={"grpc": object()}) == value  # any time: nothing to set
    assert environ == {VARIABLE: value}


def test_too_late_after_grpc_is_imported_it_warns_and_changes_nothing(caplog):
    environ: dict[str, str] = {}
    with caplog.at_level(logging.WARNING, logger="services.core.grpc_runtime"):
        assert configure_grpc_runtime(environ, modules={"grpc": object()}) == ""
    assert environ == {}
    assert "grpc was imported before GRPC_EXPERIMENTS was set" in caplog.text and EXPERIMENTS in caplog.text


def test_what_the_start_up_log_says():
    assert grpc_runtime_in_force({VARIABLE: EXPERIMENTS}) == f"GRPC_EXPERIMENTS={EXPERIMENTS}"
    assert grpc_runtime_in_force({VARIABLE: ""}) == grpc_runtime_in_force({}) == "gRPC's default experiments"


def test_the_tests_run_the_services_runtime():
    assert VARIABLE in os.environ  # tests/conftest.py set it before any test imported grpc (or kept the caller's)


SERVICE_MAINS = ["services.retrieval.__main__", "services.ranking.__main__", "services.gateway.__main__"]


def after_import(module: str, outer: str | None) -> list[str]:
    """Imports ``module`` in a fresh interpreter (``GRPC_EXPERIMENTS`` unset, or ``outer``): whether grpc got
    imported, and the variable's value then."""
    env = {key: value for key, value in os.environ.items() if key != VARIABLE}
    if outer is not None:
        env[VARIABLE] = outer
    code = f"import sys, os; import {module}; print('grpc' in sys.modules, repr(os.environ.get({VARIABLE!r})))"
    command = [sys.executable, "-c", code]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "grpc was imported before" not in result.stderr
    return result.stdout.split()


@pytest.mark.parametrize("module", SERVICE_MAINS)
@pytest.mark.parametrize("outer", [None, ""])
def test_each_services_main_sets_it_first_unless_the_environment_does(module, outer):
    expected = EXPERIMENTS if outer is None else outer
    assert after_import(module, outer) == ["True", repr(expected)]  # grpc imported by the service, after the variable


def test_the_cli_sets_it_before_any_subcommand_imports_grpc():
    """`aisle serve` and `aisle demo` (whose parent process calls the gateway) run the services' runtime: the CLI
    sets it when imported, and importing it imports no grpc, so it is in time."""
    assert after_import("services.cli", None) == ["False", repr(EXPERIMENTS)]


#: The benchmarks that set the runtime themselves (the echo chain's processes get it from bench/e2e.py's environment).
BENCHMARKS = ["bench.e2e", "bench.handlers", "bench.ranking", "bench.ranking_gpu", "bench.retrieval", "bench.tracing"]


@pytest.mark.parametrize("module", BENCHMARKS)
def test_each_benchmark_sets_it_before_anything_it_imports_imports_grpc(module):
    """A benchmark measures the services' runtime: an import that pulls grpc in first (services.demo.triton does,
    through services.demo.stack) would leave it on gRPC's defaults, with only a warning in its log."""
    assert after_import(module, None)[1] == repr(EXPERIMENTS)


@pytest.mark.parametrize(("switches", "unknown"), [(EXPERIMENTS, False), ("-no_such_experiment", True)])
def test_the_installed_grpcio_knows_both_switches(switches, unknown):
    """gRPC logs an unknown switch and ignores it: when an upgrade removes these, this fails, and the runtime (and
    its measurements, docs/benchmarks.md) needs a new look."""
    env = {**os.environ, VARIABLE: switches}
    code = "import grpc; grpc.insecure_channel('127.0.0.1:1').close()"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert ("Unknown experiment" in result.stderr) == unknown, result.stderr[-2000:]
