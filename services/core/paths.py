"""Folder paths given on a command line, checked before anything is written to them, and the hidden staging folders
and files artefacts are written in before they are renamed into place."""

from __future__ import annotations

import os
import tempfile
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


def current_umask() -> int:
    """The process's umask (reading it means setting it: put straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def staging_folder(parent: Path, prefix: str) -> Path:
    """A new hidden folder in ``parent`` to write an artefact in before it is renamed into place, with the
    permissions ``mkdir`` would give it: ``mkdtemp`` makes it 0700, which a server running as another user than the
    builder (a shared volume, a serving account) could not read once renamed."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    folder.chmod(0o777 & ~current_umask())
    return folder


def share_like_a_plain_write(path: Path) -> None:
    """``path`` (made by ``mkstemp``, 0600) given the permissions a plain write would give it."""
    os.chmod(path, 0o666 & ~current_umask())
