"""``python -m services.ranking`` (or ``aisle serve ranking``): runs the ranking service."""

from __future__ import annotations

import sys

from services.core.grpc_runtime import configure_grpc_runtime

configure_grpc_runtime()  # before anything imports grpc

from services.core.bootstrap import serve_main  # noqa: E402
from services.ranking.app import build_application  # noqa: E402
from services.ranking.settings import RankingSettings  # noqa: E402


def main(overrides: dict | None = None, argv: list[str] | None = None) -> int:
    return serve_main(RankingSettings, build_application, overrides, argv or ())


if __name__ == "__main__":
    raise SystemExit(main(argv=sys.argv[1:]))
