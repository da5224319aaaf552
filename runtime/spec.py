"""What an artifact says about itself. The spec travels inside the .onnx as metadata, next to the
tokenizer JSON, so a single file is a deployable model.

Metadata keys (all strings):
    rewardrt.format_version   integer, bumped on incompatible changes
    rewardrt.spec             JSON of :class:`ArtifactSpec`
    rewardrt.tokenizer        the tokenizer JSON (``tokenizers.Tokenizer.to_str()``)
    rewardrt.sha256           format 2: the file's content digest (see ``rewardrt.runtime.integrity``)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

FORMAT_VERSION = 2  # 2: sealed with a content digest; 1 (unsealed) still loads
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
    quantization: dict[str, Any] = field(default_factory=dict)
    fidelity: dict[str, Any] = field(default_factory=dict)
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

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ArtifactSpec":
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
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path!r} was written by a newer rewardrt (artifact format {version}; this rewardrt "
            f"reads formats up to {FORMAT_VERSION}); upgrade rewardrt"
        )
    try:
        spec = ArtifactSpec.from_json(meta[KEY_SPEC])
    except (ValueError, TypeError) as exc:
        raise ArtifactError(f"{path!r} has an unreadable rewardrt.spec: {exc}") from exc
    return spec, meta[KEY_TOKENIZER]
