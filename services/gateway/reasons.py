"""Human-readable reasons for each recommended item, from the sources that proposed it."""

from __future__ import annotations

from collections.abc import Mapping

from aisle.common.v1 import common_pb2 as common
from services.gateway.candidates import Candidate
from services.gateway.catalog import ItemCatalog

_VERBS = {
    common.EVENT_TYPE_PURCHASE: "bought",
    common.EVENT_TYPE_ADD_TO_CART: "added",
    common.EVENT_TYPE_RETURN: "returned",
}


def reasons_for(
    candidate: Candidate,
    history_events: Mapping[str, int],
    region: str,
    catalog: ItemCatalog | None = None,
    popular_in: str | None = None,
) -> list[common.Reason]:
    """One reason per source, in the candidate's source order, each distinct reason once (popularity and cold start
    both say "Popular"). ``history_events`` maps item id -> last event type; ``popular_in`` is the region whose sales
    ranked the popular items when it was not ``region`` ("": the whole shop's)."""
    catalog = catalog or ItemCatalog({})
    reasons = list(candidate.reasons)
    for source in candidate.sources:
        anchor = candidate.anchors.get(source, "")
        if source == common.CANDIDATE_SOURCE_TWO_TOWER:
            if anchor == candidate.item_id:
                event = history_events.get(anchor, common.EVENT_TYPE_VIEW)
                text = "Buy it again" if event == common.EVENT_TYPE_PURCHASE else "You looked at this recently"
                reasons.append(common.Reason(code=common.REASON_CODE_BUY_AGAIN, text=text, related_item_id=anchor))
                continue
            if anchor:
                verb = _VERBS.get(history_events.get(anchor, common.EVENT_TYPE_VIEW), "viewed")
                text = f"Because you {verb} {catalog.title(anchor)}"
            else:
                text = "Picked for you"
            reasons.append(common.Reason(code=common.REASON_CODE_SIMILAR_TO_HISTORY, text=text, related_item_id=anchor))
        elif source == common.CANDIDATE_SOURCE_ITEM_TO_ITEM:
            reasons.append(
                common.Reason(
                    code=common.REASON_CODE_BOUGHT_TOGETHER,
                    text=f"Goes well with {catalog.title(anchor)}",
                    related_item_id=anchor,
                )
            )
        elif source == common.CANDIDATE_SOURCE_CO_VISITATION:
            text = f"Often bought with {catalog.title(anchor)}" if anchor else "Often bought together"
            reasons.append(common.Reason(code=common.REASON_CODE_BOUGHT_TOGETHER, text=text, related_item_id=anchor))
        elif source == common.CANDIDATE_SOURCE_BUY_AGAIN:
            event = history_events.get(candidate.item_id, common.EVENT_TYPE_PURCHASE)
            text = "Buy it again" if event == common.EVENT_TYPE_PURCHASE else "You looked at this recently"
            reasons.append(
                common.Reason(code=common.REASON_CODE_BUY_AGAIN, text=text, related_item_id=candidate.item_id)
            )
        elif source in (
            common.CANDIDATE_SOURCE_POPULARITY,
            common.CANDIDATE_SOURCE_FALLBACK_CACHE,
            common.CANDIDATE_SOURCE_COLD_START,
        ):
            where = region if popular_in is None else popular_in
            where = f" in {where}" if where else ""
            reasons.append(common.Reason(code=common.REASON_CODE_POPULAR_IN_REGION, text=f"Popular{where}"))
        elif source == common.CANDIDATE_SOURCE_TRENDING:
            reasons.append(common.Reason(code=common.REASON_CODE_TRENDING, text="Trending now"))
    if catalog.get(candidate.item_id, "new", False) and not candidate.exploration:
        reasons.append(common.Reason(code=common.REASON_CODE_NEW_ARRIVAL, text="New arrival"))
    seen: set[tuple[int, str, str]] = set()
    distinct = []
    for reason in reasons:
        key = (reason.code, reason.text, reason.related_item_id)
        if key not in seen:
            seen.add(key)
            distinct.append(reason)
    return distinct
