"""``export()``: checkpoint -> ONE self-contained, verified ONNX graph.

Steps: load the checkpoint as the torch reference; trace encoder + pooling + head + clamp to ONNX;
fuse offline; for INT8, search a per-MatMul quantization plan on calibration pairs; embed the
tokenizer and the spec as metadata; verify the written graph through the runtime against the torch
reference on validation pairs; publish atomically only if it is within budget.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from rewardrt.export import graph, quantize
from rewardrt.export.checkpoint import locate, read_config
from rewardrt.export.errors import FidelityError
from rewardrt.export.pairs import LONG_PAIRS, Pairs, calibration_pairs, load_pair_set, validation_pairs
from rewardrt.export.reference import DEFAULT_MAX_LENGTH, TorchReward
from rewardrt.export.workdir import export_workdir, remove_stale_workdirs
from rewardrt.runtime.cpu import integer_gemm_count
from rewardrt.runtime.integrity import fsync_dir, seal_bytes
from rewardrt.runtime.metrics import Fidelity, fidelity
from rewardrt.runtime.spec import (
    FORMAT_VERSION, KEY_FORMAT, KEY_SPEC, KEY_TOKENIZER, PRECISIONS, ArtifactSpec,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FidelityBudget:
    """How close an INT8 graph must stay to the torch reference (clamped scores)."""

    max_mean_abs: float = 0.01
    max_abs: float = 0.05
    min_spearman: float = 0.995
    min_agreement: float = 0.99   # share of pairs on the same side of 0.5

    def failures(self, f: Fidelity) -> list[str]:
        out = []
        if not f.mean_abs_diff <= self.max_mean_abs:
            out.append(f"mean|Δ| {f.mean_abs_diff:.5f} > {self.max_mean_abs}")
        if not f.max_abs_diff <= self.max_abs:
            out.append(f"max|Δ| {f.max_abs_diff:.5f} > {self.max_abs}")
        if not f.spearman >= self.min_spearman:
            out.append(f"spearman {f.spearman:.5f} < {self.min_spearman}")
        if not f.agreement_at_half >= self.min_agreement:
            out.append(f"agreement@0.5 {100 * f.agreement_at_half:.2f}% < {100 * self.min_agreement:.0f}%")
        return out

    def scaled(self, k: float, agreement_k: float | None = None) -> "FidelityBudget":
        """A stricter budget for the plan search, so the held-out gate has room to spare
        (``agreement_k``: another fraction for agreement@0.5; None: ``k``)."""
        a = k if agreement_k is None else agreement_k
        return FidelityBudget(self.max_mean_abs * k, self.max_abs * k,
                              1 - (1 - self.min_spearman) * k, 1 - (1 - self.min_agreement) * a)


FP32_MAX_RAW_DIFF = 1e-4


def auto_activation_bits(features: dict | None = None) -> int:
    """8-bit activation codes when this CPU sums u8 x s8 products exactly at 8 bits (VNNI, or not
    x86), else 7. The export verifies on this CPU, so the gate always measures exact arithmetic;
    an 8-bit artifact then warns when it loads on a CPU without VNNI (rewardrt.runtime.cpu)."""
    from rewardrt.runtime.cpu import integer_gemm_may_saturate

    return 7 if integer_gemm_may_saturate(features) else 8


@dataclass(frozen=True)
class ExportConfig:
    precision: str = "int8"
    max_length: int = DEFAULT_MAX_LENGTH
    calibration: str | None = None         # pair file to calibrate and gate on (None: the bundled set)
    calibration_size: int = 512
    validation_size: int | None = None     # None: every dev pair
    budget: FidelityBudget = field(default_factory=FidelityBudget)
    search_margin: float = 0.5             # the search aims at this fraction of the budget
    # ... and at this fraction of the agreement@0.5 slack (None: search_margin). Flips at 0.5 are a
    # count of rare events, so their margin is set against the calibration set's size.
    agreement_margin: float | None = None
    sensitivity_size: int = 160            # calibration pairs that rank the MatMuls (one trial each;
                                           # the ranking needs fewer pairs than the target check)
    smooth_alpha: float | None = 0.5       # SmoothQuant strength for integer-GEMM MatMuls
    outlier_channels: int = 8              # input channels per MatMul that may stay fp32
    gptq: bool = True                      # error-compensating rounding of integer-GEMM weights
    block_size: int = 32
    activation_chain: str = "qlinear"      # how token-scheme activations are quantized (same codes)
    # integer-GEMM activation codes: 7 bits give exact integer sums on every x86 CPU (AVX2 kernels
    # saturate 8-bit ones), so the verified scores hold everywhere; 8 bits are twice as fine but
    # exact only on VNNI CPUs. "auto": 8 when this (the exporting) CPU has VNNI, else 7
    activation_bits: int | str = "auto"
    # integer-GEMM schemes the plan search tries, in this order, on the least sensitive MatMuls
    integer_schemes: tuple[str, ...] = ("token",)
    # the int8-weight scheme of every other MatMul: "dequant" (fp32 compute on weights expanded at
    # load: fp32 speed on every CPU) or "block" (MatMulNBits: less memory, ~2.5x slower on AVX2).
    # "auto": search from dequant, then move what the search left on dequant to block when the
    # artifact targets VNNI CPUs (8-bit activation codes), as many as keep the plan inside the
    # search target, least sensitive first: there block is 0.75-0.88x the fp32 MatMul's time and
    # holds no fp32 weights in memory
    weight_only: str = "auto"
    # token-scheme MatMuls reading a GELU output (>= -0.17) quantize it one-sided: x + 0.1701 on
    # codes 0..255 (zero point 0) instead of ±127, twice as fine at the same speed, and
    # shift · W subtracted after the GEMM (see quantize.one_sided_range)
    one_sided_gelu: bool = True
    # when the held-out gate rejects the searched plan, retry with its integer-GEMM MatMuls cut in
    # this many even steps down to none (4: 3/4, 1/2, 1/4, none; the most sensitive leave first)
    gate_retries: int = 4
    # write the fused (Skip)LayerNormalization nodes back as plain ops: onnxruntime's CPU kernels
    # for them are scalar loops, ~2.4x slower (see graph.expand_layer_norms)
    expand_layer_norms: bool = True
    threads: int | None = None
    # a plan to try before searching (a MatMul name -> scheme dict, as an artifact records it): the
    # export takes it when it fits the search target and the gate, and searches only otherwise.
    # None: always search. ``export`` fills it from ``start_from`` (see there).
    start_plan: dict | None = None
    # where the start plan comes from: "default" (the embedded default artifact's plan, when this
    # graph has the same MatMuls: any checkpoint of the default's architecture), a path to an
    # artifact whose plan to start from, or None (always search)
    start_from: str | None = "default"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not isinstance(self.max_length, int) or not 3 <= self.max_length <= 8192:
            raise ValueError(f"max_length must be an int in [3, 8192], got {self.max_length!r}")
        if self.calibration_size < 8:
            raise ValueError(f"calibration_size must be >= 8, got {self.calibration_size}")
        if self.validation_size is not None and self.validation_size < 8:
            raise ValueError(f"validation_size must be >= 8 or None, got {self.validation_size}")
        if not 0 < self.search_margin <= 1:
            raise ValueError(f"search_margin must be in (0, 1], got {self.search_margin}")
        if self.agreement_margin is not None and not 0 < self.agreement_margin <= 1:
            raise ValueError(f"agreement_margin must be in (0, 1] or None, got {self.agreement_margin}")
        if self.sensitivity_size < 8:
            raise ValueError(f"sensitivity_size must be >= 8, got {self.sensitivity_size}")
        if self.smooth_alpha is not None and not 0 <= self.smooth_alpha <= 1:
            raise ValueError(f"smooth_alpha must be in [0, 1] or None, got {self.smooth_alpha}")
        if not 0 <= self.outlier_channels <= 64:
            raise ValueError(f"outlier_channels must be in [0, 64], got {self.outlier_channels}")
        if self.activation_bits == "auto":
            object.__setattr__(self, "activation_bits", auto_activation_bits())
        if self.activation_bits not in quantize.ACTIVATION_BITS or isinstance(self.activation_bits, bool):
            raise ValueError(f"activation_bits must be one of {quantize.ACTIVATION_BITS} or 'auto', "
                             f"got {self.activation_bits!r}")
        if self.activation_chain not in quantize.CHAINS:
            raise ValueError(f"activation_chain must be one of {quantize.CHAINS}, got {self.activation_chain!r}")
        if isinstance(self.integer_schemes, list):
            object.__setattr__(self, "integer_schemes", tuple(self.integer_schemes))
        if isinstance(self.integer_schemes, str) or any(
                x not in quantize.INTEGER_SCHEMES for x in self.integer_schemes) \
                or len(set(self.integer_schemes)) != len(self.integer_schemes):
            raise ValueError(f"integer_schemes must be distinct names from {quantize.INTEGER_SCHEMES}, "
                             f"got {self.integer_schemes!r}")
        if self.weight_only not in quantize.WEIGHT_ONLY_SCHEMES + ("auto",):
            raise ValueError(f"weight_only must be one of {quantize.WEIGHT_ONLY_SCHEMES + ('auto',)}, "
                             f"got {self.weight_only!r}")
        if not isinstance(self.gate_retries, int) or not 0 <= self.gate_retries <= 8:
            raise ValueError(f"gate_retries must be an int in [0, 8], got {self.gate_retries!r}")
        if self.block_size not in (16, 32, 64, 128, 256):
            raise ValueError(f"block_size must be a power of two in [16, 256], got {self.block_size}")

    @property
    def search_weight_only(self) -> str:
        """The int8-weight scheme the plan search starts from (``auto`` searches from dequant)."""
        return "dequant" if self.weight_only == "auto" else self.weight_only

    @property
    def leftovers_to_block(self) -> bool:
        """Whether the search tries moving what it left on dequant to block (``auto``, 8-bit codes)."""
        return self.weight_only == "auto" and self.activation_bits == 8


@dataclass
class ExportReport:
    output: str
    precision: str
    fidelity: Fidelity
    max_raw_abs_diff: float
    passed: bool
    failures: list[str]
    plan: dict[str, int]            # scheme -> number of MatMuls
    fused_ops: dict[str, int]
    file_bytes: int
    seconds: float
    # plans the held-out gate rejected before this one: {"plan": counts, "failures": [...]}
    rejected: list[dict] = field(default_factory=list)
    activation_bits: int | None = None  # of the integer-GEMM MatMuls (None: the plan has none)
    layer_norms_expanded: int = 0       # fused layer norms written back as plain ops
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        plan = ", ".join(f"{k}={v}" for k, v in sorted(self.plan.items()))
        lines = [
            f"{status} {self.precision} export -> {self.output}",
            f"  fidelity vs torch reference: {self.fidelity.describe()} raw max|Δ|={self.max_raw_abs_diff:.2e}",
            f"  MatMul plan: {plan}",
            "  fused: " + ", ".join(f"{k}={v}" for k, v in sorted(self.fused_ops.items()))
            + (f"; {self.layer_norms_expanded} layer norms written back as plain ops (faster on CPU)"
               if self.layer_norms_expanded else ""),
            f"  size {self.file_bytes / 1e6:.1f} MB, {self.seconds:.0f} s"
            + (" (" + ", ".join(f"{k} {v:.0f} s" for k, v in self.stage_seconds.items()) + ")"
               if self.stage_seconds else ""),
        ]
        if self.activation_bits == 8:
            lines.append("  activation codes: 8-bit, exact on CPUs with VNNI only (the runtime warns on "
                         "others); --activation-bits 7 for an artifact that runs exactly on every x86 CPU")
        elif self.activation_bits == 7:
            lines.append("  activation codes: 7-bit, exact on every x86 CPU")
        for r in self.rejected:
            counts = ", ".join(f"{k}={v}" for k, v in sorted(r["plan"].items()))
            lines.append(f"  rejected by the held-out gate first: {counts} ({'; '.join(r['failures'])})")
        lines += [f"  over budget: {f}" for f in self.failures]
        return "\n".join(lines)


def _versions() -> dict[str, str]:
    import onnxruntime
    import tokenizers
    import torch
    import transformers

    from rewardrt import __version__

    return {"rewardrt": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "tokenizers": tokenizers.__version__}


def _set_metadata(model: onnx.ModelProto, spec: ArtifactSpec, tokenizer_json: str) -> None:
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {
        KEY_FORMAT: str(FORMAT_VERSION), KEY_SPEC: spec.to_json(), KEY_TOKENIZER: tokenizer_json,
    })
    model.producer_name = "rewardrt"


def _write(model: onnx.ModelProto, path: Path) -> None:
    """Serialize and seal (content digest, see rewardrt.runtime.integrity), then write."""
    with open(path, "wb") as f:
        f.write(seal_bytes(model.SerializeToString()))
        f.flush()
        os.fsync(f.fileno())


def _runtime_scores(path: Path, pairs: Pairs, threads: int | None, output: str = "raw_score") -> np.ndarray:
    """Scores of the written file through the public API (integrity check, spec, tokenizer): the gate."""
    from rewardrt.runtime.api import RewardModel

    model = RewardModel(path, threads=threads)
    fn = model.raw_scores if output == "raw_score" else model.batch_score
    return np.asarray(fn(pairs.responses, pairs.references), dtype=np.float64)


def _trial_scores(model: onnx.ModelProto, spec: ArtifactSpec, encoder, pairs: Pairs,
                  threads: int | None) -> np.ndarray:
    """Raw scores of a candidate graph in memory: the runtime's session factory and scorer on its
    serialized bytes, with no file written, sealed, hashed and re-read (the plan search's trials;
    the gate still scores the written file through ``RewardModel``)."""
    from rewardrt.runtime.scorer import Scorer
    from rewardrt.runtime.session import make_session

    scorer = Scorer(make_session(model.SerializeToString(), threads), encoder, spec, "trial")
    return np.asarray(scorer.run(pairs.references, pairs.responses, 64, "raw_score"), dtype=np.float64)


class Stages:
    """Wall time per export stage (``with stages("name"): ...``), logged as each ends."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str):
        import contextlib

        @contextlib.contextmanager
        def timed():
            t = time.time()
            try:
                yield
            finally:
                self.seconds[name] = round(self.seconds.get(name, 0.0) + time.time() - t, 1)
                log.info("stage %s: %.1f s", name, time.time() - t)
        return timed()


def _reference_raw(reference: TorchReward, pairs: Pairs, batch_size: int = 64) -> np.ndarray:
    """The torch reference's raw scores of ``pairs``, batched by length (far less padding than input
    order when long and short pairs mix; a row's score does not depend on its batch beyond float
    rounding, ~1e-7, well inside any gate), in input order."""
    order = sorted(range(len(pairs)), key=lambda i: len(pairs.references[i]) + len(pairs.responses[i]))
    refs = [pairs.references[i] for i in order]
    resps = [pairs.responses[i] for i in order]
    raw = np.asarray(reference.raw_scores(resps, refs, batch_size), dtype=np.float64)
    out = np.empty(len(pairs), dtype=np.float64)
    out[order] = raw
    return out


def _clamped_fidelity(ref_raw: np.ndarray, raw: np.ndarray) -> Fidelity:
    return fidelity(np.clip(ref_raw, 0, 1), np.clip(raw, 0, 1))


@dataclass
class ActivationStats:
    """Per MatMul: per-channel max |input| and XᵀX of its input, over the real (unpadded) tokens of
    the calibration pairs."""

    absmax: dict[str, np.ndarray]
    hessian: dict[str, np.ndarray]


def _activation_stats(model: onnx.ModelProto, pairs: Pairs, tokenizer_json: str, max_length: int,
                      names: list[str], threads: int | None) -> ActivationStats:
    import onnxruntime as ort

    from rewardrt.runtime.session import default_threads
    from rewardrt.runtime.tokenizer import PairEncoder, load_tokenizer, pad

    probe = onnx.ModelProto.FromString(model.SerializeToString())
    inputs = {n.name: n.input[0] for n in probe.graph.node if n.name in set(names)}
    tensors = list(dict.fromkeys(inputs.values()))
    for tensor in tensors:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or default_threads()
    opts.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    ids, _ = PairEncoder(load_tokenizer(tokenizer_json, "calibration"), max_length)(pairs.references, pairs.responses)
    ids.sort(key=len)  # batches of similar length: little padding (the statistics are order-free)
    absmax: dict[str, np.ndarray] = {}
    hessian: dict[str, np.ndarray] = {}
    for start in range(0, len(ids), 16):
        input_ids, mask = pad(ids[start : start + 16])
        outs = session.run(tensors, {"input_ids": input_ids, "attention_mask": mask})
        for t, o in zip(tensors, outs):
            x = o[mask.astype(bool)].astype(np.float64)
            m = np.abs(x).max(axis=0)
            absmax[t] = m if t not in absmax else np.maximum(absmax[t], m)
            hessian[t] = x.T @ x + hessian.get(t, 0.0)
    return ActivationStats({n: absmax[t] for n, t in inputs.items()}, {n: hessian[t] for n, t in inputs.items()})


def _quantized(fp32: onnx.ModelProto, plan: dict[str, str], cfg: ExportConfig,
               stats: ActivationStats, cache: dict) -> onnx.ModelProto:
    model = quantize.apply_plan(fp32, plan, cfg.block_size, stats.absmax, cfg.smooth_alpha,
                                outliers=cfg.outlier_channels,
                                hessians=stats.hessian if cfg.gptq else None, cache=cache,
                                chain=cfg.activation_chain, activation_bits=cfg.activation_bits,
                                one_sided=cfg.one_sided_gelu)
    quantize.quantize_embedding_tables(model)
    return model


def search_plan(fp32: onnx.ModelProto, cal: Pairs, cal_ref_raw: np.ndarray, cfg: ExportConfig,
                spec: ArtifactSpec, tokenizer_json: str) -> tuple[dict[str, str], dict, ActivationStats, dict]:
    """The fastest per-MatMul plan whose calibration error stays inside the scaled budget.

    Every MatMul starts on the int8-weight scheme ``cfg.weight_only`` when that fits (a quarter of
    the weight bytes; ``dequant`` computes in fp32, so it is fp32 speed on every CPU), else on
    ``fp32``. Each MatMul's sensitivity is measured alone (as ``token``); in that order, the least
    sensitive ones take the first of ``cfg.integer_schemes`` (default ``token``: one integer GEMM,
    0.36-0.67x the fp32 MatMul's time on VNNI CPUs, 0.96-1.19x on AVX2-only ones) for as long as the
    whole plan stays inside the search target (binary search over the order), then the next scheme
    the same way (``token2``: two integer GEMMs, ~1.9-2.3x fp32 time on AVX2, so not tried by
    default), and from an fp32 start the least sensitive of what is left take ``cfg.weight_only``.
    With ``weight_only="auto"`` and 8-bit codes, what is left on dequant then moves to block, least
    sensitive first, as many as keep the plan inside the target (binary search; the rest stays
    dequant)."""
    sites = [s.name for s in quantize.quantizable_matmuls(fp32)]
    target = cfg.budget.scaled(cfg.search_margin, cfg.agreement_margin)
    stats = _activation_stats(fp32, cal, tokenizer_json, spec.max_length, sites, cfg.threads)
    cache: dict = {}

    def over_target(scores: np.ndarray) -> list[str]:
        return target.failures(_clamped_fidelity(cal_ref_raw, scores))

    from rewardrt.runtime.tokenizer import PairEncoder, load_tokenizer

    encoder = PairEncoder(load_tokenizer(tokenizer_json, "calibration"), spec.max_length)

    def trial(plan: dict[str, str], tag: str, pairs: Pairs = cal) -> np.ndarray:
        log.debug("trial %s", tag)
        return _trial_scores(_quantized(fp32, plan, cfg, stats, cache), spec, encoder, pairs, cfg.threads)

    start = time.time()
    if cfg.start_plan is not None:
        if set(cfg.start_plan) == set(sites) and not over_target(trial(cfg.start_plan, "start")):
            log.info("the start plan fits the search target: no search")
            return dict(cfg.start_plan), {"search_target": asdict(target), "start_scheme": "start plan",
                                          "search": "start plan fits", "search_seconds":
                                          round(time.time() - start, 1)}, stats, cache
        log.info("the start plan %s; searching", "is over the search target" if set(cfg.start_plan) == set(sites)
                 else "names other MatMuls than this graph's")
    # int8 weights everywhere if that fits (small file); otherwise fp32 where it does not
    weight_only = cfg.search_weight_only
    plan = {s: weight_only for s in sites}
    all_fit = not over_target(trial(plan, f"{weight_only}-all"))
    if not all_fit:
        plan = {s: "fp32" for s in sites}
    start_scheme = weight_only if all_fit else "fp32"
    steps = cfg.integer_schemes + (() if all_fit else (weight_only,))
    if not steps:
        return plan, {"search_target": asdict(target), "start_scheme": start_scheme,
                      "search_seconds": round(time.time() - start, 1)}, stats, cache
    # ranking the MatMuls needs fewer pairs than the target: an evenly spaced subset (long pairs too)
    pick = np.unique(np.linspace(0, len(cal) - 1, min(len(cal), cfg.sensitivity_size)).astype(int))
    subset = Pairs([cal.references[i] for i in pick], [cal.responses[i] for i in pick])
    sensitivity = {s: float(np.mean(np.abs(np.clip(trial({s: "token"}, "one", subset), 0, 1)
                                           - np.clip(cal_ref_raw[pick], 0, 1)))) for s in sites}
    order = sorted(sites, key=lambda s: sensitivity[s])

    def longest_prefix(candidates: list[str], scheme: str) -> int:
        """Largest k such that giving ``scheme`` to candidates[:k] keeps the plan in target."""
        lo, hi, best = 1, len(candidates), 0
        while lo <= hi:
            k = (lo + hi) // 2
            if over_target(trial({**plan, **{c: scheme for c in candidates[:k]}}, f"{scheme}{k}")):
                hi = k - 1
            else:
                best, lo = k, k + 1
        return best

    rest = order
    for scheme in steps:
        if not rest:
            break
        k = longest_prefix(rest, scheme)
        plan.update({c: scheme for c in rest[:k]})
        rest = rest[k:]
    # what the search left on dequant, least sensitive first: as many as keep the plan in target
    # move to block (binary search, like the integer schemes)
    leftovers = [s for s in order if plan[s] == "dequant"]
    tried = cfg.leftovers_to_block and bool(leftovers)
    moved = longest_prefix(leftovers, "block") if tried else 0
    plan.update({s: "block" for s in leftovers[:moved]})
    info = {"sensitivity_mean_abs": {s: round(v, 6) for s, v in sensitivity.items()},
            "leftovers_to_block": f"moved {moved} of {len(leftovers)}" if tried else "not tried",
            "search_target": asdict(target), "start_scheme": start_scheme,
            "search_seconds": round(time.time() - start, 1)}
    return plan, info, stats, cache


def recorded_plan(source: str | Path) -> dict[str, str] | None:
    """The INT8 plan an artifact records; ``"default"``: the embedded default artifact's (None
    when this build carries none). None for an artifact without a plan (fp32)."""
    import json

    if source == "default":
        from rewardrt.models import default_model_path

        path = default_model_path()
        if not path.is_file():
            return None
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"start plan artifact {str(path)!r} does not exist")
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    plan = json.loads(meta.get(KEY_SPEC, "{}")).get("quantization", {}).get("plan")
    return dict(plan) if isinstance(plan, dict) and plan else None


def adapted_plan(plan: dict[str, str] | None, cfg: ExportConfig) -> dict[str, str] | None:
    """``plan`` within what ``cfg`` allows: an integer scheme it does not try, and ``block`` where
    the export would not use it (a portable 7-bit artifact keeps ``dequant``: ``block`` is ~2.5x
    slower on AVX2), become the scheme its search starts from."""
    if plan is None:
        return None
    allowed = set(cfg.integer_schemes) | {"fp32", cfg.search_weight_only}
    if cfg.leftovers_to_block or cfg.weight_only == "block":
        allowed.add("block")
    return {name: scheme if scheme in allowed else cfg.search_weight_only for name, scheme in plan.items()}


def gate_fallbacks(plan: dict[str, str], sensitivity: dict[str, float], retries: int,
                   start_scheme: str, weight_only: str) -> list[dict[str, str]]:
    """Plans to verify, in order, if the held-out gate rejects ``plan``: its integer-GEMM MatMuls
    cut in ``retries`` even steps down to none (4: 3/4, 1/2, 1/4, none of them; the most sensitive
    leave first, by ``sensitivity``; a step that would keep as many as the one before is skipped).
    A MatMul that leaves goes back to the scheme the search started from (``start_scheme``); from
    an fp32 start, to ``weight_only`` if the plan uses it (less sensitive MatMuls than those took
    it), else to fp32.

    The calibration pairs come from the training file, where a trained model's scores sit further
    from 0.5 than on held-out pairs, so a plan can fit its search target and still flip too many
    held-out pairs; the gate then picks among these nested plans (at most ``retries`` more looks at
    the held-out pairs)."""
    integer = sorted((s for s, x in plan.items() if x in quantize.INTEGER_SCHEMES),
                     key=lambda s: (sensitivity.get(s, 0.0), s))
    leave = start_scheme if start_scheme != "fp32" or weight_only not in plan.values() else weight_only
    out: list[dict[str, str]] = []
    last = len(integer)
    for i in range(1, retries + 1):
        keep = len(integer) * (retries - i) // retries
        if keep < last:
            out.append({**plan, **{s: leave for s in integer[keep:]}})
            last = keep
    return out


def export(checkpoint_dir: str | Path, output: str | Path, config: ExportConfig | None = None) -> ExportReport:
    """Export ``checkpoint_dir`` to ``output`` (.onnx). Raises FidelityError, leaving no file, when
    the written graph disagrees with the torch reference beyond the budget."""
    cfg = config or ExportConfig()
    t0 = time.time()
    output = Path(output)
    if output.suffix != ".onnx":
        raise ValueError(f"output must end in .onnx, got {str(output)!r}")
    if output.is_dir():
        raise ValueError(f"output {str(output)!r} is a directory; give a file path ending in .onnx")
    if not output.parent.is_dir():
        raise FileNotFoundError(f"output folder {str(output.parent)!r} does not exist")
    remove_stale_workdirs(output.parent)  # left by exports that were killed (SIGKILL)
    files = locate(checkpoint_dir)
    config = read_config(files)
    max_length = min(cfg.max_length, config["max_position_embeddings"])
    pair_set = load_pair_set(cfg.calibration)
    if cfg.precision == "int8" and cfg.start_plan is None and cfg.start_from is not None:
        cfg = replace(cfg, start_plan=adapted_plan(recorded_plan(cfg.start_from), cfg))
    reference = TorchReward(files.root, max_length=max_length)
    tokenizer_json = files.tokenizer.read_text(encoding="utf-8")
    val = validation_pairs(pair_set, cfg.validation_size)
    stages = Stages()
    log.info("torch reference on %d held-out pairs of %s", len(val), pair_set.source)
    with stages("torch reference"):
        val_ref = _reference_raw(reference, val)

    spec = ArtifactSpec(
        precision=cfg.precision, max_length=max_length,
        hidden_size=config["hidden_size"], num_layers=config["num_hidden_layers"],
        checkpoint_digest=files.digest(), versions=_versions(),
        single_row_safe=True,  # reference.meanmax_pool sums with a MatMul (tests/test_determinism.py)
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    # everything is written in a locked working folder next to the output, see export/workdir.py
    with export_workdir(output.parent) as work:
        int8 = cfg.precision == "int8"
        with stages("trace + fuse"):
            graph.trace(reference.net, work / "traced.onnx")
            # INT8 keeps Q/K/V as separate MatMuls (MultiHeadAttention) so they can be quantized, and
            # the word-embedding Gather visible so its table can be stored as int8.
            counts = graph.fuse(work / "traced.onnx", work / "fused.onnx", config["num_attention_heads"],
                                config["hidden_size"], config["num_hidden_layers"],
                                fuse_embeddings=not int8, separate_qkv=int8)
            model = graph.load(work / "fused.onnx")
            expanded = graph.expand_layer_norms(model) if cfg.expand_layer_norms else 0
        fused = model  # the fp32 graph every plan quantizes (and every search starts from)
        candidates: list[dict[str, str] | None] = [None]
        if int8:
            cal = calibration_pairs(pair_set, cfg.calibration_size)
            with stages("torch reference"):
                cal_ref = _reference_raw(reference, cal)

            def searched(search_cfg: ExportConfig):
                with stages("plan search"):
                    plan, info, stats, cache = search_plan(fused, cal, cal_ref, search_cfg, spec, tokenizer_json)
                ladder = [] if info.get("search") == "start plan fits" else gate_fallbacks(
                    plan, info.get("sensitivity_mean_abs", {}), cfg.gate_retries, info["start_scheme"],
                    cfg.search_weight_only)
                return [plan] + ladder, info, stats, cache

            candidates, quant_info, stats, cache = searched(cfg)
        candidate = work / "candidate.onnx"
        rejected: list[dict] = []
        attempt = -1
        while True:
            attempt += 1
            plan = candidates[attempt]
            if plan is None:
                model, info = fused, {}
                counts_plan = {"fp32": len(quantize.quantizable_matmuls(fused))}
            else:
                model = _quantized(fused, plan, cfg, stats, cache)
                counts_plan = {k: list(plan.values()).count(k) for k in set(plan.values())}
                info = {**quant_info, "plan": plan, "plan_counts": counts_plan,
                        "int8_embedding_tables": quantize.int8_tables(model),
                        "block_size": cfg.block_size, "smooth_alpha": cfg.smooth_alpha,
                        "outlier_channels": cfg.outlier_channels, "gptq": cfg.gptq,
                        "activation_chain": cfg.activation_chain, "activation_bits": cfg.activation_bits,
                        "activation_scales": f"per token (row), {cfg.activation_bits}-bit, computed at run "
                                             "time; symmetric" + (", or one-sided on GELU outputs"
                                                                  if cfg.one_sided_gelu else ""),
                        "one_sided_gelu": cfg.one_sided_gelu,
                        "integer_schemes": list(cfg.integer_schemes), "weight_only": cfg.weight_only,
                        "weight_scales": "per output channel (token, token2) / per block (block, dequant)",
                        "gate_rejected": list(rejected)}
            spec_i = ArtifactSpec(**{**asdict(spec), "quantization": info})
            with stages("gate"):
                _set_metadata(model, spec_i, tokenizer_json)
                _write(model, candidate)
                raw = _runtime_scores(candidate, val, cfg.threads)
            fid = _clamped_fidelity(val_ref, raw)
            raw_diff = float(np.abs(raw - val_ref).max())
            if cfg.precision == "fp32":
                failures = [] if raw_diff <= FP32_MAX_RAW_DIFF else [f"raw max|Δ| {raw_diff:.2e} > {FP32_MAX_RAW_DIFF}"]
            else:
                failures = cfg.budget.failures(fid)
            report = ExportReport(
                output=str(output), precision=cfg.precision, fidelity=fid, max_raw_abs_diff=raw_diff,
                passed=not failures, failures=failures, plan=counts_plan,
                fused_ops={k: v for k, v in counts.items() if k in graph.FUSED_OPS},
                layer_norms_expanded=expanded,
                file_bytes=candidate.stat().st_size, seconds=time.time() - t0, rejected=list(rejected),
                activation_bits=(cfg.activation_bits if integer_gemm_count({"plan_counts": counts_plan})
                                 else None),
                stage_seconds=stages.seconds,
            )
            if not failures:
                break
            if attempt == 0 and quant_info.get("search") == "start plan fits":
                log.warning("held-out gate rejected the start plan %s (%s); searching", counts_plan,
                            "; ".join(failures))
                rejected.append({"plan": counts_plan, "failures": failures})
                more, quant_info, stats, cache = searched(replace(cfg, start_plan=None))
                candidates += more
                continue
            if attempt + 1 < len(candidates):
                log.warning("held-out gate rejected plan %s (%s); retrying with fewer integer-GEMM MatMuls",
                            counts_plan, "; ".join(failures))
                rejected.append({"plan": counts_plan, "failures": failures})
                continue
            tried = "" if not rejected else f" after {len(rejected)} other plan(s) were rejected too"
            raise FidelityError(f"{cfg.precision} export of {str(files.root)!r} is over its fidelity "
                                f"budget ({'; '.join(failures)}){tried}; nothing was written", report)
        spec = spec_i
        fid_meta = {**fid.as_dict(), "max_raw_abs_diff": raw_diff,
                    "validation": f"{len(val)} pairs: the held-out part of {pair_set.source} + {LONG_PAIRS} long pairs",
                    "budget": asdict(cfg.budget) if cfg.precision == "int8" else {"max_raw_abs_diff": FP32_MAX_RAW_DIFF}}
        spec = ArtifactSpec(**{**asdict(spec), "fidelity": fid_meta})
        _set_metadata(model, spec, tokenizer_json)
        _write(model, candidate)
        report.file_bytes = candidate.stat().st_size
        report.seconds = time.time() - t0
        os.replace(candidate, output)
        fsync_dir(output.parent)
    return report
