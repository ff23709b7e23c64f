from __future__ import annotations

import numpy as np
import pytest

from aisle.common.v1 import common_pb2 as common
from aisle.retrieval.v1 import retrieval_service_pb2 as pb
from services.core.errors import InvalidArgument
from services.retrieval.servicer import SOURCE_IDS, RetrievalServicer, validate_retrieve
from services.retrieval.settings import RetrievalSettings
from services.retrieval.state import open_index
from tests.support.retrieval import write_index


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return open_index(write_index(tmp_path_factory.mktemp("index")), exact_threshold=20_000, min_recall=0.8)


def _mask(index, request: pb.RetrieveRequest, region_column=None):
    rows = index.rows
    history = list(request.history)
    anchors = [rows[item] for item in request.anchor_item_ids if item in rows]
    return RetrievalServicer.allowed_mask(request, index, region_column, history, anchors)


def test_the_allowed_count_is_the_masks_own_count_whatever_is_excluded(index):
    ids = index.artifact.item_ids
    base, base_count = index.availability.base_mask(0, False)
    out = [ids[row] for row in np.flatnonzero(~base)[:3]]  # excluded, but already out of stock or not sold here
    a, b, c, d = np.flatnonzero(base)[:4].tolist()
    viewed = [ids[a], ids[b], ids[a], *out]  # an item twice
    request = pb.RetrieveRequest(
        history=[common.Interaction(item_id=item, event_type=common.EVENT_TYPE_VIEW) for item in viewed],
        anchor_item_ids=[ids[b], ids[c], "not-in-this-index"],  # an anchor that is in the history too
        exclusions=common.Exclusions(item_ids=[ids[d], ids[c]]),
        exclude_history=True,
    )
    allowed, count = _mask(index, request, region_column=0)
    assert count == int(np.count_nonzero(allowed)) == base_count - 4  # a, b, c and d, each once
    assert not allowed[[a, b, c, d]].any()
    assert base.sum() == base_count  # the shared base mask is not changed
    anywhere, anywhere_count = index.availability.base_mask(None, False)
    brand = index.brand_codes == index.brand_vocabulary["b3"]
    category = index.category_codes == index.category_vocabulary["c1"]
    for exclusions, out in (
        (common.Exclusions(brands=["b3"]), brand),
        (common.Exclusions(categories=["c1"], item_ids=[ids[a]]), category | (np.arange(len(ids)) == a)),
    ):
        allowed, count = _mask(index, pb.RetrieveRequest(exclusions=exclusions))
        assert not allowed[out].any() and (allowed == (anywhere & ~out)).all()
        assert count == int(np.count_nonzero(allowed)) == anywhere_count - int(np.count_nonzero(anywhere & out))
    allowed, count = _mask(index, pb.RetrieveRequest())  # nothing excluded: the shared mask itself
    assert allowed is anywhere and count == anywhere_count


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_an_anchor_vector_must_hold_finite_numbers(index, value):
    vector = [0.1] * index.artifact.dimension
    vector[3] = value
    request = pb.RetrieveRequest(
        k=5, anchor_vectors=[pb.AnchorVector(item_id="I00001", vector=[0.1] * index.artifact.dimension)]
    )
    request.anchor_vectors.add(item_id="I00002", vector=vector)
    with pytest.raises(InvalidArgument) as failure:
        validate_retrieve(request, RetrievalSettings(), index.artifact, SOURCE_IDS)
    assert failure.value.violations == {"anchor_vectors[1].vector": "must hold finite numbers"}
