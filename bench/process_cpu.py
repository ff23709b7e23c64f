"""CPU time of a process, for the benchmarks' CPU-per-request figures (Linux ``/proc``)."""

from __future__ import annotations

import os
from pathlib import Path


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (field 3 onwards)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def cpu_seconds(pid: int, with_children: bool = False) -> float:
    """User + system CPU time of a process so far; with ``with_children``, of its live descendants too (a
    Triton server's python backend stubs, for instance)."""
    pids = [pid, *descendants(pid)] if with_children else [pid]
    total = 0
    for each in pids:
        try:
            fields = _stat(each)
        except OSError:  # exited meanwhile
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(int(_stat(int(entry.name))[1]), []).append(int(entry.name))
            except OSError:
                continue
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
