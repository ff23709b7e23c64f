"""Request builders shared by the integration tests."""

from __future__ import annotations

from aisle.common.v1 import common_pb2 as common
from aisle.recommendation.v1 import recommendation_service_pb2 as pb


def home_request(history_ids: list[str], k: int = 5, consent: bool = True) -> pb.RecommendRequest:
    return pb.RecommendRequest(
        subject=common.Subject(user_id="u-1"),
        surface=common.SURFACE_HOME,
        context=common.RequestContext(region="GB"),
        consent=consent,
        history=[common.Interaction(item_id=i, event_type=common.EVENT_TYPE_VIEW) for i in history_ids],
        k=k,
    )
