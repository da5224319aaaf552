"""The integration path on the real packaged all-MiniLM-L6-v2 with a head built for the test."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from rewardrt import RewardModel
from rewardrt.export.config import ExportConfig
from rewardrt.export.exporter import export
from rewardrt.export.reference import TorchReward

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm_checkpoint(tmp_path_factory):
    from rewardrt.models.base import BASE_FILES, base_model_dir

    out = tmp_path_factory.mktemp("minilm") / "ckpt"
    out.mkdir()
    for name in BASE_FILES:
        shutil.copy2(base_model_dir() / name, out / name)
    torch.save(_fitted_head(out), out / "head_weights.pt")
    return out


def _fitted_head(encoder_dir, n: int = 600) -> dict:
    """A head like a trained one: ridge regression of a graded similarity (word F1) on the frozen
    mean⊕max features of the bundled calibration pairs, so scores spread over [0, 1] along
    directions the encoder varies in (a random head mostly scores ~constant, clamped values, which
    says little about parity)."""
    import random

    from rewardrt.export.pairs import load_pair_set
    from rewardrt.export.reference import encode_pairs, load_encoder, load_tokenizer, meanmax_pool
    from rewardrt.models.evaluate import word_f1

    rows = [{"a": r["reference"], "b": r["response"]} for r in load_pair_set().calibration]
    random.Random(0).shuffle(rows)
    rows = rows[:n]
    n = len(rows)
    tok, enc = load_tokenizer(encoder_dir), load_encoder(encoder_dir)
    feats = []
    with torch.inference_mode():
        for s in range(0, n, 64):
            batch = encode_pairs(tok, [r["a"] for r in rows[s : s + 64]], [r["b"] for r in rows[s : s + 64]], 512)
            hidden = enc(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            feats.append(meanmax_pool(hidden, batch["attention_mask"]))
    x = torch.cat(feats).double()
    y = torch.tensor([word_f1(r["a"], r["b"]) for r in rows], dtype=torch.float64)
    xm, ym = x.mean(0), y.mean()
    xc = x - xm
    w = torch.linalg.solve(xc.T @ xc + 10.0 * torch.eye(x.shape[1], dtype=torch.float64), xc.T @ (y - ym))
    return {"1.weight": w.float()[None], "1.bias": (ym - xm @ w).float().reshape(1)}


def test_int8_export_of_minilm_meets_the_budget(minilm_checkpoint, tmp_path, dev_pairs):
    out = tmp_path / "minilm.int8.onnx"
    report = export(minilm_checkpoint, out, ExportConfig(
        precision="int8", validation_size=400, calibration_size=256, sensitivity_size=48))
    assert report.passed, report.describe()
    assert sum(report.plan.get(s, 0) for s in ("token", "token2", "block", "dequant")) > 0
    refs, resps = dev_pairs
    ours = np.array(RewardModel(out).batch_score(resps, refs))
    theirs = np.array(TorchReward(minilm_checkpoint).batch_score(resps, refs))
    diff = np.abs(ours - theirs)
    assert diff.mean() <= 0.01 and diff.max() <= 0.05
    # the fp32 graph is 91 MB; int8 embedding rows alone bring it under 60 MB, whatever the plan
    assert out.stat().st_size < 60e6
