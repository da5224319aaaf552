"""What an export is asked to do: :class:`ExportConfig`, its fidelity :class:`FidelityBudget`, and
the target CPU presets (``ExportConfig.avx512_vnni()``, ``ExportConfig.avx2()``).

A target is the CPU family an INT8 artifact is verified for. It decides how wide the integer-GEMM
activation codes may be, because of how onnxruntime's MLAS multiplies uint8 x int8 there (see
``rewardrt.runtime.cpu``), and whether MatMulNBits (``block``) weights pay off. ``target="auto"``
stays "auto" in the config: the exporter resolves it (:func:`resolve_target`) against the CPU it
runs on, when it runs, so building a config never probes the machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from rewardrt.export import quantize
from rewardrt.export.reference import DEFAULT_MAX_LENGTH
from rewardrt.runtime.metrics import Fidelity
from rewardrt.runtime.spec import PRECISIONS, TARGET_BITS, implied_target

FP32_MAX_RAW_DIFF = 1e-4  # an fp32 export's gate: raw scores within this of the torch reference


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

    def scaled(self, k: float, agreement_k: float | None = None) -> FidelityBudget:
        """A stricter budget for the plan search, so the held-out gate has room to spare
        (``agreement_k``: another fraction for agreement@0.5; None: ``k``)."""
        a = k if agreement_k is None else agreement_k
        return FidelityBudget(self.max_mean_abs * k, self.max_abs * k,
                              1 - (1 - self.min_spearman) * k, 1 - (1 - self.min_agreement) * a)


# The targets, each with its hardware reason (the widths they allow come from rewardrt.runtime.spec):
#   avx512-vnni  VPDPBUSD (AVX512_VNNI, AVX_VNNI) sums uint8 x int8 products straight into int32, so
#                8-bit activation codes (twice as fine as 7-bit: more MatMuls fit the budget) are
#                exact; MatMulNBits (``block``) runs at about fp32 speed with a quarter of the weight
#                memory, so ``weight_only="auto"`` moves what it can to ``block``. Default: 8 bits.
#   avx2         VPMADDUBSW adds pairs of uint8 x int8 products in saturating int16: 255 x 127 x 2
#                overflows, 127 x 127 x 2 = 32,258 does not, so only 7-bit codes give exact sums
#                (they do on every x86 CPU, so this is the portable target); MatMulNBits is ~2.5x
#                slower than fp32 there, so ``auto`` keeps ``dequant`` (fp32 speed). 7 bits only.
TARGETS = tuple(TARGET_BITS)
BLOCK_WEIGHTS_PAY_OFF = frozenset({"avx512-vnni"})


def default_bits(target: str) -> int:
    """The activation-code width a target's export uses unless told otherwise: the widest it allows."""
    return max(TARGET_BITS[target])


def check_target_bits(target: str, bits: int | None, names: tuple[str, str] = ("target", "activation_bits")) -> None:
    """Refuse activation bits the target's CPUs cannot sum exactly; ``names`` say what to call the two
    options in the error (the CLI passes its flags)."""
    if target in TARGET_BITS and bits is not None and bits not in TARGET_BITS[target]:
        raise ValueError(f"{names[1]} {bits} does not agree with {names[0]} {target} (its CPUs sum only "
                         f"{'/'.join(map(str, TARGET_BITS[target]))}-bit activation codes exactly); drop one "
                         f"of {names[1]} and {names[0]}, or pick {names[0]} {implied_target(bits)}")


def host_target(features: dict | None = None) -> str:
    """The target this CPU is: ``avx512-vnni`` when it sums u8 x s8 products exactly at 8 bits (VNNI,
    or not x86: no VPMADDUBSW saturation), else ``avx2``. The export verifies on this CPU, so the
    gate always measures exact arithmetic; an 8-bit artifact then warns when it loads on a CPU
    without VNNI (rewardrt.runtime.cpu)."""
    from rewardrt.runtime.cpu import integer_gemm_may_saturate

    return "avx2" if integer_gemm_may_saturate(features) else "avx512-vnni"


@dataclass(frozen=True)
class ExportConfig:
    """Everything ``export()`` may be told; checked here, so a bad value fails before any work.
    ``ExportConfig.avx2(...)`` / ``ExportConfig.avx512_vnni(...)``: the same with a named target."""

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
    # the word-embedding table: "float16" (within 2^-11 of each entry; the scores move by < 1e-3) or
    # "int8" (rows with one scale each: 11.7 MB less, but its rounding alone moved near-miss short
    # answers by up to 0.04 on the default model, most of the budget, before any MatMul was quantized)
    embedding_table: str = "float16"
    # keep the large tensors in one weights file beside the .onnx (ONNX external data, mapped by
    # onnxruntime): 30-40 MB lower peak memory for a process scoring with the default-size model
    # (v9: the bench's one-pair process 158 -> 119 MB), pages shared between processes; two files
    # to copy together (see export/weightsfile.py)
    weights_file: bool = False
    activation_chain: str = "qlinear"      # how token-scheme activations are quantized (same codes)
    # the CPU family the artifact is verified for (see the presets above): "avx512-vnni", "avx2", or
    # "auto": the exporting CPU's, decided by the exporter when it runs (resolve_target)
    target: str = "auto"
    # integer-GEMM activation codes: 7 bits give exact integer sums on every x86 CPU (AVX2 kernels
    # saturate 8-bit ones), so the verified scores hold everywhere; 8 bits are twice as fine but
    # exact only on VNNI CPUs. None: the target's default; given with target "auto", they imply it
    activation_bits: int | None = None
    # integer-GEMM schemes the plan search tries, in this order, on the least sensitive MatMuls
    integer_schemes: tuple[str, ...] = ("token",)
    # the int8-weight scheme of every other MatMul: "dequant" (fp32 compute on weights expanded at
    # load: fp32 speed on every CPU) or "block" (MatMulNBits: less memory, ~2.5x slower on AVX2).
    # "auto": search from dequant, then, for a VNNI target, move what the search left on dequant to
    # block, as many as keep the plan inside the search target, least sensitive first: there block
    # is 0.75-0.88x the fp32 MatMul's time and holds no fp32 weights in memory
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
        if self.target not in TARGETS + ("auto",):
            raise ValueError(f"target must be one of {TARGETS + ('auto',)}, got {self.target!r}")
        if self.activation_bits is not None and (self.activation_bits not in quantize.ACTIVATION_BITS
                                                 or isinstance(self.activation_bits, bool)):
            raise ValueError(f"activation_bits must be one of {quantize.ACTIVATION_BITS} or None (the "
                             f"target's), got {self.activation_bits!r}")
        check_target_bits(self.target, self.activation_bits)
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
        if self.embedding_table not in quantize.EMBEDDING_TABLES:
            raise ValueError(f"embedding_table must be one of {quantize.EMBEDDING_TABLES}, got {self.embedding_table!r}")
        if self.block_size not in (16, 32, 64, 128, 256):
            raise ValueError(f"block_size must be a power of two in [16, 256], got {self.block_size}")

    @classmethod
    def avx512_vnni(cls, **options: Any) -> ExportConfig:
        """For CPUs with AVX512_VNNI or AVX_VNNI: 8-bit activation codes, ``block`` weights where they
        fit (see the presets above). The artifact warns when it loads on a CPU without VNNI."""
        return cls(target="avx512-vnni", **options)

    @classmethod
    def avx2(cls, **options: Any) -> ExportConfig:
        """For any x86 CPU with AVX2 (the portable choice): 7-bit activation codes, ``dequant`` weights."""
        return cls(target="avx2", **options)

    @property
    def resolved_target(self) -> str | None:
        """The target, or the one explicit activation bits imply; None while it is still "auto"."""
        if self.target != "auto":
            return self.target
        return None if self.activation_bits is None else implied_target(self.activation_bits)

    @property
    def bits(self) -> int | None:
        """The integer-GEMM activation-code width this config exports with (None: still "auto")."""
        if self.activation_bits is not None:
            return self.activation_bits
        return None if self.resolved_target is None else default_bits(self.resolved_target)

    @property
    def search_weight_only(self) -> str:
        """The int8-weight scheme the plan search starts from (``auto`` searches from dequant)."""
        return "dequant" if self.weight_only == "auto" else self.weight_only

    @property
    def leftovers_to_block(self) -> bool:
        """Whether the search tries moving what it left on dequant to block (``auto``, VNNI target)."""
        if self.resolved_target is None:
            raise ValueError("target 'auto' is decided when the export runs; call resolve_target first")
        return self.weight_only == "auto" and self.resolved_target in BLOCK_WEIGHTS_PAY_OFF


def resolve_target(cfg: ExportConfig, features: dict | None = None) -> ExportConfig:
    """``cfg`` with a concrete target and activation bits: "auto" becomes the target explicit bits
    imply, else this CPU's (:func:`host_target`; ``features`` as from rewardrt.runtime.cpu)."""
    target = cfg.resolved_target or host_target(features)
    return replace(cfg, target=target, activation_bits=cfg.activation_bits or default_bits(target))
