"""The files `aisle train` writes beside its artefacts (catalog.json, the curves, the run record): a run that fails
while writing them leaves the previous run's whole."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from training import run as run_module
from training.data.schema import ItemCatalog


def catalog(count: int) -> ItemCatalog:
    ids = [f"I{i:05d}" for i in range(count)]
    return ItemCatalog(
        ids,
        ids,
        ["c"] * count,
        ["b"] * count,
        np.ones(count),
        np.full(count, 0.2),
        np.ones(count, np.int64),
        [()] * count,
    )


def write_run(out: Path, items: int) -> Path:
    curves = SimpleNamespace(tower_loss=[1.0], ranker_loss=[1.0], validation=[], ranker_kept_epoch=0)
    fitted = SimpleNamespace(curves=curves, summary=lambda: {})
    dataset = SimpleNamespace(catalog=catalog(items), summary=lambda: {})
    return run_module._write_run(out, {}, dataset, fitted, out, "ranker", {}, out / "r", out / "i", out / "q")


def test_a_run_that_fails_while_writing_its_files_leaves_the_previous_ones_whole(tmp_path, monkeypatch):
    write_run(tmp_path, 3)
    before = {name: (tmp_path / name).read_text() for name in ("catalog.json", "training_run.json")}
    staged, real = [], run_module.staged_text

    def disk_full_at_the_run_record(path: Path, text: str) -> Path:
        if path.name == "training_run.json":
            raise OSError(28, "No space left on device")
        staged.append(path)
        return real(path, text)

    monkeypatch.setattr(run_module, "staged_text", disk_full_at_the_run_record)
    with pytest.raises(OSError, match="No space"):
        write_run(tmp_path, 5)
    assert staged  # the catalog was written first, beside its file
    assert {name: (tmp_path / name).read_text() for name in before} == before
    assert len(json.loads(before["catalog.json"])) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.json", "training_curves.json", "training_run.json"]
    monkeypatch.setattr(run_module, "staged_text", real)
    assert len(json.loads((write_run(tmp_path, 5).parent / "catalog.json").read_text())) == 5
    # As a plain write makes them, by the umask (the gateway may run as another user than training).
    mask = os.umask(0)
    os.umask(mask)
    assert all((tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask for name in before)
