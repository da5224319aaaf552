"""Loading a reward checkpoint in the neuraltxt-reward-tiny layout.

A checkpoint folder holds a BERT-like encoder (``config.json`` + ``model.safetensors``), its tokenizer
(``tokenizer.json`` and friends) and the regression head (``head_weights.pt``, or ``head.safetensors``)
with keys ``1.weight`` ``[1, 2*hidden]`` and ``1.bias`` ``[1]``. Nothing in the folder is ever executed:
no ``trust_remote_code``, and the head is unpickled with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from rewardrt.export.errors import CheckpointError

ENCODER_FILES = ("config.json", "model.safetensors")
TOKENIZER_FILES = ("tokenizer.json",)
HEAD_FILES = ("head_weights.pt", "head.safetensors")
# Architectures whose forward(input_ids, attention_mask, token_type_ids) matches BERT's.
BERT_LIKE = ("bert",)


@dataclass(frozen=True)
class CheckpointFiles:
    """Where a checkpoint's parts live, after checking they all exist."""

    root: Path
    config: Path
    weights: Path
    tokenizer: Path
    head: Path

    def digest(self) -> str:
        """sha256 over what defines the scores: the bytes of config, weights and tokenizer, and the
        head's tensors (names, dtypes, shapes, values), not its pickle, whose bytes change with
        every save."""
        h = hashlib.sha256()
        for path in (self.config, self.weights, self.tokenizer):
            h.update(path.name.encode())
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        h.update(b"head")
        for name, tensor in sorted(_read_head(self.head).items()):
            t = tensor.detach().contiguous().cpu()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()


def locate(checkpoint_dir: str | Path, require_head: bool = True) -> CheckpointFiles:
    """Check a checkpoint folder and name every missing file at once.

    ``require_head=False`` accepts a bare encoder folder (e.g. the packaged base model); its
    ``head`` is then the would-be path of head_weights.pt."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint_dir {str(root)!r} is not a directory")
    missing = [name for name in ENCODER_FILES + TOKENIZER_FILES if not (root / name).is_file()]
    heads = [root / name for name in HEAD_FILES if (root / name).is_file()]
    if not heads and require_head:
        missing.append(" or ".join(HEAD_FILES))
    if missing:
        raise CheckpointError(
            f"checkpoint {str(root)!r} is missing {', '.join(missing)}; expected the "
            "neuraltxt-reward-tiny layout (config.json, model.safetensors, tokenizer.json, "
            "head_weights.pt)"
        )
    return CheckpointFiles(
        root=root,
        config=root / "config.json",
        weights=root / "model.safetensors",
        tokenizer=root / "tokenizer.json",
        head=heads[0] if heads else root / HEAD_FILES[0],
    )


def read_config(files: CheckpointFiles) -> dict:
    try:
        config = json.loads(files.config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {str(files.config)!r}: {exc}") from exc
    model_type = config.get("model_type")
    if model_type not in BERT_LIKE:
        raise CheckpointError(
            f"{str(files.config)!r} has model_type {model_type!r}; rewardrt exports BERT-like "
            f"encoders only ({', '.join(BERT_LIKE)})"
        )
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings"):
        if not isinstance(config.get(key), int):
            raise CheckpointError(f"{str(files.config)!r} lacks integer {key!r}")
    return config


def _read_head(path: Path) -> dict:
    """The head file's content, read without executing anything."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refusals come as several exception types
        raise CheckpointError(
            f"cannot read head weights {str(path)!r} as plain tensors ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); only tensor state dicts are accepted"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"head weights {str(path)!r} are not a dict of tensors")
    return state


def load_head_state(files: CheckpointFiles, hidden_size: int) -> dict:
    """Read the head's tensors without executing anything and check their shapes."""
    import torch

    path = files.head
    state = _read_head(path)
    if not isinstance(state, dict) or set(state) != {"1.weight", "1.bias"}:
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"head weights {str(path)!r} hold {keys}; expected the keys '1.weight' and '1.bias' of "
            "Sequential(Dropout, Linear(2*hidden, 1))"
        )
    weight, bias = state["1.weight"], state["1.bias"]
    if not all(isinstance(t, torch.Tensor) for t in (weight, bias)):
        raise CheckpointError(f"head weights {str(path)!r} contain non-tensor values")
    expected = (1, 2 * hidden_size)
    if tuple(weight.shape) != expected or tuple(bias.shape) != (1,):
        raise CheckpointError(
            f"head in {str(path)!r} has weight {tuple(weight.shape)} and bias {tuple(bias.shape)}; "
            f"expected {expected} and (1,) for mean+max pooling over hidden size {hidden_size}"
        )
    return {"1.weight": weight.float(), "1.bias": bias.float()}
