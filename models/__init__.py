"""Shipped models. Importing this package is torch-free: it only locates packaged files."""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_NAME = "equiv-minilm-l6"


def model_dir(name: str = DEFAULT_MODEL_NAME) -> Path:
    return Path(__file__).resolve().parent / name


def default_model_path() -> Path:
    """The embedded default INT8 artifact (a self-contained .onnx)."""
    return model_dir() / "model.int8.onnx"
