"""The trained sequence ranker (``aisle train``'s model: Transformer, candidate features, return head) served by a
real local Triton with the project's ``model_repository/sequence_ranker/configs/local.pbtxt``: the same scores as
the embedded backend."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from tritonclient.grpc.aio import InferenceServerClient

from tests.conftest import PROJECT_ROOT
from tests.integration.ranking.conftest import needs_triton, triton_server
from tests.integration.ranking.test_triton import assert_same_scores, http_status
from tests.support.tiny_training import SHOP, TINY

pytestmark = needs_triton

PROJECT_SEQUENCE_RANKER = PROJECT_ROOT / "model_repository" / "sequence_ranker"


@dataclass(frozen=True)
class SequenceRankerRepository:
    repository: Path
    item_ids: list[str]


@pytest.fixture(scope="module")
def sequence_ranker(tmp_path_factory: pytest.TempPathFactory) -> SequenceRankerRepository:
    """A repository holding the project's sequence_ranker folder (config.pbtxt and configs/) and one version trained
    and exported by the training pipeline on a tiny synthetic shop."""
    from training.run import train_and_export

    root = tmp_path_factory.mktemp("sequence-ranker")
    repository = root / "model_repository"
    model_dir = repository / "sequence_ranker"
    model_dir.mkdir(parents=True)
    shutil.copy(PROJECT_SEQUENCE_RANKER / "config.pbtxt", model_dir)
    shutil.copytree(PROJECT_SEQUENCE_RANKER / "configs", model_dir / "configs")
    run = train_and_export(SHOP, root / "artifacts", repository, config=TINY, progress=False)
    assert run.ranker_dir == model_dir / "1"
    item_ids = (run.ranker_dir / "item_vocabulary.txt").read_text().split()
    return SequenceRankerRepository(repository, item_ids)


async def test_local_triton_serves_the_sequence_ranker_with_the_embedded_scores(sequence_ranker, tmp_path):
    repository = sequence_ranker.repository
    with triton_server(repository, tmp_path / "triton.log", models=("sequence_ranker",)) as triton:
        url = f"{triton.http_url}/v2/models/sequence_ranker/versions/1/ready"
        assert await asyncio.to_thread(http_status, url) == 200
        client = InferenceServerClient(triton.grpc_target)
        config = (await client.get_model_config("sequence_ranker")).config
        await client.close()
        assert config.backend == "python", "Triton must run the local config (configs/local.pbtxt)"
        answers = await assert_same_scores(repository, triton, sequence_ranker.item_ids, model_name="sequence_ranker")
    # Not vacuous: the return head answered for the known candidates, the unknown one got neither head.
    for _, served in answers:
        known = [s for s in served.scored_items if s.item_id != "NOT-IN-CATALOG"]
        assert known and all(s.HasField("return_probability") for s in known)
        assert 0 < max(s.purchase_probability for s in known) < 1
        unknown = served.scored_items[-1]
        assert unknown.item_id == "NOT-IN-CATALOG" and unknown.purchase_probability == 0
        assert not unknown.HasField("return_probability")
