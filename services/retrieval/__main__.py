"""``python -m services.retrieval`` (or ``aisle serve retrieval``): runs the retrieval service."""

from __future__ import annotations

from services.core.bootstrap import serve_main
from services.retrieval.app import build_application
from services.retrieval.settings import RetrievalSettings


def main(overrides: dict | None = None) -> int:
    return serve_main(RetrievalSettings, build_application, overrides)


if __name__ == "__main__":
    raise SystemExit(main())
