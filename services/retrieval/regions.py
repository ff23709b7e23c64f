"""What retrieval does with a region its index version has no column for, and how it shows."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter

from services.core.logs import Throttled

log = logging.getLogger(__name__)


class UnlistedRegions:
    """Counts ``Retrieve`` calls for a region the serving index version does not list
    (``aisle_retrieval_unlisted_region_total{service}``) and says so in a warning at most once per interval. A shard
    router counts the calls it takes (``service="retrieval-router"``), and each of its shards the slice it answers.

    Such a call is served, not refused: only the items sold everywhere, ranked by the whole shop's sales. A region
    new since the index's data (a shop that opens a country) is served them until the next build lists it (none,
    where every item lists its regions); a misspelt region code shows here, and in the answers' empty
    ``popularity_region``.
    """

    def __init__(self, registry: CollectorRegistry | None = None, service_label: str = "retrieval"):
        self.service = service_label
        self._count = (
            Counter(
                "aisle_retrieval_unlisted_region",
                "Retrieve calls for a region the serving index has no column for (served only the items sold "
                "everywhere, ranked by the shop's sales).",
                ["service"],
                registry=registry,
            )
            if registry is not None
            else None
        )
        self._warnings = Throttled(log)

    def saw(self, region: str, version: str) -> None:
        if self._count is not None:
            self._count.labels(self.service).inc()
        self._warnings.warning(
            "unlisted",
            "region %r is not one of index version %s's regions: served only the items sold everywhere, ranked by "
            "the shop's sales (a region new since the index's data, or a misspelt code)",
            region[:32],
            version,
        )
