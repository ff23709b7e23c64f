"""Fixtures for the ranking service's integration tests: a small torch ranker with candidate features and a return
head (exported to ONNX like training exports), copies of model repositories, and a real Triton server.

The Triton server is the one ``scripts/install_triton.sh`` (``make triton``) installs under ``.cache/triton``. Where
it is not installed the Triton tests skip, naming the reason; with ``AISLE_TRITON_REQUIRED=1`` they fail instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from services.demo.triton import TRITON_LAUNCHER, LocalTriton, local_triton, triton_missing
from services.ranking.features import CANDIDATE_FEATURES, ItemFeatureSnapshot, candidate_features
from tests.conftest import PROJECT_ROOT

PROJECT_MODEL = PROJECT_ROOT / "model_repository" / "ranker"

#: The feature contract's width (services.ranking.features.CANDIDATE_FEATURES), wherever it stands.
FEATURES = len(CANDIDATE_FEATURES)
FEATURE_INPUT_TEXT = f"""  {{
    name: "candidate_features"
    data_type: TYPE_FP32
    dims: [ -1, {FEATURES} ]
  }}
"""
WARMUP_FEATURES_TEXT = f"""    inputs: {{
      key: "candidate_features"
      value: {{ data_type: TYPE_FP32, dims: [ 16, {FEATURES} ], zero_data: true }}
    }}
"""
RETURN_OUTPUT_TEXT = """,
  {
    name: "return_probability"
    data_type: TYPE_FP32
    dims: [ -1 ]
  }
"""


def with_features(config_text: str) -> str:
    """A ranker config (GPU or local) that also declares ``candidate_features`` and ``return_probability``."""
    head, _, tail = config_text.partition('    name: "candidate_item_ids"')
    block_end = tail.index("  }\n") + len("  }")
    tail = tail[:block_end] + ",\n" + FEATURE_INPUT_TEXT + tail[block_end + 1 :]
    text = head + '    name: "candidate_item_ids"' + tail
    output_start = text.index('    name: "purchase_probability"')
    output_end = text.index("  }", output_start) + len("  }")
    text = text[:output_end] + RETURN_OUTPUT_TEXT.rstrip("\n") + text[output_end:]
    # The warm-up sample must carry every input, the features too.
    warmup = text.index('key: "candidate_item_ids"', text.index("model_warmup"))
    after = text.index("    }\n", warmup) + len("    }\n")
    return text[:after] + WARMUP_FEATURES_TEXT + text[after:]


def copy_model_repository(source: Path, target: Path, *, local_config: bool = True) -> Path:
    """A copy of ``source`` (a repository) with the project's ``configs/`` (local config, python model) added."""
    shutil.copytree(source, target)
    if local_config:
        for model_dir in target.iterdir():
            configs = model_dir / "configs"
            if not configs.exists():
                shutil.copytree(PROJECT_MODEL / "configs", configs)
    return target


# --- a small torch ranker with candidate features and a return head ----------------------------------------------
@dataclass(frozen=True)
class FeatureModel:
    repository: Path
    item_ids: list[str]
    snapshot: ItemFeatureSnapshot
    module: object  # the torch module, for reference scores

    def reference(self, history: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Torch's scores for token arrays, with the features built by the shared feature code."""
        import torch

        features = candidate_features(self.snapshot, history, candidates)
        with torch.no_grad():
            purchase, returns = self.module(
                torch.from_numpy(history), torch.from_numpy(candidates), torch.from_numpy(features)
            )
        return purchase.numpy(), returns.numpy()


def _feature_ranker(num_items: int):
    import torch
    from torch import nn

    class FeatureRanker(nn.Module):
        """Mean of the history's item vectors against each candidate's vector plus a projection of its features."""

        def __init__(self):
            super().__init__()
            self.items = nn.Embedding(num_items + 1, 16, padding_idx=0)
            self.features = nn.Linear(FEATURES, 16)
            self.bias = nn.Linear(FEATURES, 1)
            self.returns = nn.Linear(16 + FEATURES, 1)

        def forward(self, history_item_ids, candidate_item_ids, candidate_features):
            mask = (history_item_ids != 0).to(torch.float32)[:, :, None]
            user = (self.items(history_item_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            items = self.items(candidate_item_ids) + self.features(candidate_features)
            logits = (items * user[:, None, :]).sum(-1) + self.bias(candidate_features).squeeze(-1)
            returns = self.returns(torch.cat([items, candidate_features], dim=-1)).squeeze(-1)
            return torch.sigmoid(logits), torch.sigmoid(returns)

    torch.manual_seed(11)
    return FeatureRanker().eval()


def export_feature_model(module, path: Path, num_items: int) -> None:
    import torch

    history = torch.zeros(2, 50, dtype=torch.int64)
    candidates = torch.ones(2, 8, dtype=torch.int64)
    features = torch.zeros(2, 8, FEATURES)
    batch, count = torch.export.Dim("batch"), torch.export.Dim("candidates")
    with _quiet():
        torch.onnx.export(
            module,
            (history, candidates, features),
            str(path),
            input_names=["history_item_ids", "candidate_item_ids", "candidate_features"],
            output_names=["purchase_probability", "return_probability"],
            dynamic_shapes={
                "history_item_ids": {0: batch},
                "candidate_item_ids": {0: batch, 1: count},
                "candidate_features": {0: batch, 1: count},
            },
            dynamo=True,
            opset_version=18,
            external_data=False,
            verbose=False,
        )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The dynamo exporter logs every graph pass and warns a lot; keep errors only."""
    names = ("onnx_ir", "onnxscript", "torch.onnx", "torch.export")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@pytest.fixture(scope="session")
def feature_model(tmp_path_factory: pytest.TempPathFactory) -> FeatureModel:
    """Repository ``ranker`` (GPU config + local config, both with features and the return head), version 1."""
    rng = np.random.default_rng(5)
    num_items = 60
    item_ids = [f"sku-{i:03d}" for i in range(num_items)]
    snapshot = ItemFeatureSnapshot.from_catalog(
        prices=rng.uniform(1, 200, num_items),
        margins=rng.uniform(0.05, 0.6, num_items),
        popularity=rng.integers(0, 500, num_items),
        return_rates=rng.uniform(0, 0.4, num_items),
        in_stock=(rng.uniform(size=num_items) > 0.2).astype(int),
    )
    module = _feature_ranker(num_items)
    repository = tmp_path_factory.mktemp("feature-model") / "model_repository"
    model_dir = repository / "ranker"
    (model_dir / "configs").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(with_features((PROJECT_MODEL / "config.pbtxt").read_text()))
    (model_dir / "configs" / "local.pbtxt").write_text(
        with_features((PROJECT_MODEL / "configs" / "local.pbtxt").read_text())
    )
    shutil.copy(PROJECT_MODEL / "configs" / "onnx_python_model.py", model_dir / "configs")
    version = model_dir / "1"
    version.mkdir()
    export_feature_model(module, version / "model.onnx", num_items)
    (version / "item_vocabulary.txt").write_text("\n".join(item_ids) + "\n")
    snapshot.save(version / "item_features.npz")
    model = FeatureModel(repository, item_ids, snapshot, module)
    history = rng.integers(0, num_items + 1, size=(3, 50)).astype(np.int64)
    candidates = rng.integers(1, num_items + 1, size=(3, 9)).astype(np.int64)
    purchase, returns = model.reference(history, candidates)
    np.savez(
        version / "parity_sample.npz",
        history_item_ids=history,
        candidate_item_ids=candidates,
        candidate_features=candidate_features(snapshot, history, candidates),
        purchase_probability=purchase,
        return_probability=returns,
    )
    return model


# --- a real Triton server -----------------------------------------------------------------------------------------
#: Marks the tests that start Triton: they skip where it is missing, unless AISLE_TRITON_REQUIRED=1 (then they fail).
needs_triton = pytest.mark.skipif(
    triton_missing() is not None and os.environ.get("AISLE_TRITON_REQUIRED") != "1", reason=str(triton_missing())
)


def triton_launcher() -> Path:
    """The installed launcher, or skip (fail with AISLE_TRITON_REQUIRED=1) saying why it is missing."""
    missing = triton_missing()
    if missing is None:
        return TRITON_LAUNCHER
    if os.environ.get("AISLE_TRITON_REQUIRED") == "1":
        pytest.fail(missing)
    pytest.skip(missing)


@contextlib.contextmanager
def triton_server(repository: Path, log_path: Path, *, models: tuple[str, ...] = ("ranker",)) -> Iterator[LocalTriton]:
    """Runs Triton on free local ports with explicit model control and the local config; stops it on exit."""
    with local_triton(repository, log_path, models, launcher=triton_launcher()) as server:
        yield server
