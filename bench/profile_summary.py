"""Summarises py-spy collapsed stacks (``--format raw``): the functions with the most samples, self and inclusive.

    .venv/bin/python bench/profile_summary.py bench/results/profiles/gateway.txt [--top 25] [--match services/]

Inclusive counts a function once per sample even when it recurses; ``--match`` keeps only frames whose file path
contains the text (e.g. ``services/`` for Aisle's own code).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^():]*)(?::(?P<line>\d+))?\)$")


def parse(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stacks.append(([name_of(frame) for frame in frames.split(";")], int(count)))
    return stacks


def name_of(frame: str) -> str:
    """``function (path/to/file.py:12)`` -> ``function (file.py)``: lines merged, so a function counts once."""
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    parts = match["file"].split("/")
    short = "/".join(parts[-3:]) if "services" in parts or "site-packages" not in parts else "/".join(parts[-2:])
    return f"{match['function']} ({short})"


def summarise(stacks: list[tuple[list[str], int]], top: int, match: str | None) -> str:
    total = sum(count for _, count in stacks) or 1
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        own[frames[-1]] += count
        for frame in set(frames):
            if match is None or match in frame:
                inclusive[frame] += count
    lines = [f"{total} samples", "", "self:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines += ["", "inclusive:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", help="inclusive list: only frames whose name contains this")
    args = parser.parse_args()
    print(summarise(parse(args.profile), args.top, args.match))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
