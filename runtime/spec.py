"""What an artifact says about itself. The spec travels inside the .onnx as metadata, next to the
tokenizer JSON, so a single file is a deployable model.

Metadata keys (all strings):
    rewardrt.format_version   integer, bumped on incompatible changes
    rewardrt.spec             JSON of :class:`ArtifactSpec`
    rewardrt.tokenizer        the tokenizer JSON (``tokenizers.Tokenizer.to_str()``)
    rewardrt.sha256           format 2: the file's content digest (see ``rewardrt.runtime.integrity``)

The spec's ``quantization`` entry (an INT8 artifact's plan and how it was found) is read into a
:class:`QuantizationRecord`, its ``fidelity`` entry (what the export's gate measured) into a
:class:`FidelityRecord`, each checked on the way: a bad entry is an :class:`ArtifactError` naming its
key. The JSON keys are the wire format; the dataclasses are how code sees them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from types import MappingProxyType
from typing import Any

from rewardrt.runtime.cpu import INTEGER_GEMM_SCHEMES

FORMAT_VERSION = 2  # 2: sealed with a content digest (format 1, unsealed, is no longer read)
KEY_FORMAT = "rewardrt.format_version"
KEY_SPEC = "rewardrt.spec"
KEY_TOKENIZER = "rewardrt.tokenizer"

TEMPLATE = "{reference} [SEP] {response}"
POOLING = "mean+max"
PRECISIONS = ("fp32", "int8")
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAMES = ("score", "raw_score")


class ArtifactError(ValueError):
    """A model file is missing its rewardrt metadata, corrupt, or from an unsupported version."""


# The CPU families an INT8 artifact is exported for (``rewardrt export --target``), with the widths
# of integer-GEMM activation codes whose sums are exact there (see rewardrt.runtime.cpu): VNNI sums
# uint8 x int8 products in int32, so 8-bit codes are exact; AVX2's VPMADDUBSW adds pairs of them in
# saturating int16, where only 7-bit codes are (127 x 127 x 2 = 32,258 fits, 255 x 127 x 2 does not).
TARGET_BITS: Mapping[str, tuple[int, ...]] = MappingProxyType({"avx512-vnni": (7, 8), "avx2": (7,)})


def implied_target(activation_bits: int) -> str:
    """The target an artifact without a ``target`` entry was made for: 8-bit codes need VNNI."""
    return "avx512-vnni" if activation_bits == 8 else "avx2"


def _wire(value: Any) -> Any:
    """Tuples (the record's immutable sequences) as JSON lists, recursively."""
    if isinstance(value, (tuple, list)):
        return [_wire(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _wire(v) for k, v in value.items()}
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _str_map(check) -> Any:
    return lambda v: isinstance(v, Mapping) and all(isinstance(k, str) and check(x) for k, x in v.items())


def _check_entries(record: Any, key: str, checks: Mapping[str, tuple[str, Any]],
                   skip: Mapping[str, Any] | None = None) -> None:
    """Each field of the frozen ``record`` against ``checks`` (an ArtifactError naming ``key.field``
    otherwise; a field equal to its ``skip`` value is left alone); JSON lists become tuples."""
    for f in fields(record):
        value = getattr(record, f.name)
        if skip and f.name in skip and value == skip[f.name]:
            continue
        what, ok = checks[f.name]
        if not ok(value):
            raise ArtifactError(f"{key}.{f.name} must be {what}, got {value!r}")
        if isinstance(value, list):
            object.__setattr__(record, f.name, tuple(value))


# what each entry must hold, in words (for the error) and as a check
_CHECKS: dict[str, tuple[str, Any]] = {
    "plan": ("a non-empty object of MatMul name -> scheme name",
             lambda v: _str_map(lambda x: isinstance(x, str))(v) and bool(v)),
    "plan_counts": ("an object of scheme name -> count", _str_map(_is_int)),
    "activation_bits": ("7 or 8", lambda v: _is_int(v) and v in (7, 8)),
    "target": (f"one of {tuple(TARGET_BITS)}", lambda v: isinstance(v, str) and v in TARGET_BITS),
    "block_size": ("a positive int", lambda v: _is_int(v) and v > 0),
    "smooth_alpha": ("a number or null", lambda v: v is None or _is_number(v)),
    "outlier_channels": ("an int >= 0", lambda v: _is_int(v) and v >= 0),
    "gptq": ("a bool", lambda v: isinstance(v, bool)),
    "activation_chain": ("a string", lambda v: isinstance(v, str)),
    "activation_scales": ("a string", lambda v: isinstance(v, str)),
    "one_sided_gelu": ("a bool", lambda v: isinstance(v, bool)),
    "integer_schemes": ("a list of scheme names", lambda v: isinstance(v, (list, tuple))
                        and all(isinstance(x, str) for x in v)),
    "weight_only": ("a string", lambda v: isinstance(v, str)),
    "weight_scales": ("a string", lambda v: isinstance(v, str)),
    "int8_embedding_tables": ("a list of names", lambda v: isinstance(v, (list, tuple))
                              and all(isinstance(x, str) for x in v)),
    "float16_embedding_tables": ("a list of names or null", lambda v: v is None or (
        isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v))),
    "gate_rejected": ("a list of {plan, failures} objects", lambda v: isinstance(v, (list, tuple))
                      and all(isinstance(x, Mapping) and {"plan", "failures"} <= set(x) for x in v)),
    "search_target": ("an object of budget name -> number", _str_map(_is_number)),
    "start_scheme": ("a string", lambda v: isinstance(v, str)),
    "search": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "search_seconds": ("a number or null", lambda v: v is None or _is_number(v)),
    "sensitivity_mean_abs": ("an object of MatMul name -> number or null",
                             lambda v: v is None or _str_map(_is_number)(v)),
    "leftovers_to_block": ("a string or null", lambda v: v is None or isinstance(v, str)),
}


@dataclass(frozen=True)
class QuantizationRecord:
    """What an INT8 artifact records about its quantization: the per-MatMul plan the gate passed,
    the options it was built with and how the plan was found. Built by the exporter, written as the
    spec's ``quantization`` JSON (these field names are its keys), read back by :meth:`from_wire`.

    The runtime acts on ``plan_counts`` and ``activation_bits`` (rewardrt.runtime.cpu warns when
    8-bit integer-GEMM codes meet a CPU without VNNI); the rest is there for a reader."""

    plan: Mapping[str, str]
    plan_counts: Mapping[str, int]
    activation_bits: int = 8               # artifacts from before this entry used 8-bit codes
    target: str = ""                       # "": the target the activation bits imply
    block_size: int = 32
    smooth_alpha: float | None = None
    outlier_channels: int = 0
    gptq: bool = False
    activation_chain: str = "qlinear"
    activation_scales: str = ""
    one_sided_gelu: bool = False
    integer_schemes: tuple[str, ...] = ("token",)
    weight_only: str = "dequant"
    weight_scales: str = ""
    int8_embedding_tables: tuple[str, ...] = ()
    float16_embedding_tables: tuple[str, ...] | None = None  # None: an artifact from before the entry
    # plans the held-out gate rejected before this one: ({"plan": counts, "failures": [...]}, ...)
    gate_rejected: tuple[Mapping[str, Any], ...] = ()
    # how the plan was found
    search_target: Mapping[str, float] = field(default_factory=dict)
    start_scheme: str = ""
    search: str | None = None                      # "start plan fits": the start plan was kept
    search_seconds: float | None = None
    sensitivity_mean_abs: Mapping[str, float] | None = None   # per MatMul, when it searched
    leftovers_to_block: str | None = None

    def __post_init__(self) -> None:
        _check_entries(self, "quantization", _CHECKS, skip={"target": ""})
        if not self.target:
            object.__setattr__(self, "target", implied_target(self.activation_bits))
        if self.activation_bits not in TARGET_BITS[self.target]:
            raise ArtifactError(f"quantization.activation_bits {self.activation_bits} does not fit "
                                f"quantization.target {self.target!r} (allowed: {TARGET_BITS[self.target]})")

    @property
    def integer_gemms(self) -> int:
        """MatMuls of the integer-GEMM schemes (``token``, ``token2``): uint8 x int8 GEMMs at run time."""
        return sum(int(self.plan_counts.get(s, 0)) for s in INTEGER_GEMM_SCHEMES)

    def to_wire(self) -> dict[str, Any]:
        """The JSON object written into the spec (entries left None are not written)."""
        return {f.name: _wire(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> QuantizationRecord:
        """The record of a spec's ``quantization`` object; unknown (newer) entries are ignored,
        ``plan_counts`` is counted from ``plan`` when absent. Raises ArtifactError naming a bad key."""
        if not isinstance(data, Mapping):
            raise ArtifactError(f"quantization must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "plan" not in values:
            raise ArtifactError("quantization.plan is missing")
        plan = values["plan"]
        if "plan_counts" not in values:  # (a plan that is no object fails its own check first)
            schemes = list(plan.values()) if isinstance(plan, Mapping) else []
            values["plan_counts"] = {s: schemes.count(s) for s in dict.fromkeys(schemes)}
        return cls(**values)


_FIDELITY_CHECKS: dict[str, tuple[str, Any]] = {
    "n": ("an int >= 1", lambda v: _is_int(v) and v >= 1),
    "mean_abs_diff": ("a number >= 0", lambda v: _is_number(v) and v >= 0),
    "max_abs_diff": ("a number >= 0", lambda v: _is_number(v) and v >= 0),
    "spearman": ("a number or null", lambda v: v is None or _is_number(v)),
    "agreement_at_half": ("a number in [0, 1]", lambda v: _is_number(v) and 0 <= v <= 1),
    "max_raw_abs_diff": ("a number >= 0 or null", lambda v: v is None or (_is_number(v) and v >= 0)),
    "validation": ("a string", lambda v: isinstance(v, str)),
    "budget": ("an object of budget name -> number", _str_map(_is_number)),
}


@dataclass(frozen=True)
class FidelityRecord:
    """What the export's held-out gate measured for an artifact against the torch reference (clamped
    scores; ``max_raw_abs_diff`` on the head's raw output) and the budget it was held to. Written as
    the spec's ``fidelity`` JSON (these field names are its keys), read back by :meth:`from_wire`."""

    n: int
    mean_abs_diff: float
    max_abs_diff: float
    spearman: float | None
    agreement_at_half: float
    max_raw_abs_diff: float | None = None
    validation: str = ""
    budget: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_entries(self, "fidelity", _FIDELITY_CHECKS)

    def to_wire(self) -> dict[str, Any]:
        return {f.name: _wire(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> FidelityRecord:
        """The record of a spec's ``fidelity`` object; unknown (newer) entries are ignored. Raises
        ArtifactError naming a missing or bad key."""
        if not isinstance(data, Mapping):
            raise ArtifactError(f"fidelity must be a JSON object, got {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        required = [name for name, f in known.items() if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise ArtifactError(f"fidelity.{missing[0]} is missing")
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class ArtifactSpec:
    """Facts about one exported graph. Written by the exporter, read by the runtime."""

    precision: str
    max_length: int
    template: str = TEMPLATE
    pooling: str = POOLING
    clamp: tuple[float, float] = (0.0, 1.0)
    hidden_size: int = 0
    num_layers: int = 0
    checkpoint_digest: str = ""
    # True when a batch of one row runs the same kernels as larger batches (the pooling's masked
    # sum is a MatMul); older graphs reduce with ReduceSum, so the scorer never runs them at B = 1
    single_row_safe: bool = False
    quantization: QuantizationRecord | None = None     # INT8 artifacts; JSON: {} for fp32 ones
    fidelity: FidelityRecord | None = None             # what the export's gate measured; JSON: {} if none
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ArtifactError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not isinstance(self.max_length, int) or self.max_length < 3:
            raise ArtifactError(f"max_length must be an int >= 3, got {self.max_length!r}")
        if self.template != TEMPLATE:
            raise ArtifactError(f"template {self.template!r} is not supported (only {TEMPLATE!r})")
        if self.pooling != POOLING:
            raise ArtifactError(f"pooling {self.pooling!r} is not supported (only {POOLING!r})")
        if isinstance(self.quantization, Mapping):  # the wire form, as from_json reads it
            record = QuantizationRecord.from_wire(self.quantization) if self.quantization else None
            object.__setattr__(self, "quantization", record)
        if self.quantization is not None and not isinstance(self.quantization, QuantizationRecord):
            raise ArtifactError(f"quantization must be a QuantizationRecord or None, "
                                f"got {type(self.quantization).__name__}")
        if isinstance(self.fidelity, Mapping):  # the wire form
            object.__setattr__(self, "fidelity", FidelityRecord.from_wire(self.fidelity) if self.fidelity else None)
        if self.fidelity is not None and not isinstance(self.fidelity, FidelityRecord):
            raise ArtifactError(f"fidelity must be a FidelityRecord or None, got {type(self.fidelity).__name__}")

    def to_json(self) -> str:
        data = asdict(self)
        data["quantization"] = self.quantization.to_wire() if self.quantization is not None else {}
        data["fidelity"] = self.fidelity.to_wire() if self.fidelity is not None else {}
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ArtifactSpec:
        data = json.loads(text)
        known = set(cls.__dataclass_fields__)
        data = {k: v for k, v in data.items() if k in known}  # newer minor fields are ignored
        if "clamp" in data:
            data["clamp"] = tuple(data["clamp"])
        return cls(**data)


def spec_from_metadata(meta: dict[str, str], path: str) -> tuple[ArtifactSpec, str]:
    """(spec, tokenizer JSON) from an .onnx's custom metadata; errors name the file."""
    if KEY_SPEC not in meta or KEY_TOKENIZER not in meta or KEY_FORMAT not in meta:
        raise ArtifactError(
            f"{path!r} is an ONNX graph without rewardrt metadata; export it with "
            "`rewardrt export CHECKPOINT_DIR -o OUT.onnx`"
        )
    try:
        version = int(meta[KEY_FORMAT])
    except ValueError as exc:
        raise ArtifactError(f"{path!r} has an unreadable format version {meta[KEY_FORMAT]!r}") from exc
    if version != FORMAT_VERSION:
        raise ArtifactError(format_message(path, version))
    try:
        spec = ArtifactSpec.from_json(meta[KEY_SPEC])
    except (ValueError, TypeError) as exc:
        raise ArtifactError(f"{path!r} has an unreadable rewardrt.spec: {exc}") from exc
    return spec, meta[KEY_TOKENIZER]


def format_message(name: str, version: int) -> str:
    """Why an artifact of format ``version`` is not read here, and what to do."""
    if version > FORMAT_VERSION:
        return (f"{name!r} was written by a newer rewardrt (artifact format {version}; this rewardrt "
                f"reads format {FORMAT_VERSION}); upgrade rewardrt")
    return (f"{name!r} is artifact format {version} (unsealed, from before rewardrt 0.1.0's release); "
            f"this rewardrt reads format {FORMAT_VERSION}: re-export it with `rewardrt export`")
