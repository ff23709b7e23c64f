"""Triton python-backend model that runs a version's ``model.onnx`` with ONNX Runtime.

Used by ``configs/local.pbtxt`` (CPU-only machines, where the locally runnable Triton has only the python backend);
production Triton runs the same ``model.onnx`` with its onnxruntime backend from ``config.pbtxt``. The file lives
once beside the configs, not in each version folder: ``local.pbtxt`` points at it with
``default_model_filename: "../configs/onnx_python_model.py"`` (relative to the version folder).

Runs inside Triton's python backend stub with the backend's own environment (numpy<2 + onnxruntime), never in the
ranking service: it imports nothing from Aisle.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

_NUMPY_TYPES = {"TYPE_INT64": np.int64, "TYPE_INT32": np.int32, "TYPE_FP32": np.float32}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        folder = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        threads = config.get("parameters", {}).get("intra_op_threads", {}).get("string_value", "1")
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            os.path.join(folder, "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [(t["name"], _NUMPY_TYPES[t["data_type"]]) for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        graph_inputs = {t.name for t in self.session.get_inputs()}
        graph_outputs = {t.name for t in self.session.get_outputs()}
        declared = {name for name, _ in self.inputs}
        if graph_inputs != declared or not set(self.outputs) <= graph_outputs:
            raise pb_utils.TritonModelException(
                f"{folder}/model.onnx: graph inputs {sorted(graph_inputs)} / outputs {sorted(graph_outputs)} "
                f"do not match the config's {sorted(declared)} / {self.outputs}"
            )
        self._check_finite(config, folder)

    def _check_finite(self, config, folder):
        """Warm-up that refuses a model giving non-probabilities (Triton's model_warmup only checks it runs)."""
        feed = {}
        for tensor in config["input"]:
            dims = [2] + [16 if d == -1 else int(d) for d in tensor["dims"]]
            feed[tensor["name"]] = np.zeros(dims, dtype=_NUMPY_TYPES[tensor["data_type"]])
        for name, values in zip(self.outputs, self.session.run(self.outputs, feed), strict=True):
            if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
                raise pb_utils.TritonModelException(f"{folder}: warm-up {name} is not a probability in [0, 1]")

    def execute(self, requests):
        # The dynamic batcher hands over several requests; those with equal shapes run as one batch.
        feeds = []
        for request in requests:
            feed = {}
            for name, dtype in self.inputs:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    feed[name] = tensor.as_numpy().astype(dtype, copy=False)
            feeds.append(feed)
        groups = {}
        for i, feed in enumerate(feeds):
            groups.setdefault(tuple((name, feed[name].shape[1:]) for name in sorted(feed)), []).append(i)
        responses = [None] * len(requests)
        for members in groups.values():
            try:
                merged = {name: np.concatenate([feeds[i][name] for i in members]) for name in feeds[members[0]]}
                results = self.session.run(self.outputs, merged)
            except Exception as exc:  # one bad group must not fail the others
                for i in members:
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc)))
                continue
            start = 0
            for i in members:
                rows = next(iter(feeds[i].values())).shape[0]
                pairs = zip(self.outputs, results, strict=True)
                tensors = [pb_utils.Tensor(name, values[start : start + rows]) for name, values in pairs]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += rows
        return responses
