"""Fixtures: tiny random BERT checkpoints in the neuraltxt-reward-tiny layout, exported once per
session. The real packaged MiniLM is used only by tests marked ``slow``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def make_checkpoint(out: Path, *, hidden: int = 32, layers: int = 2, heads: int = 4, seed: int = 0,
                    head_scale: float = 1.0) -> Path:
    """A random BERT (real MiniLM vocabulary and tokenizer) plus a head whose raw outputs spread
    over roughly [0, 1], so the clamp does not hide differences."""
    import torch
    from transformers import BertConfig, BertModel

    from rewardrt.models.base import base_model_dir

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=4 * hidden,
                        max_position_embeddings=512)
    BertModel(config).eval().save_pretrained(str(out), safe_serialization=True)
    base = base_model_dir(verify=False)
    for name in TOKENIZER_FILES:
        shutil.copy2(base / name, out / name)
    weight = torch.randn(1, 2 * hidden) * (head_scale * 0.25 / (2 * hidden) ** 0.5)
    torch.save({"1.weight": weight, "1.bias": torch.tensor([0.5])}, out / "head_weights.pt")
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def _export(checkpoint: Path, out: Path, precision: str):
    from rewardrt.export.config import ExportConfig
    from rewardrt.export.exporter import export

    # the AVX2 target (7-bit codes, exact on every x86 CPU): the fixtures behave the same on VNNI and AVX2 hosts
    cfg = ExportConfig.avx2(precision=precision, validation_size=300, calibration_size=64)
    return export(checkpoint, out, cfg)


@pytest.fixture(scope="session")
def tiny_fp32(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp32") / "tiny.fp32.onnx"
    report = _export(tiny_checkpoint, out, "fp32")
    return out, report


@pytest.fixture(scope="session")
def tiny_int8(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "tiny.int8.onnx"
    report = _export(tiny_checkpoint, out, "int8")
    return out, report


@pytest.fixture(scope="session")
def tiny_reference(tiny_checkpoint):
    from rewardrt.export.reference import TorchReward

    return TorchReward(tiny_checkpoint)


@pytest.fixture(scope="session")
def fused(tiny_checkpoint, tiny_reference, tmp_path_factory):
    """The tiny checkpoint's fp32 graph as the INT8 export quantizes it (Q, K, V separate), and its
    tokenizer JSON."""
    from rewardrt.export import graph
    from rewardrt.export.checkpoint import locate, read_config

    files = locate(tiny_checkpoint)
    arch = read_config(files)
    work = tmp_path_factory.mktemp("stages")
    graph.trace(tiny_reference.net, work / "traced.onnx")
    graph.fuse(work / "traced.onnx", work / "fused.onnx", arch["num_attention_heads"], arch["hidden_size"],
               arch["num_hidden_layers"], fuse_embeddings=False, separate_qkv=True)
    model = graph.load(work / "fused.onnx")
    graph.expand_layer_norms(model)
    return model, files.tokenizer.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def dev_pairs():
    """(references, responses): every sixth held-out row of the bundled pair set (short answers,
    sentence pairs, worked solutions, long texts), which ships with the project."""
    from rewardrt.export.pairs import load_pair_set

    rows = load_pair_set().gate[::6]
    return [r["reference"] for r in rows], [r["response"] for r in rows]


@pytest.fixture(scope="session")
def minilm_shaped_checkpoint(tmp_path_factory) -> Path:
    """One random layer at MiniLM's width (hidden 384, so the head is Linear(768, 1)): upstream
    neural-txt builds its head at that size whatever the checkpoint says."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt384") / "tiny384", hidden=384, layers=1, heads=12,
                           seed=3)


@pytest.fixture(scope="session")
def minilm_shaped_fp32(minilm_shaped_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp32-384") / "tiny384.fp32.onnx"
    _export(minilm_shaped_checkpoint, out, "fp32")
    return out


@pytest.fixture
def cli(capsys):
    """Run ``rewardrt ARGV`` in process: (exit code, stdout, stderr), argparse's exits included."""
    from rewardrt.cli import main

    def run(argv: list[str]) -> tuple[int, str, str]:
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err
    return run


def assert_one_line_error(code: int, err: str, pattern: str) -> None:
    """The CLI's error style: exit 2, one ``error: ...`` line matching ``pattern``, no traceback."""
    import re

    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(pattern, err), err
