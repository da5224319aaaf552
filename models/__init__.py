"""Shipped models. Importing this package is torch-free: it only locates packaged files."""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_NAME = "equiv-minilm-l6"
# The default model's INT8 artifacts by export target (rewardrt.export.config.TARGETS). The portable
# one (target avx2: 7-bit codes, exact on every x86 CPU) is always packaged; the VNNI one (target
# avx512-vnni: 8-bit codes and a plan fitted to VNNI kernels) only where the build carries it.
# Which one RewardModel() loads: rewardrt.runtime.api.select_default_model.
DEFAULT_ARTIFACTS = {"avx2": "model.int8.onnx", "avx512-vnni": "model.vnni.int8.onnx"}
PORTABLE_TARGET = "avx2"


def model_dir(name: str = DEFAULT_MODEL_NAME) -> Path:
    return Path(__file__).resolve().parent / name


def default_model_path(target: str = PORTABLE_TARGET) -> Path:
    """The embedded default INT8 artifact for ``target`` (a sealed .onnx whose tensors are in the
    weights file beside it; it may be absent for a target other than the portable one)."""
    if target not in DEFAULT_ARTIFACTS:
        raise ValueError(f"target must be one of {', '.join(DEFAULT_ARTIFACTS)}, got {target!r}")
    return model_dir() / DEFAULT_ARTIFACTS[target]
