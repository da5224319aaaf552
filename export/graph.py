"""fp32 graph build: the torch reference traced to ONNX, then fused offline by onnxruntime's
transformer optimizer (EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu)."""

from __future__ import annotations

import collections
import logging
import warnings
from pathlib import Path

import onnx
import torch

from rewardrt.export.errors import ExportError
from rewardrt.export.reference import RewardNet
from rewardrt.runtime.spec import INPUT_NAMES, OUTPUT_NAMES

log = logging.getLogger(__name__)
OPSET = 17
# Fused ops expected per encoder layer after optimization; fewer means a pattern was missed.
EXPECTED_FUSIONS = {"Attention": 1, "SkipLayerNormalization": 2, "BiasGelu": 1}
FUSED_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "BiasGelu",
             "EmbedLayerNormalization", "LayerNormalization")


def trace(net: RewardNet, path: Path) -> None:
    """torch -> ONNX with dynamic batch and sequence axes; outputs ``score`` and ``raw_score``."""
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 2178, 102, 0, 0, 0]])
    mask = (ids != 0).long()
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    axes.update({name: {0: "batch"} for name in OUTPUT_NAMES})
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.eval(), (ids, mask), str(path), input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES), dynamic_axes=axes, opset_version=OPSET,
            do_constant_folding=True, dynamo=False,
        )


def fuse(src: Path, dst: Path, num_heads: int, hidden_size: int, num_layers: int,
         fuse_embeddings: bool = True, separate_qkv: bool = False) -> dict[str, int]:
    """Offline transformer fusions; returns the fused-op counts (checked against the layer count).

    ``fuse_embeddings=False`` keeps the word-embedding Gather visible so it can be stored as int8
    (EmbedLayerNormalization only takes an fp32 table); ``separate_qkv`` fuses attention as
    MultiHeadAttention after three plain MatMuls instead of one Attention op holding fp32 weights."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    logging.getLogger("onnxruntime.transformers").setLevel(logging.WARNING)
    opts = FusionOptions("bert")
    opts.enable_embed_layer_norm = fuse_embeddings
    opts.use_multi_head_attention = separate_qkv
    model = optimizer.optimize_model(
        str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
        optimization_options=opts, opt_level=0,
    )
    counts = dict(collections.Counter(n.op_type for n in model.model.graph.node))
    expected = dict(EXPECTED_FUSIONS)
    if separate_qkv:
        expected["MultiHeadAttention"] = expected.pop("Attention")
    missing = {op: num_layers * k for op, k in expected.items() if counts.get(op, 0) < num_layers * k}
    if missing:
        # An unfused graph is still correct, only slower: say so instead of failing.
        log.warning("transformer fusion incomplete (expected at least %s, got %s)", missing,
                    {op: counts.get(op, 0) for op in missing})
    model.save_model_to_file(str(dst))
    return counts


def load(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise ExportError(f"cannot read the traced graph {path}: {exc}") from exc
