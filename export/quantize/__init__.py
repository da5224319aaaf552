"""INT8 rewrites of an optimized fp32 graph, one MatMul at a time.

Why not plain ``quantize_dynamic``: it quantizes each activation tensor with ONE scale for the whole
batch, so (1) the mean⊕max pooling amplifies the noise of the few outlier channels that set that
scale (measured on MiniLM + a linear head: mean |Δ| 0.037-0.078, far over budget) and (2) a pair's
score depends on what else is in its batch. The schemes here quantize activations per token:

``token``  activations quantized per token (symmetric, one scale per row, computed at run time; 7- or
           8-bit codes, see :func:`activation_range`), weights int8 per output channel (symmetric).
           Integer GEMM through ``MatMulIntegerToFloat`` (MLAS u8s8, VNNI on AVX-512/AVX-VNNI
           CPUs), then the per-row scale. A GELU output (never below -0.17) is quantized
           one-sided instead: x + 0.1701 on codes 0..2·qmax+1, twice as fine, the shift's product
           with the weights subtracted after the GEMM.
``token2`` the same integer GEMM run twice: once on the activation's codes and once on the codes of
           what they left over (the rounding residual, on a 2·qmax times finer grid of the same row),
           so activations are carried at about 13 (7-bit codes) or 15 bits; weights as in ``token``,
           unsmoothed. Twice the integer work plus a few elementwise passes.
``block``  ``MatMulNBits`` 8-bit weights in blocks of ``block_size`` along K with int8 activations
           quantized per block of each row (accuracy_level 4): finer scales, so more accurate where
           a row has outliers, at some speed cost.
``dequant`` weights stored as int8 in blocks of ``block_size`` along K (symmetric, one fp32 scale
           per block and output channel), expanded back to fp32 by a constant Cast·Mul·Reshape
           chain that onnxruntime folds once when the session loads: the MatMul then runs in fp32
           on the dequantized weights. A quarter of the file bytes like ``block``, fp32 speed and
           fp32 activations on every CPU (``block``'s MatMulNBits is about fp32 speed on VNNI CPUs and
           ~2.5x slower on AVX2-only ones), at the price of fp32 weights in memory.
``fp32``   left alone.

All schemes are row-wise, so a row's result never depends on other rows of the batch.

The room's modules: :mod:`.plan` (:class:`QuantPlan`, :func:`apply_plan`, the *quantize* stage
:func:`quantize`), :mod:`.activations` (code ranges and the activation chains), :mod:`.integer`
(the integer-GEMM MatMul, GPTQ, smoothing), :mod:`.weights` (``dequant``, ``block``, embedding
tables), :mod:`.opset` (raising the opset for the ``qlinear`` chain), :mod:`.sites` (what a plan
can name).
"""

from __future__ import annotations

from rewardrt.export.quantize.activations import (
    ACTIVATION_BITS, CHAINS, GELU_FLOOR, GELU_OPS, activation_range, one_sided_range, residual_steps,
)
from rewardrt.export.quantize.integer import gptq_int8, smoothing_factors
from rewardrt.export.quantize.opset import QLINEAR_OPSET, raise_opset
from rewardrt.export.quantize.plan import (
    INTEGER_SCHEMES, SCHEMES, WEIGHT_ONLY_SCHEMES, ActivationStats, QuantPlan, apply_plan, quantize,
)
from rewardrt.export.quantize.sites import MatMulSite, quantizable_matmuls
from rewardrt.export.quantize.weights import (
    EMBEDDING_TABLES, dequant_weights, float16_exact_weights, float16_tables, int8_tables,
    quantize_embedding_tables,
)

__all__ = [
    "ACTIVATION_BITS", "CHAINS", "EMBEDDING_TABLES", "GELU_FLOOR", "GELU_OPS", "INTEGER_SCHEMES", "QLINEAR_OPSET", "SCHEMES",
    "WEIGHT_ONLY_SCHEMES", "ActivationStats", "MatMulSite", "QuantPlan", "activation_range", "apply_plan",
    "dequant_weights", "float16_exact_weights", "float16_tables", "gptq_int8", "int8_tables", "one_sided_range", "quantizable_matmuls", "quantize",
    "quantize_embedding_tables", "raise_opset", "residual_steps", "smoothing_factors",
]
