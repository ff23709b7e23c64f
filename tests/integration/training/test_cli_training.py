"""``aisle train`` + ``aisle evaluate`` end to end on a plain-text sequence file and on a generic events file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from services.cli import main
from training.synthetic import generate_shop

PROJECT_ROOT = Path(__file__).resolve().parents[3]
TINY_FLAGS = ["--epochs", "1", "--dim", "16", "--no-progress", "--seed", "1"]


def repository(root: Path) -> Path:
    repo = root / "model_repository"
    (repo / "sequence_ranker").mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "model_repository" / "sequence_ranker" / "config.pbtxt", repo / "sequence_ranker")
    return repo


def train_and_evaluate(tmp_path: Path, data: Path) -> dict:
    runner = CliRunner()
    out, repo = tmp_path / "artifacts", repository(tmp_path)
    args = ["train", "--data", str(data), "--out", str(out), "--model-repository", str(repo), *TINY_FLAGS]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "model version:" in result.output and (repo / "sequence_ranker" / "1" / "model.onnx").is_file()
    report_path = tmp_path / "eval" / "report.json"
    args = ["evaluate", "--artifacts", str(out), "--out", str(report_path), "--bootstrap", "100", "--no-progress"]
    result = runner.invoke(main, [*args, "--no-plots"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads(report_path.read_text())


def test_plain_text_sequences_end_to_end(tmp_path):
    shop = generate_shop(n_users=200, n_items=80, seed=2)
    lines = [
        f"user{u} " + " ".join(shop.catalog.item_ids[r] for r in rows)
        for u, rows in enumerate(shop.sequences())
        if len(rows)
    ]
    data = tmp_path / "sequences.txt"
    data.write_text("\n".join(lines) + "\nbroken-line-without-items\n", encoding="utf-8")
    report = train_and_evaluate(tmp_path, data)
    assert report["dataset"] == "sequences"
    assert {"aisle", "popularity", "item_to_item", "buy_again"} <= set(report["protocols"]["repeat"]["models"])


def test_generic_events_csv_end_to_end(tmp_path):
    shop = generate_shop(n_users=200, n_items=80, seed=3)
    events = shop.events
    rows = ["event_type,timestamp,user_id,item_id,quantity,price,basket_id"]
    for user, item, kind, when, quantity, session in zip(
        events.user, events.item, events.kind, events.timestamp, events.quantity, events.session, strict=True
    ):
        price = float(np.round(shop.catalog.prices[item], 2))
        rows.append(
            f"{kind},{when},{shop.user_ids[user]},{shop.catalog.item_ids[item]},{quantity},{price},b{user}-{session}"
        )
    rows.append("purchase,yesterday,u1,SKU000001,1,1.0,x")  # malformed: counted and skipped
    data = tmp_path / "events.csv"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    report = train_and_evaluate(tmp_path, data)
    assert report["dataset"] == "events" and report["protocols"]["discovery"]["users"] > 0


def test_train_refuses_malformed_data_in_strict_mode(tmp_path):
    data = tmp_path / "sequences.txt"
    data.write_text("u1 a b c\nu2\n", encoding="utf-8")
    out, repo = tmp_path / "artifacts", repository(tmp_path)
    args = ["train", "--data", str(data), "--strict", "--out", str(out), "--model-repository", str(repo), *TINY_FLAGS]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "sequences.txt:2: no_items" in result.output
