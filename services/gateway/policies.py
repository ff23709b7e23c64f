"""Which candidate sources each surface uses. (Declarative, composable policies come with the gateway issue.)"""

from __future__ import annotations

from dataclasses import dataclass

from aisle.common.v1 import common_pb2 as common

POLICY_VERSION = "skeleton-1"


@dataclass(frozen=True)
class SurfacePolicy:
    name: str
    sources: tuple[int, ...]
    #: Drop items the subject already interacted with.
    exclude_history: bool = False


POLICIES: dict[int, SurfacePolicy] = {
    common.SURFACE_HOME: SurfacePolicy("home", (common.CANDIDATE_SOURCE_TWO_TOWER, common.CANDIDATE_SOURCE_POPULARITY)),
    common.SURFACE_PRODUCT_PAGE: SurfacePolicy(
        "product_page", (common.CANDIDATE_SOURCE_ITEM_TO_ITEM, common.CANDIDATE_SOURCE_TWO_TOWER)
    ),
    common.SURFACE_CART: SurfacePolicy(
        "cart", (common.CANDIDATE_SOURCE_ITEM_TO_ITEM, common.CANDIDATE_SOURCE_POPULARITY), exclude_history=True
    ),
    common.SURFACE_EMAIL: SurfacePolicy(
        "email", (common.CANDIDATE_SOURCE_TWO_TOWER, common.CANDIDATE_SOURCE_POPULARITY), exclude_history=True
    ),
}
