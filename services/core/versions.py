"""What a published version folder holds, as a value to compare: how the services tell a copy still in progress
(or completed since) from a folder that has not changed."""

from __future__ import annotations

from pathlib import Path
from stat import S_ISREG

#: (path relative to the version folder, size, mtime_ns) of each of a version's files, sorted by path.
FolderStamp = tuple[tuple[str, int, int], ...]


def folder_stamp(folder: Path) -> FolderStamp:
    """Every file under ``folder`` by name, size and modification time; empty when the folder cannot be read. A
    copy going on, or completed since, changes it; an untouched folder keeps it."""
    stamps = []
    try:
        for path in folder.rglob("*"):
            try:
                info = path.stat()
            except OSError:  # removed while listed: the next stamp differs anyway
                continue
            if S_ISREG(info.st_mode):
                stamps.append((str(path.relative_to(folder)), info.st_size, info.st_mtime_ns))
    except OSError:
        return ()
    return tuple(sorted(stamps))
