"""The default model's fp32 weights, stored compactly as a delta over the hash-pinned base.

``pack`` keeps only the encoder tensors that training changed (bit-exact comparison), plus the head,
in one safetensors file; a tensor that float16 holds exactly (the recipe's ``release_precision``) is
stored as float16, the rest as float32, so packing never changes a value. ``materialize`` rebuilds the full checkpoint folder in the
neuraltxt-reward-tiny layout, bit-identical to the trained one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from rewardrt.models.base import BASE_PACKAGE, BASE_SHA256, base_model_dir, write_checkpoint

HEAD_PREFIX = "head."


def _compact(t: torch.Tensor) -> torch.Tensor:
    """``t`` as float16 when that holds it exactly (a float16-released model), else unchanged."""
    if t.dtype == torch.float32:
        half = t.to(torch.float16)
        if torch.equal(half.to(torch.float32), t):
            return half.contiguous()
    return t.contiguous()


def pack(checkpoint_dir: str | Path, out: str | Path) -> dict:
    ckpt = Path(checkpoint_dir)
    base = load_file(str(base_model_dir() / "model.safetensors"))
    trained = load_file(str(ckpt / "model.safetensors"))
    added = set(trained) - set(base)
    if added:
        raise ValueError(f"{ckpt} has tensors the base encoder lacks ({sorted(added)[:3]}); cannot store a delta")
    # buffers the base file carries but newer transformers no longer save (embeddings.position_ids)
    dropped = sorted(set(base) - set(trained))
    changed = {k: _compact(v) for k, v in trained.items() if not torch.equal(v, base[k])}
    head = torch.load(ckpt / "head_weights.pt", map_location="cpu", weights_only=True)
    changed.update({HEAD_PREFIX + k: v.contiguous() for k, v in head.items()})
    meta = {"base_package": BASE_PACKAGE, "base_sha256": json.dumps(BASE_SHA256), "format": "pt",
            "dropped": json.dumps(dropped)}
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    save_file(changed, str(tmp), metadata=meta)
    tmp.replace(out)
    return {"tensors": len(changed), "bytes": out.stat().st_size}


def materialize(delta_path: str | Path, out_dir: str | Path) -> Path:
    delta_path, out_dir = Path(delta_path), Path(out_dir)
    if not delta_path.is_file():
        raise FileNotFoundError(f"delta file {str(delta_path)!r} does not exist")
    with safe_open(str(delta_path), framework="pt") as f:
        meta = f.metadata() or {}
    if json.loads(meta.get("base_sha256", "{}")) != BASE_SHA256:
        raise ValueError(f"{delta_path} was made over a different base than the pinned {BASE_PACKAGE}")
    base_dir = base_model_dir(verify=True)
    delta = load_file(str(delta_path))
    weights = load_file(str(base_dir / "model.safetensors"))
    head = {k[len(HEAD_PREFIX):]: v for k, v in delta.items() if k.startswith(HEAD_PREFIX)}
    for k, v in delta.items():
        if not k.startswith(HEAD_PREFIX):
            weights[k] = v.to(weights[k].dtype)  # float16-stored tensors back to the base's float32
    for k in json.loads(meta.get("dropped", "[]")):
        weights.pop(k, None)
    write_checkpoint(weights, head, out_dir, base_dir)
    return out_dir
