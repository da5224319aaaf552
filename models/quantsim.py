"""Simulated INT8 of the export's integer-GEMM path, for training a model whose INT8 artifact stays
close to its own fp32 scores (the recipe's ``quant_consistency``).

The export's ``token`` scheme quantizes each encoder Linear's input per token (symmetric, one scale
per row; one-sided after a GELU) and its weights per output channel (:mod:`rewardrt.export.quantize`).
:func:`simulated_int8` makes the encoder's Linears compute on those rounded values, with
straight-through gradients, so a training step can see how far the quantized model's score is from
the fp32 one and move the weights where that gap is small. Weights are rounded to nearest here; the
export rounds them GPTQ-style, which errs less, so the simulation is the harder of the two.

With a ``noise`` generator the codes are not rounded but moved by uniform noise of one code step
(the error of *some* rounding of the same grid): a model cannot fit itself to one fixed rounding of
its weights, which the export (GPTQ, blocks of 32, another bit width) does not reproduce anyway.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from rewardrt.export.quantize.activations import GELU_FLOOR, activation_range, one_sided_range


def _straight_through(x: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
    """``rounded`` forward, the identity backward."""
    return x + (rounded - x).detach()


def _codes(v: torch.Tensor, noise: torch.Generator | None) -> torch.Tensor:
    """``v`` (in code steps) rounded, or moved by uniform noise in [-0.5, 0.5) from ``noise``."""
    if noise is None:
        return torch.round(v)
    return v + (torch.rand(v.shape, generator=noise, dtype=v.dtype) - 0.5)


def fake_quant_rows(x: torch.Tensor, bits: int, one_sided: bool = False,
                    noise: torch.Generator | None = None) -> torch.Tensor:
    """``x`` rounded to per-row codes as the export's activation chain makes them: ±qmax around the
    row's max |x|, or (``one_sided``, a GELU output) codes 0..2·qmax+1 of x + GELU_FLOOR."""
    qmax, _ = activation_range(bits)
    if one_sided:
        top = one_sided_range(bits)
        shifted = x + GELU_FLOOR
        scale = shifted.amax(-1, keepdim=True).clamp_min(1e-12) / top
        rounded = _codes(shifted / scale, noise).clamp(0, top) * scale - GELU_FLOOR
    else:
        scale = x.abs().amax(-1, keepdim=True).clamp_min(1e-12) / qmax
        rounded = _codes(x / scale, noise).clamp(-qmax, qmax) * scale
    return _straight_through(x, rounded)


def fake_quant_weight(w: torch.Tensor, noise: torch.Generator | None = None) -> torch.Tensor:
    """A Linear's weight [out, in] rounded to int8 codes per output channel (±127)."""
    scale = w.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127.0
    return _straight_through(w, _codes(w / scale, noise).clamp(-127, 127) * scale)


def encoder_linears(encoder: nn.Module) -> dict[str, nn.Linear]:
    """The transformer layers' Linears (Q, K, V, attention output, FFN in and out): the MatMuls the
    export can turn into integer GEMMs."""
    return {name: m for name, m in encoder.named_modules()
            if isinstance(m, nn.Linear) and name.startswith("encoder.layer.")}


def reads_gelu(name: str) -> bool:
    """Whether the Linear ``name`` (a BERT layer's) reads a GELU output: the FFN's second Linear."""
    return name.endswith(".output.dense") and ".attention." not in name


@contextlib.contextmanager
def simulated_int8(encoder: nn.Module, bits: int = 7, noise_seed: int | None = None,
                   only: Callable[[str], bool] | None = None) -> Iterator[None]:
    """Within the block, the encoder's layer Linears compute on per-token ``bits``-bit activation
    codes and per-channel int8 weights (straight-through gradients); restored on exit.
    ``noise_seed``: codes moved by uniform noise of one step instead of rounded, drawn from a
    generator of their own (the global random state, and so dropout, is not touched).
    ``only``: the Linears (by module name, e.g. ``encoder.layer.0.attention.self.query``) to
    quantize; the others stay fp32."""
    patched = []
    noise = None if noise_seed is None else torch.Generator().manual_seed(noise_seed)
    try:
        for name, linear in encoder_linears(encoder).items():
            if only is not None and not only(name):
                continue
            def forward(x: torch.Tensor, linear: nn.Linear = linear, one_sided: bool = reads_gelu(name)) -> torch.Tensor:
                return F.linear(fake_quant_rows(x, bits, one_sided, noise), fake_quant_weight(linear.weight, noise),
                                linear.bias)
            linear.forward = forward
            patched.append(linear)
        yield
    finally:
        for linear in patched:
            del linear.forward  # back to the class's forward
