"""``python -m services.retrieval`` (or ``aisle serve retrieval``): runs the retrieval service."""

from __future__ import annotations

import sys

from services.core.grpc_runtime import configure_grpc_runtime

configure_grpc_runtime()  # before anything imports grpc

from services.core.bootstrap import serve_main  # noqa: E402
from services.retrieval.app import build_application  # noqa: E402
from services.retrieval.settings import RetrievalSettings  # noqa: E402


def main(overrides: dict | None = None, argv: list[str] | None = None) -> int:
    return serve_main(RetrievalSettings, build_application, overrides, argv or ())


if __name__ == "__main__":
    raise SystemExit(main(argv=sys.argv[1:]))
