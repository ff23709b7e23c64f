"""Inference backends behind one interface (:class:`~services.ranking.backends.base.RankingBackend`): embedded ONNX
Runtime with micro-batching, Triton over gRPC, and Triton with a fallback to the embedded backend."""
