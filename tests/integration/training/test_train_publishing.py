"""``aisle train`` publishes a ranker version only with its index: ``--out`` and the model's contract are checked
before training, versions are numbered as the repository numbers them (retired numbers are never reused), and a
failed export leaves no ranker version, index version or query tower behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from services.cli import main
from services.ranking.model_config import model_versions
from services.ranking.repository import retire
from services.retrieval.index import index_versions, load_index
from training.export import ExportError

PROJECT_ROOT = Path(__file__).resolve().parents[3]
TINY_SHOP = ["--users", "60", "--items", "40", "--epochs", "1", "--dim", "8", "--threads", "1", "--no-progress"]


def repository(root: Path) -> Path:
    repo = root / "model_repository"
    for name in ("sequence_ranker", "ranker"):
        (repo / name).mkdir(parents=True)
        shutil.copy(PROJECT_ROOT / "model_repository" / name / "config.pbtxt", repo / name)
    return repo


def train(out: Path, repo: Path, *extra: str):
    return CliRunner().invoke(main, ["train", "--out", str(out), "--model-repository", str(repo), *TINY_SHOP, *extra])


def test_an_out_that_is_a_file_is_refused_before_training(tmp_path):
    repo, out = repository(tmp_path), tmp_path / "notadir"
    out.write_text("hello\n", encoding="utf-8")
    for extra in ([], ["--skeleton"]):
        result = train(out, repo, *extra)
        assert result.exit_code == 1 and "is a file" in result.output, result.output
        assert "Traceback" not in result.output and "validation:" not in result.output
    assert model_versions(repo / "sequence_ranker") == [] and model_versions(repo / "ranker") == []


def test_a_model_folder_of_another_contract_is_refused_before_training(tmp_path):
    repo = repository(tmp_path)
    result = train(tmp_path / "a", repo, "--model-name", "ranker")
    assert result.exit_code == 1 and "history length" in result.output and "--model-name" in result.output
    result = train(tmp_path / "b", repo, "--skeleton", "--model-name", "sequence_ranker")
    assert result.exit_code == 1 and "history length" in result.output and "--skeleton" in result.output
    assert "validation:" not in result.output and "hold-out" not in result.output
    assert model_versions(repo / "sequence_ranker") == [] and model_versions(repo / "ranker") == []


def test_a_failed_export_leaves_nothing_and_retired_numbers_are_not_reused(tmp_path, monkeypatch):
    repo, out = repository(tmp_path), tmp_path / "artifacts"
    model_dir = repo / "sequence_ranker"
    assert train(out, repo).exit_code == 0
    first_index = index_versions(out / "index")
    retire(model_dir, 1)  # as `aisle models rollback` does: number 1 stays used

    def parity_fails(*args, **kwargs):
        raise ExportError("ONNX Runtime and torch disagree by 1.00e+00 (> 1e-04)")

    with monkeypatch.context() as patch:
        patch.setattr("training.run.export_ranker", parity_fails)
        result = train(out, repo)
    assert result.exit_code == 1 and "Error: ONNX Runtime and torch disagree" in result.output
    assert "Traceback" not in result.output
    assert model_versions(model_dir) == [] and index_versions(out / "index") == first_index
    assert len(list((out / "query_tower").iterdir())) == 1

    result = train(out, repo)
    assert result.exit_code == 0, result.output
    assert model_versions(model_dir) == [2]
    run = json.loads((out / "training_run.json").read_text())
    assert run["ranker_dir"] == str((model_dir / "2").resolve())
    index = load_index(Path(run["index_dir"]))
    assert index.model_version == "2" and len(index_versions(out / "index")) == 2
    assert Path(run["query_tower"]).is_file() and len(list((out / "query_tower").iterdir())) == 2


def test_a_failure_after_the_ranker_is_published_retires_it(tmp_path, monkeypatch):
    repo, out = repository(tmp_path), tmp_path / "artifacts"

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("training.run._write_run", disk_full)
    result = train(out, repo)
    assert result.exit_code == 1 and "No space left on device" in result.output
    assert "Traceback" not in result.output
    model_dir = repo / "sequence_ranker"
    assert (
        model_versions(model_dir) == [] and [p.name.split("-")[0] for p in model_dir.iterdir()].count(".retired") == 1
    )
    assert index_versions(out / "index") == [] and list((out / "query_tower").iterdir()) == []


def test_the_skeleton_publishes_its_ranker_last_under_the_repositorys_numbering(tmp_path, monkeypatch):
    repo, out = repository(tmp_path), tmp_path / "artifacts"
    model_dir = repo / "ranker"
    (model_dir / ".retired-4-1").mkdir()

    def parity_fails(*args, **kwargs):
        raise ExportError("ONNX Runtime and torch disagree")

    with monkeypatch.context() as patch:
        patch.setattr("training.pipeline.export_ranker", parity_fails)
        result = train(out, repo, "--skeleton")
    assert result.exit_code == 1 and "disagree" in result.output and index_versions(out / "index") == []
    result = train(out, repo, "--skeleton")
    assert result.exit_code == 0, result.output
    assert model_versions(model_dir) == [5]
    assert load_index(index_versions(out / "index")[0]).model_version == "5"


def test_the_skeleton_refuses_data_it_would_not_read_and_keeps_quiet_when_told(tmp_path):
    repo, data = repository(tmp_path), tmp_path / "events.csv"
    data.write_text("user_id,item_id\n", encoding="utf-8")
    result = train(tmp_path / "a", repo, "--skeleton", "--data", str(data), "--strict")
    assert result.exit_code == 2 and "reads no --data, --strict" in result.output, result.output
    assert model_versions(repo / "ranker") == []
    result = train(tmp_path / "b", repo, "--skeleton")  # TINY_SHOP says --no-progress
    assert result.exit_code == 0 and "training ranker" not in result.output, result.output
    shown = CliRunner().invoke(
        main,
        [
            "train",
            "--out",
            str(tmp_path / "c"),
            "--model-repository",
            str(repo),
            *[a for a in TINY_SHOP if a != "--no-progress"],
            "--skeleton",
        ],
    )
    assert shown.exit_code == 0 and "training ranker" in shown.output


def test_the_exported_catalog_carries_what_the_profit_scorer_and_the_stock_filter_read(tmp_path):
    import copy

    import yaml

    from services.gateway.catalog import ItemCatalog
    from services.gateway.policies import DEFAULT_POLICY_FILE, build_policies
    from tests.unit.gateway.helpers import deps

    repo, out = repository(tmp_path), tmp_path / "artifacts"
    assert train(out, repo, "--skeleton").exit_code == 0
    catalog = ItemCatalog.load(out / "catalog.json")
    assert {"margin", "stock"} <= catalog.features
    record = next(iter(catalog.items.values()))
    assert 0 < record["margin"] < 1 and isinstance(record["stock"], int)
    raw = copy.deepcopy(yaml.safe_load(DEFAULT_POLICY_FILE.read_text()))
    home = raw["policies"]["home"]
    home["filters"].append({"component": "InStockFilter"})
    home["scorers"].append({"component": "ExpectedProfitScorer"})
    policies = build_policies(raw, catalog, deps())  # refused at start-up when the catalog lacks margin or stock
    home_pipeline = policies.pipelines["home"]
    assert {"InStockFilter", "ExpectedProfitScorer"} <= {
        c.name for c in [*home_pipeline.filters, *home_pipeline.scorers]
    }
