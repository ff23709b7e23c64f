from __future__ import annotations

import pytest

from services.core.onnx_runtime import OnnxRuntimeInstallError, check_onnxruntime_install


def versions(**installed):
    return lambda name: installed.get(name.replace("-", "_"))


def test_cpu_build_alone_is_accepted():
    assert check_onnxruntime_install(versions(onnxruntime="1.31.1")) == "onnxruntime"


def test_gpu_build_alone_is_accepted():
    assert check_onnxruntime_install(versions(onnxruntime_gpu="1.31.1")) == "onnxruntime-gpu"


def test_both_builds_are_refused_with_the_fix():
    with pytest.raises(OnnxRuntimeInstallError, match=r"both .* pip uninstall -y onnxruntime onnxruntime-gpu"):
        check_onnxruntime_install(versions(onnxruntime="1.31.1", onnxruntime_gpu="1.31.1"))


def test_no_build_is_refused_with_the_fix():
    with pytest.raises(OnnxRuntimeInstallError, match=r"aisle\[cpu\]"):
        check_onnxruntime_install(versions())


def test_this_environment_has_exactly_one():
    assert check_onnxruntime_install() in {"onnxruntime", "onnxruntime-gpu"}
