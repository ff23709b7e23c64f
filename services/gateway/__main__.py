"""``python -m services.gateway`` (or ``aisle serve gateway``): runs the public RecommendationService."""

from __future__ import annotations

from services.core.bootstrap import serve_main
from services.gateway.app import build_application
from services.gateway.settings import GatewaySettings


def main(overrides: dict | None = None) -> int:
    return serve_main(GatewaySettings, build_application, overrides)


if __name__ == "__main__":
    raise SystemExit(main())
