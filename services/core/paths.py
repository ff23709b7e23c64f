"""Folder paths given on a command line, checked before anything is written to them."""

from __future__ import annotations

from pathlib import Path


def not_a_folder(path: Path) -> str | None:
    """Why ``path`` cannot be a folder, for a message about it ("... is a file" / "... runs through X, which is a
    file"); None when it is, or can become, one."""
    blocking = file_in_the_way(path)
    if blocking is None:
        return None
    return "is a file" if blocking == path else f"runs through {blocking}, which is a file"


def file_in_the_way(path: Path) -> Path | None:
    """The file at ``path`` or at one of its parents, which would make creating the folder fail (``mkdir`` raises
    NotADirectoryError deep inside the work); None when the path is, or can become, a folder."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None
