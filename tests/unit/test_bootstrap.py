from __future__ import annotations

import os
import subprocess
import sys


def test_serving_processes_default_to_one_blas_thread_unless_told_otherwise():
    code = (
        "import sys, services.cli; assert 'numpy' not in sys.modules, 'numpy imported before the thread limits'; "
        "import services.core.bootstrap, os; print(os.environ['OPENBLAS_NUM_THREADS'], os.environ['OMP_NUM_THREADS'])"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert result.stdout.split() == ["1", "1"], result.stderr
    env["OMP_NUM_THREADS"] = "2"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert result.stdout.split() == ["1", "2"], result.stderr


def test_event_loop_setting_picks_the_loop_and_names_the_fix_when_missing(monkeypatch):
    import pytest

    from services.core.bootstrap import loop_factory
    from services.core.settings import SettingsError

    assert loop_factory("asyncio") is None
    loop = loop_factory("uvloop")()
    try:
        assert type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed
    with pytest.raises(SettingsError, match="pip install uvloop"):
        loop_factory("uvloop")
