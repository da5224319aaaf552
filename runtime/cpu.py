"""What the CPU can do for int8 GEMMs, detected once at model load (no dependency beyond numpy).

Why it matters: the ``token`` scheme runs its MatMuls as uint8 x int8 integer GEMMs in onnxruntime's
MLAS. With VNNI (AVX512_VNNI or AVX_VNNI) the products are summed straight into int32. Without it
(AVX2, or AVX-512 without VNNI) MLAS uses VPMADDUBSW, which adds pairs of u8 x s8 products in int16
and saturates there: with activations spanning the full uint8 range, as ours do, results can be
wrong by a lot for rows with large values, so an artifact verified on a VNNI machine may score
differently on such a CPU. ``block`` (MatMulNBits), ``dequant`` and ``fp32`` MatMuls are not affected.
"""

from __future__ import annotations

import logging
import platform
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rewardrt.runtime.spec import QuantizationRecord

log = logging.getLogger(__name__)

# numpy's names -> ours; numpy has no name for the 256-bit AVX-VNNI, /proc/cpuinfo does
_NUMPY_FLAGS = {"AVX2": "avx2", "AVX512F": "avx512f", "AVX512BW": "avx512bw", "AVX512VNNI": "avx512_vnni"}
_LINUX_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
_warned: set[str] = set()


def _numpy_features() -> dict[str, bool]:
    try:
        from numpy._core._multiarray_umath import (
            __cpu_features__ as features,  # numpy >= 2
        )
    except ImportError:
        try:
            from numpy.core._multiarray_umath import (
                __cpu_features__ as features,  # numpy 1.x
            )
        except ImportError:
            return {}
    return {ours: bool(features.get(theirs, False)) for theirs, ours in _NUMPY_FLAGS.items()}


def _linux_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The first ``flags`` line of /proc/cpuinfo, or None where there is none (not Linux, or ARM)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        return None
    return None


@lru_cache(maxsize=1)
def cpu_features() -> dict:
    """{"machine", "source", flag -> bool, "int8_dot_product": "VNNI" | "AVX2 (no VNNI)" | ...}.

    Flags come from /proc/cpuinfo where it lists them (it alone names AVX_VNNI and AMX), else from
    numpy's own runtime dispatch table."""
    machine = platform.machine().lower()
    x86 = machine in ("x86_64", "amd64", "i386", "i686")
    linux = _linux_flags() if x86 else None
    if linux is not None:
        flags = {f: f in linux for f in _LINUX_FLAGS}
        source = "/proc/cpuinfo"
    else:
        flags = {f: False for f in _LINUX_FLAGS}
        flags.update(_numpy_features())
        source = "numpy" if x86 else "none (not x86)"
    if not x86:
        dot = "not x86 (no VPMADDUBSW saturation)"
    elif flags["avx512_vnni"] or flags["avx_vnni"]:
        dot = "VNNI"
    elif flags["avx2"]:
        dot = "AVX2 (no VNNI)"
    else:
        dot = "none"
    return {"machine": machine, "source": source, **flags, "int8_dot_product": dot}


def integer_gemm_may_saturate(features: dict | None = None) -> bool:
    """True on x86 CPUs without VNNI, where MLAS's u8 x s8 GEMM sums products in saturating int16."""
    f = cpu_features() if features is None else features
    return f["int8_dot_product"] in ("AVX2 (no VNNI)", "none")


INTEGER_GEMM_SCHEMES = ("token", "token2")  # plan schemes that run uint8 x int8 GEMMs (export uses this too)


def saturation_safe(quantization: QuantizationRecord) -> bool:
    """True when the artifact's integer GEMMs take 7-bit activation codes (uint8 <= 127): their pairs
    of products stay within int16 (127 x 127 x 2 = 32,258), so sums are exact on every x86 CPU.
    (A record from before the ``activation_bits`` entry reads as 8-bit codes, which it used.)"""
    return quantization.activation_bits <= 7


def check_integer_gemm(quantization: QuantizationRecord | None, source: str, features: dict | None = None) -> bool:
    """Warn once per artifact when it has integer-GEMM MatMuls with 8-bit activation codes and this
    CPU lacks VNNI (7-bit codes are exact there too).

    ``quantization``: the artifact spec's record of that name (None for fp32). Returns True when it warned."""
    if quantization is None:
        return False
    token = quantization.integer_gemms
    if (token == 0 or saturation_safe(quantization) or not integer_gemm_may_saturate(features)
            or source in _warned):
        return False
    _warned.add(source)
    f = cpu_features() if features is None else features
    log.warning(
        "%s runs %d MatMuls as uint8 x int8 integer GEMMs with 8-bit activation codes (export "
        "target %s), and this CPU (%s) has no VNNI: onnxruntime's kernels here add products in "
        "saturating 16-bit sums, so scores may differ from the verified ones (by a lot for inputs "
        "with large activations). Run on a CPU with AVX512_VNNI or AVX_VNNI; or re-export the "
        "checkpoint for this CPU (`rewardrt export --target avx2`, or --activation-bits 7: 7-bit "
        "codes, exact on every x86 CPU; the default target follows the exporting CPU), or with "
        "--precision fp32.",
        source, token, quantization.target, f["int8_dot_product"])
    return True
