"""k8s/base/config/sync-artifacts.sh, the init containers' copy step, against a local artefact store (rclone treats
a plain path as a remote, as the cpu overlay uses it)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.k8s.manifests import K8S

SCRIPT = K8S / "base" / "config" / "sync-artifacts.sh"

pytestmark = pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone is not installed (apt install rclone)")


def write(path: Path, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """Complete index and model versions, plus the half-written ones a reader must never take."""
    root = tmp_path / "store"
    write(root / "index" / "20250101T000000Z" / "metadata.json", "{}")
    write(root / "index" / "20250101T000000Z" / "scann" / "partitions.npy")
    write(root / "index" / "20250102T000000Z" / "item_ids.txt")  # no metadata.json yet: incomplete
    write(root / "index" / ".20250103T000000Z-staging" / "metadata.json", "{}")  # hidden staging folder
    model = root / "model_repository" / "ranker"
    write(model / "config.pbtxt")
    write(model / "configs" / "local.pbtxt")
    for version in ("1", "2", "10"):
        write(model / version / "model.onnx")
        write(model / version / "metadata.json", "{}")
    write(model / "11" / "model.onnx")  # incomplete
    write(root / "catalog.json", "{}")
    return root


def sync(store: Path | str, *args: str) -> subprocess.CompletedProcess:
    environment = {"PATH": os.environ["PATH"], "ARTIFACTS_URI": str(store), "SYNC_WAIT_S": "0"}
    return subprocess.run(
        ["sh", str(SCRIPT), *args], env=environment, capture_output=True, text=True, timeout=120, check=False
    )


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_an_empty_version_takes_the_newest_complete_index(store: Path, tmp_path: Path):
    result = sync(store, "index", str(tmp_path / "index"), "")
    assert result.returncode == 0, result.stderr
    assert files(tmp_path / "index") == ["20250101T000000Z/metadata.json", "20250101T000000Z/scann/partitions.npy"]


def test_an_incomplete_pinned_version_fails_the_pod_with_the_reason(store: Path, tmp_path: Path):
    result = sync(store, "index", str(tmp_path / "index"), "20250102T000000Z")
    assert result.returncode != 0
    assert "no complete version 20250102T000000Z" in result.stderr
    assert not (tmp_path / "index").exists() or not files(tmp_path / "index")


def test_model_versions_come_with_the_config_and_newest_is_numeric(store: Path, tmp_path: Path):
    assert sync(store, "model", str(tmp_path / "newest"), "ranker", "").returncode == 0
    assert files(tmp_path / "newest") == [
        "ranker/10/metadata.json",
        "ranker/10/model.onnx",
        "ranker/config.pbtxt",
        "ranker/configs/local.pbtxt",
    ]
    assert sync(store, "model", str(tmp_path / "pinned"), "ranker", "1 2").returncode == 0
    assert {p.split("/")[1] for p in files(tmp_path / "pinned")} == {"1", "2", "config.pbtxt", "configs"}


def test_a_missing_store_or_version_fails(store: Path, tmp_path: Path):
    assert sync(store, "model", str(tmp_path / "m"), "ranker", "11").returncode != 0
    assert sync(tmp_path / "nowhere", "index", str(tmp_path / "i"), "").returncode != 0


def test_a_store_that_cannot_be_listed_fails_at_once_with_rclones_reason(tmp_path: Path):
    """A malformed ARTIFACTS_URI (or bad credentials, or no route to the store) was reported, after SYNC_WAIT_S, as
    "no complete version", sending the operator to check the upload instead of the store's settings."""
    result = sync(":nosuchbackend:bucket/prefix", "index", str(tmp_path / "index"), "")
    assert result.returncode == 1
    assert "cannot list the artefact store :nosuchbackend:bucket/prefix (rclone exit" in result.stderr
    assert "nosuchbackend" in result.stderr.split("rclone exit", 1)[1] and "no complete version" not in result.stderr


def test_a_remote_store_whose_bucket_is_missing_is_not_waited_for(tmp_path: Path):
    """rclone exits 3 for a folder that does not exist: for a local store that is one not written yet, for an object
    store a bucket that does not exist (a prefix not written yet lists empty), a wrong ARTIFACTS_URI. A local folder
    reached through rclone's own remote syntax (":local:") stands in for the object store here."""
    result = sync(f":local:{tmp_path / 'no-such-bucket'}", "index", str(tmp_path / "index"), "")
    assert result.returncode == 1 and "cannot list the artefact store :local:" in result.stderr, result.stderr
    local = sync(tmp_path / "not-written-yet", "index", str(tmp_path / "index"), "")  # waited for (SYNC_WAIT_S 0)
    assert local.returncode == 1 and "no complete version" in local.stderr, local.stderr


def test_a_file_is_copied_beside_nothing_else(store: Path, tmp_path: Path):
    result = sync(store, "file", str(tmp_path / "catalog"), "catalog.json")
    assert result.returncode == 0, result.stderr
    assert files(tmp_path / "catalog") == ["catalog.json"]
    assert sync(store, "file", str(tmp_path / "other"), "missing.json").returncode != 0


@pytest.fixture
def sharded(store: Path) -> Path:
    """A sharded index beside the whole one: sharded-index/{router,shard-0,shard-1}/<version>/."""
    for part in ("router", "shard-0", "shard-1"):
        write(store / "sharded-index" / part / "20250101T000000Z" / "metadata.json", "{}")
        write(store / "sharded-index" / part / "20250101T000000Z" / f"{part}.txt", part)
    return store


def sync_pod(store: Path, pod: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    environment = {"PATH": os.environ["PATH"], "ARTIFACTS_URI": str(store), "SYNC_WAIT_S": "0", **pod}
    return subprocess.run(
        ["sh", str(SCRIPT), *args], env=environment, capture_output=True, text=True, timeout=120, check=False
    )


def test_an_index_root_other_than_index_is_copied_the_same_way(sharded: Path, tmp_path: Path):
    result = sync(sharded, "index", str(tmp_path / "router"), "", "sharded-index/router")
    assert result.returncode == 0, result.stderr
    assert files(tmp_path / "router") == ["20250101T000000Z/metadata.json", "20250101T000000Z/router.txt"]


@pytest.mark.parametrize(
    "pod",
    [
        {"POD_INDEX": "1", "POD_NAME": "retrieval-shard-1"},
        {"POD_INDEX": "", "POD_NAME": "retrieval-shard-1"},  # no pod-index label (Kubernetes < 1.28)
        {"POD_INDEX": "1"},
    ],
)
def test_a_shard_pod_copies_the_shard_of_its_ordinal(sharded: Path, tmp_path: Path, pod: dict[str, str]):
    result = sync_pod(sharded, pod, "shard", str(tmp_path / "index"), "20250101T000000Z", "sharded-index")
    assert result.returncode == 0, result.stderr
    assert files(tmp_path / "index") == ["20250101T000000Z/metadata.json", "20250101T000000Z/shard-1.txt"]


@pytest.mark.parametrize(
    ("pod", "reason"),
    [
        ({"POD_INDEX": "0", "POD_NAME": "retrieval-shard-1"}, "disagree"),
        ({"POD_INDEX": "one"}, "not an ordinal"),
        ({"POD_NAME": "retrieval"}, "no pod ordinal"),
        ({}, "no pod ordinal"),
        ({"POD_INDEX": "2", "POD_NAME": "retrieval-shard-2"}, "shard-2"),  # more pods than shards built
    ],
)
def test_a_shard_pod_without_a_shard_fails_with_the_reason(sharded: Path, tmp_path: Path, pod, reason: str):
    result = sync_pod(sharded, pod, "shard", str(tmp_path / "index"), "", "sharded-index")
    assert result.returncode != 0
    assert reason in result.stderr
    assert not (tmp_path / "index").exists() or not files(tmp_path / "index")
