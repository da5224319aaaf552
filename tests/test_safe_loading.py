"""Safe loading: nothing from a checkpoint is ever executed. A head_weights.pt holding anything but
tensors is refused (torch.load weights_only=True) and its payload never runs; custom code named by
config.json / tokenizer_config.json (auto_map) is never imported (trust_remote_code=False)."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch

from rewardrt.export.checkpoint import locate
from rewardrt.export.errors import CheckpointError
from rewardrt.export.reference import TorchReward

ROOT = Path(__file__).resolve().parents[1]


class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Exec:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("payload", [_System, _Exec])
@pytest.mark.parametrize("writer", ["torch.save", "raw pickle"])
def test_malicious_head_pickle_is_refused_and_never_runs(tiny_checkpoint, tmp_path, payload, writer):
    ckpt = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, ckpt)
    marker = tmp_path / "pwned"
    state = {"1.weight": payload(marker), "1.bias": torch.zeros(1)}
    if writer == "torch.save":
        torch.save(state, ckpt / "head_weights.pt")
    else:
        (ckpt / "head_weights.pt").write_bytes(pickle.dumps(state))
    with pytest.raises(CheckpointError, match=r"head_weights\.pt.*only tensor state dicts"):
        TorchReward(ckpt)
    with pytest.raises(CheckpointError, match="only tensor state dicts"):
        locate(ckpt).digest()
    assert not marker.exists()


def test_non_tensor_values_are_refused(tiny_checkpoint, tmp_path):
    ckpt = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, ckpt)
    torch.save({"1.weight": [1.0, 2.0], "1.bias": torch.zeros(1)}, ckpt / "head_weights.pt")
    with pytest.raises(CheckpointError, match="not a dict of tensors"):
        TorchReward(ckpt)


def test_remote_code_named_by_the_checkpoint_is_never_imported(tiny_checkpoint, tmp_path):
    ckpt = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, ckpt)
    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').write('pwned')\n"
    for name in ("evil_model.py", "evil_tokenizer.py"):
        (ckpt / name).write_text(code)
    config = json.loads((ckpt / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "evil_model.EvilModel", "AutoConfig": "evil_model.EvilConfig"}
    (ckpt / "config.json").write_text(json.dumps(config))
    tok_config = json.loads((ckpt / "tokenizer_config.json").read_text())
    tok_config["auto_map"] = {"AutoTokenizer": ["evil_tokenizer.EvilTokenizer", None]}
    (ckpt / "tokenizer_config.json").write_text(json.dumps(tok_config))
    try:
        reward = TorchReward(ckpt)
    except CheckpointError:
        pass  # refusing is fine too; executing is not
    else:
        assert 0.0 <= reward.score("Paris.", "Paris is the capital.") <= 1.0
    assert not marker.exists()


def test_no_remote_code_anywhere_in_the_package():
    sources = [p for d in ("runtime", "export", "models", "bench") for p in (ROOT / d).rglob("*.py")]
    text = {p: p.read_text(encoding="utf-8") for p in sources}
    assert not [p for p, t in text.items() if re.search(r"trust_remote_code\s*=\s*True", t)]
    unsafe_load = [p for p, t in text.items()
                   for call in re.findall(r"torch\.load\(.*", t) if "weights_only=True" not in call]
    assert unsafe_load == []
    assert not [p for p, t in text.items() if re.search(r"\bpickle\.loads?\(", t)]
