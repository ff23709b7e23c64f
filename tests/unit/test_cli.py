from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from services.cli import main


def test_help_lists_the_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "train", "demo"):
        assert command in result.output


def test_serve_help_shows_every_setting_with_its_variable():
    result = CliRunner().invoke(main, ["serve", "ranking", "--help"])
    assert result.exit_code == 0
    assert "--model-repository" in result.output and "AISLE_RANKING_MODEL_REPOSITORY" in result.output


def test_a_bad_setting_stops_the_service_with_its_name(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "serve", "retrieval", "--port", "not-a-port"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "AISLE_RETRIEVAL_PORT / --port" in result.stderr


def test_serving_does_not_import_torch():
    code = (
        "import sys, services.cli, services.gateway.app, services.ranking.app, services.retrieval.app; "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


def test_train_refuses_a_repository_without_config(tmp_path):
    result = CliRunner().invoke(main, ["train", "--model-repository", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "config.pbtxt" in result.output
