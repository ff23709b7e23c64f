"""``python -m services.ranking`` (or ``aisle serve ranking``): runs the ranking service."""

from __future__ import annotations

from services.core.bootstrap import serve_main
from services.ranking.app import build_application
from services.ranking.settings import RankingSettings


def main(overrides: dict | None = None) -> int:
    return serve_main(RankingSettings, build_application, overrides)


if __name__ == "__main__":
    raise SystemExit(main())
