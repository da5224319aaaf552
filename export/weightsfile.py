"""``--weights-file`` artifacts: the graph's large tensors in one file beside the .onnx.

Why: onnxruntime copies an initializer held inside the .onnx out of the parsed protobuf, so a
process that loads v9 as a single 56 MB file peaks at 142 MB VmHWM (55 MB before the load, on this
project's 2-core EPYC) and still holds 100 MB of anonymous memory after it. Initializers kept as
ONNX external data, at offsets aligned to memory pages, are mapped from the weights file instead:
the same graph peaks at 98 MB with 60 MB anonymous, the word-embedding rows a pair never reads are
not paged in (with prepacking off, scoring one pair paged in 33 MB of the 56 MB file), and scoring
processes on one host (server workers, Ray actors) share the mapped pages.

The weights file is named ``<output name>.<first 12 hex of its sha256>.data``: a new export writes
it under its own name before the .onnx that refers to it replaces the old one, so at every moment
the .onnx at the output path refers to a weights file that is there and whole (the export's one
atomic step stays the rename of the .onnx). The sealed .onnx records the file's name, size and
sha256 (``rewardrt.runtime.integrity.KEY_WEIGHTS``), which the runtime checks before loading.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto, numpy_helper

from rewardrt.runtime.integrity import weights_file, weights_record
from rewardrt.runtime.spec import ArtifactError

ALIGN = 4096        # offsets on page boundaries: onnxruntime maps such tensors instead of reading them
MIN_BYTES = 1024    # smaller tensors stay inside the .onnx
_DATA_FIELDS = ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data")


def weights_name(output_name: str, sha256: str) -> str:
    return f"{output_name}.{sha256[:12]}.data"


@dataclass(frozen=True)
class WeightsFile:
    path: Path
    record: str  # its ``rewardrt.weights`` metadata value (name, size, sha256)


def externalize(model: onnx.ModelProto, folder: Path, output_name: str) -> tuple[onnx.ModelProto, WeightsFile]:
    """A copy of ``model`` whose initializers of at least ``MIN_BYTES`` live in a weights file written
    (and fsynced) in ``folder`` as ``weights_name(output_name, its sha256)``, hashed as it is written;
    returns (copy, file). The copy can be sealed and written any number of times (the gate's
    candidate, then the same graph with its fidelity figures) against the one weights file."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    tmp = folder / f"{output_name}.weights.tmp"
    h = hashlib.sha256()
    moved: list[tuple[TensorProto, int, int]] = []
    offset = 0
    with open(tmp, "wb") as f:
        for t in out.graph.initializer:
            if t.data_location == TensorProto.EXTERNAL:
                raise ValueError(f"initializer {t.name!r} already refers to external data")
            if t.data_type == TensorProto.STRING:
                continue
            raw = t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()
            if len(raw) < MIN_BYTES:
                continue
            pad = b"\0" * ((-offset) % ALIGN)
            f.write(pad)
            f.write(raw)
            h.update(pad)
            h.update(raw)
            offset += len(pad)
            moved.append((t, offset, len(raw)))
            offset += len(raw)
        f.flush()
        os.fsync(f.fileno())
    sha256 = h.hexdigest()
    data = folder / weights_name(output_name, sha256)
    os.replace(tmp, data)
    for t, start, length in moved:
        for name in _DATA_FIELDS:
            t.ClearField(name)
        del t.external_data[:]
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", data.name), ("offset", str(start)), ("length", str(length))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
    return out, WeightsFile(data, weights_record(data.name, offset, sha256))


def previous_weights(output: Path) -> Path | None:
    """The weights file of the artifact now at ``output`` (to remove once a new export replaced
    it), or None: no file there, a single-file artifact, or not a readable rewardrt artifact."""
    if not output.is_file():
        return None
    try:
        return weights_file(output)
    except (ArtifactError, OSError, ValueError):
        return None
