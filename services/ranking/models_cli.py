"""``aisle models``: the model repository workflow for ML engineers (validate, publish, roll back).

Imported by ``services/cli.py`` for every ``aisle`` call: keep imports light at module level.
"""

from __future__ import annotations

import click


@click.group()
def models() -> None:
    """Validate, publish and roll back ranking model versions in a Triton-layout model repository."""
