"""Ranker on an NVIDIA GPU, for GPU-pool sizing: torch (CUDA) and ONNX Runtime's CUDA provider where installed.

    .venv/bin/python bench/ranking_gpu.py [--seconds 5] [--out bench/results/ranking_gpu.json]

Needs a machine with an NVIDIA GPU and torch built with CUDA (the project's venv has the CPU build: install a CUDA
torch there, e.g. ``pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126``). The ONNX
Runtime rows need ``onnxruntime-gpu`` (the ``gpu`` extra, instead of ``cpu``); without it they are skipped and the
reason recorded. The provider is read from the created session, so a CUDA provider that failed to load (and fell
back to the CPU) is reported as such, never as a GPU number.

Model: the same ranker as bench/ranking.py (TinySequenceRanker d=64, 2 layers, history 50, 5,000 items, random
weights). For batch B in {1, 32, 256} users x C = 500 candidates it measures, per configuration, the latency of one
call (p50/p99, including host<->device copies, as the service would pay them) and users scored per second:

- ``torch_fp32`` and ``torch_fp16`` (autocast) eager on CUDA;
- ``onnxruntime_cuda``: ONNX Runtime with the CUDA provider on the exported model.onnx (numpy in and out).

Writes bench/results/ranking_gpu.json; record its numbers in docs/benchmarks.md ("Ranking on GPU").
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.core.grpc_runtime import configure_grpc_runtime  # noqa: E402

configure_grpc_runtime()  # before anything imports grpc: the services' own gRPC runtime

BATCHES = (1, 32, 256)
CANDIDATES = 500
ITEMS = 5000
HISTORY = 50


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def timed(call, seconds: float, sync=lambda: None) -> list[float]:
    for _ in range(5):  # warm-up: kernels, allocator, cuDNN/cuBLAS handles
        call()
    sync()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 20:
        started = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - started)
    return times


def row(name: str, batch: int, times: list[float], **extra) -> dict:
    p50 = float(np.percentile(times, 50))
    result = {
        "backend": name,
        "batch": batch,
        "candidates": CANDIDATES,
        "calls": len(times),
        "p50_ms": p50 * 1000,
        "p99_ms": float(np.percentile(times, 99)) * 1000,
        "users_per_s": batch / p50,
        **extra,
    }
    log(
        f"{name:18s} B={batch:3d} C={CANDIDATES}: p50 {result['p50_ms']:.3f} ms  p99 {result['p99_ms']:.3f} ms  "
        f"{result['users_per_s']:.0f} users/s"
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="Seconds per configuration and batch size.")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ranking_gpu.json")
    args = parser.parse_args()

    import torch

    from training.tiny_ranker import TinySequenceRanker

    if not torch.cuda.is_available():
        print(
            f"no CUDA device for torch {torch.__version__} (CPU build or no GPU): this benchmark needs an NVIDIA GPU",
            file=sys.stderr,
        )
        return 2
    device = torch.device("cuda")
    gpu = torch.cuda.get_device_name(0)
    log(f"GPU: {gpu}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    torch.manual_seed(0)
    module = TinySequenceRanker(ITEMS, dim=64, history_length=HISTORY, layers=2).eval()
    rng = np.random.default_rng(0)
    inputs = {
        batch: (
            rng.integers(0, ITEMS + 1, size=(batch, HISTORY), dtype=np.int64),
            rng.integers(1, ITEMS + 1, size=(batch, CANDIDATES), dtype=np.int64),
        )
        for batch in BATCHES
    }
    rows: list[dict] = []
    notes: list[str] = []

    cuda_module = module.to(device)
    for name, autocast in (("torch_fp32", False), ("torch_fp16", True)):
        for batch in BATCHES:
            history, candidates = inputs[batch]

            def call(history=history, candidates=candidates, autocast=autocast):
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=autocast):
                    h = torch.from_numpy(history).to(device, non_blocking=True)
                    c = torch.from_numpy(candidates).to(device, non_blocking=True)
                    return cuda_module(h, c).float().cpu().numpy()

            rows.append(row(name, batch, timed(call, args.seconds, torch.cuda.synchronize)))

    try:
        import onnxruntime as ort
    except ImportError as error:
        ort = None
        notes.append(f"onnxruntime not importable: {error}")
    if ort is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            cpu_module = module.to("cpu")
            batch_dim, count_dim = torch.export.Dim("batch"), torch.export.Dim("candidates")
            for logger in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export"):
                logging.getLogger(logger).setLevel(logging.ERROR)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    cpu_module,
                    (torch.zeros(2, HISTORY, dtype=torch.int64), torch.ones(2, 8, dtype=torch.int64)),
                    str(path),
                    input_names=["history_item_ids", "candidate_item_ids"],
                    output_names=["purchase_probability"],
                    dynamic_shapes={
                        "history_item_ids": {0: batch_dim},
                        "candidate_item_ids": {0: batch_dim, 1: count_dim},
                    },
                    dynamo=True,
                    opset_version=18,
                    external_data=False,
                )
            session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            provider = session.get_providers()[0]
            if provider != "CUDAExecutionProvider":
                notes.append(
                    f"ONNX Runtime {ort.__version__} gave {session.get_providers()} (install onnxruntime-gpu with "
                    "matching CUDA/cuDNN for the CUDA provider): ONNX Runtime rows skipped"
                )
                log(notes[-1])
            else:
                for batch in BATCHES:
                    history, candidates = inputs[batch]
                    feed = {"history_item_ids": history, "candidate_item_ids": candidates}
                    rows.append(
                        row("onnxruntime_cuda", batch, timed(lambda feed=feed: session.run(None, feed), args.seconds))
                    )

    report = {
        "rows": rows,
        "notes": notes,
        "setup": {
            "gpu": gpu,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "onnxruntime": getattr(ort, "__version__", None) if ort is not None else None,
            "model": "TinySequenceRanker d=64 layers=2 history=50, 5000 items, random weights",
            "seconds_per_config": args.seconds,
            "machine": platform.machine(),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
