"""The content digest of an artifact: written by the exporter (``seal``), checked by the runtime
(``check_artifact``) before onnxruntime sees the file. Needs neither ``onnx`` nor protobuf.

A sealed .onnx carries the metadata entry ``rewardrt.sha256`` whose value is the sha256 (hex) of
the file's own bytes with that value replaced by 64 ``'0'`` characters. Sealing writes the entry
with the placeholder, hashes, and puts the digest in place of the placeholder (same length, so the
protobuf stays valid); checking reverses it. The runtime reads only the top level of the
ModelProto (a few fields; the graph is skipped by its length), so a truncated file, a file that is
not protobuf and a missing or altered digest are all reported before any model is built.

What the digest is for: catching corruption (truncated copies, flipped bits, a metadata edit that
forgot to re-seal). It is not a signature: whoever can write the file can re-seal it.

Format versions: 1 = unsealed (loads with a warning); 2 = sealed (a missing or wrong digest is an
error); newer = refused with "upgrade rewardrt".

A weights file: an artifact exported with ``--weights-file`` keeps its large tensors in one file
beside the graph (ONNX external data, ``<name>.onnx.<digest>.data``), which onnxruntime maps into
memory instead of copying out of the parsed graph: a process scoring with v9 peaks 30-40 MB lower
(the bench's one-pair process 158 -> 119 MB), and processes on one host share the mapped pages. The sealed .onnx then carries ``rewardrt.weights``,
``{"file", "bytes", "sha256"}`` of that file, so the digest chain covers it: the check hashes it
(read in chunks, not mapped, so the check itself adds nothing to the process's peak memory).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rewardrt.runtime.spec import FORMAT_VERSION, KEY_FORMAT, ArtifactError, format_message


KEY_SHA256 = "rewardrt.sha256"
KEY_WEIGHTS = "rewardrt.weights"  # the weights file beside the graph: {"file", "bytes", "sha256"}
PLACEHOLDER = b"0" * 64
_METADATA_FIELD = 14  # ModelProto.metadata_props (repeated StringStringEntryProto)
_HEX = frozenset(b"0123456789abcdef")


def _varint(data: bytes | mmap.mmap | memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("cut short inside a varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _fields(data, start: int, end: int):
    """(field number, wire type, value start, value end, tag start) of each field in data[start:end]."""
    pos = start
    while pos < end:
        tag_start = pos
        tag, pos = _varint(data, pos, end)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            _, stop = _varint(data, pos, end)
            value_start = pos
        elif wire == 1:
            value_start, stop = pos, pos + 8
        elif wire == 2:
            size, value_start = _varint(data, pos, end)
            stop = value_start + size
        elif wire == 5:
            value_start, stop = pos, pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if stop > end:
            raise ValueError("cut short: a field runs past the end of the file")
        yield number, wire, value_start, stop, tag_start
        pos = stop


@dataclass(frozen=True)
class _Entry:
    key: str
    value: bytes
    value_start: int  # absolute offset of the value bytes in the file
    entry_start: int  # absolute offset of the entry's tag


def _metadata(data) -> list[_Entry]:
    """The ModelProto's metadata entries, read without a protobuf library."""
    entries = []
    for number, wire, start, stop, entry_start in _fields(data, 0, len(data)):
        if number != _METADATA_FIELD or wire != 2:
            continue
        key, value, value_start = None, b"", start
        for n, w, s, e, _ in _fields(data, start, stop):
            if w != 2:
                continue
            if n == 1:
                key = bytes(data[s:e]).decode("utf-8")
            elif n == 2:
                value, value_start = bytes(data[s:e]) if e - s <= 4096 else b"", s
        if key is not None:
            entries.append(_Entry(key, value, value_start, entry_start))
    return entries


def _digest(data, value_start: int) -> str:
    view = memoryview(data)
    h = hashlib.sha256()
    h.update(view[:value_start])
    h.update(PLACEHOLDER)
    h.update(view[value_start + len(PLACEHOLDER):])
    view.release()
    return h.hexdigest()


def _entry_bytes(key: str, value: bytes) -> bytes:
    k = key.encode("utf-8")
    body = b"\x0a" + _encode_varint(len(k)) + k + b"\x12" + _encode_varint(len(value)) + value
    return bytes([(_METADATA_FIELD << 3) | 2]) + _encode_varint(len(body)) + body


def seal_bytes(data: bytes) -> bytes:
    """``data`` (a serialized rewardrt ModelProto) with format version 2 and its digest.

    Re-sealing an already sealed file recomputes the digest (the same bytes come back)."""
    try:
        entries = _metadata(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"cannot seal: not a readable ONNX file ({exc})") from None
    versions = [e for e in entries if e.key == KEY_FORMAT]
    if len(versions) != 1:
        raise ArtifactError(f"cannot seal: expected one {KEY_FORMAT} entry, found {len(versions)}")
    out = bytearray(data)
    version = versions[0]
    if version.value != str(FORMAT_VERSION).encode():
        raise ArtifactError(f"cannot seal format {version.value.decode(errors='replace')!r}; "
                            f"this rewardrt writes format {FORMAT_VERSION}")
    sealed = [e for e in entries if e.key == KEY_SHA256]
    if len(sealed) > 1:
        raise ArtifactError(f"cannot seal: {len(sealed)} {KEY_SHA256} entries")
    if sealed:
        start = sealed[0].value_start
        out[start:start + len(PLACEHOLDER)] = PLACEHOLDER
    else:
        start = len(out) + len(_entry_bytes(KEY_SHA256, PLACEHOLDER)) - len(PLACEHOLDER)
        out += _entry_bytes(KEY_SHA256, PLACEHOLDER)  # a repeated field may be appended anywhere
    out[start:start + len(PLACEHOLDER)] = _digest(out, start).encode("ascii")
    return bytes(out)


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``:
    readers see the old file or the new one, never a partial one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def seal(path: str | Path) -> str:
    """Seal an existing artifact in place (atomic rewrite); returns the digest.

    Exports are sealed as they are written; sealing again is a no-op. Format 1 files are refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    try:
        sealed = seal_bytes(path.read_bytes())
    except ArtifactError as exc:
        raise ArtifactError(f"{str(path)!r}: {exc}") from None
    write_atomic(path, sealed)
    entry = [e for e in _metadata(sealed) if e.key == KEY_SHA256][0]
    return entry.value.decode("ascii")


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file, read in chunks (a mapped file would count in the process's RSS)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_record(file: str, size: int, sha256: str) -> str:
    """The ``rewardrt.weights`` metadata value for a weights file (its name, size and digest)."""
    return json.dumps({"file": file, "bytes": size, "sha256": sha256}, sort_keys=True)


def weights_file(path: str | Path) -> Path | None:
    """The weights file a sealed artifact at ``path`` names (beside it), or None for a single-file
    artifact; the names are checked, the file is not (that is :func:`check_artifact`'s job)."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        entries = [e for e in _metadata(data) if e.key == KEY_WEIGHTS]
    return _weights_entry(Path(path), entries[0].value, str(path))[0] if entries else None


def _weights_entry(path: Path, value: bytes, name: str) -> tuple[Path, dict]:
    """(the weights file beside ``path``, the recorded entry) from a ``rewardrt.weights`` value."""
    try:
        record = json.loads(value.decode("utf-8"))
        file = record["file"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ArtifactError(f"{name!r} has a malformed {KEY_WEIGHTS} entry; the file is corrupt") from None
    if not isinstance(file, str) or file in ("", ".", "..") or "/" in file or "\\" in file:
        raise ArtifactError(f"{name!r} names a weights file {file!r} that is not a plain file name beside it")
    return path.parent / file, record


def _check_weights(path: Path, value: bytes, name: str) -> None:
    """The weights file a sealed artifact names is there, whole and unchanged."""
    data, record = _weights_entry(path, value, name)
    if not data.is_file():
        raise ArtifactError(f"{name!r} keeps its weights in {str(data)!r}, which does not exist; copy "
                            f"both files of the artifact ({path.name} and {data.name}) together")
    size = data.stat().st_size
    if size != record.get("bytes"):
        raise ArtifactError(f"weights file {str(data)!r} of {name!r} has {size} bytes, the artifact "
                            f"records {record.get('bytes')}; re-copy or re-export both files")
    actual = file_sha256(data)
    if actual != record.get("sha256"):
        raise ArtifactError(f"weights file {str(data)!r} of {name!r} is corrupt or was modified after "
                            f"export: its sha256 is {actual}, the artifact records {record.get('sha256')}; "
                            "re-copy or re-export both files")


def check_artifact(path: str | Path) -> int:
    """Check ``path`` before any model is built; returns its format version.

    Raises ArtifactError naming the file when it is empty, truncated or not an ONNX protobuf, has
    no rewardrt metadata, is from a newer format, or is sealed and its digest does not match (any
    changed byte), or is format 1 (unsealed, from before 0.1.0's release: re-export it); also when
    the weights file it names (``--weights-file`` exports) is missing, cut short or changed."""
    name = str(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise ArtifactError(f"{name!r} is empty, not an ONNX model")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                version, entries = _check(data, name)
        weights = [e for e in entries if e.key == KEY_WEIGHTS]
        if len(weights) > 1:
            raise ArtifactError(f"{name!r} carries {len(weights)} {KEY_WEIGHTS} entries; re-export it")
        if weights:
            _check_weights(Path(path), weights[0].value, name)
        return version
    except OSError as exc:
        raise ArtifactError(f"cannot read model file {name!r}: {exc.strerror or exc}") from None


def _check(data: mmap.mmap, name: str) -> tuple[int, list[_Entry]]:
    """The format version of a sealed artifact's bytes, and its metadata entries."""
    try:
        entries = _metadata(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{name!r} is truncated or not an ONNX model ({exc})") from None
    versions = [e for e in entries if e.key == KEY_FORMAT]
    if not versions:
        raise ArtifactError(
            f"{name!r} is an ONNX graph without rewardrt metadata; export it with "
            "`rewardrt export CHECKPOINT_DIR -o OUT.onnx`"
        )
    raw = versions[0].value.decode("utf-8", errors="replace")
    if len(versions) > 1 or not raw.isdigit():
        raise ArtifactError(f"{name!r} has an unreadable format version {raw!r}")
    version = int(raw)
    if version != FORMAT_VERSION:
        raise ArtifactError(format_message(name, version))
    sealed = [e for e in entries if e.key == KEY_SHA256]
    if not sealed:
        raise ArtifactError(f"{name!r} says artifact format {version} but carries no "
                            f"{KEY_SHA256} digest; the file was altered, re-export it")
    if len(sealed) > 1:
        raise ArtifactError(f"{name!r} carries {len(sealed)} {KEY_SHA256} entries; re-export it")
    recorded = sealed[0].value
    if len(recorded) != len(PLACEHOLDER) or not set(recorded) <= _HEX:
        raise ArtifactError(f"{name!r} has a malformed {KEY_SHA256} value; the file is corrupt")
    actual = _digest(data, sealed[0].value_start)
    if actual != recorded.decode("ascii"):
        raise ArtifactError(
            f"{name!r} is corrupt or was modified after export: its sha256 is {actual}, its metadata "
            f"records {recorded.decode('ascii')}; re-copy or re-export the file"
        )
    return version, entries
