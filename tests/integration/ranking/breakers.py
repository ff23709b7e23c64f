"""Ways to break a version's model.onnx, as a broken export or a damaged copy would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def rename_input(path: Path) -> None:
    model = onnx.load(str(path))
    old = model.graph.input[0].name
    model.graph.input[0].name = "history"
    for node in model.graph.node:
        node.input[:] = ["history" if name == old else name for name in node.input]
    onnx.save(model, str(path))


def poison_weights(path: Path) -> None:
    """NaN weights: the graph is valid and loads, but the output is NaN."""
    model = onnx.load(str(path))
    for initializer in model.graph.initializer:
        values = numpy_helper.to_array(initializer)
        if values.dtype == np.float32 and values.size > 100:
            initializer.CopyFrom(numpy_helper.from_array(np.full_like(values, np.nan), initializer.name))
    onnx.save(model, str(path))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])
