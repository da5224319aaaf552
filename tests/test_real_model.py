"""The integration path on the real packaged all-MiniLM-L6-v2 with a head built for the test."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from rewardrt import RewardModel
from rewardrt.export.exporter import ExportConfig, export
from rewardrt.export.reference import TorchReward

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm_checkpoint(tmp_path_factory):
    from rewardrt.models.base import BASE_FILES, base_model_dir

    out = tmp_path_factory.mktemp("minilm") / "ckpt"
    out.mkdir()
    for name in BASE_FILES:
        shutil.copy2(base_model_dir() / name, out / name)
    g = torch.Generator().manual_seed(1234)
    torch.save({"1.weight": torch.randn(1, 768, generator=g) * 0.03, "1.bias": torch.tensor([0.45])},
               out / "head_weights.pt")
    return out


def test_int8_export_of_minilm_meets_the_budget(minilm_checkpoint, tmp_path, data_dir, dev_pairs):
    out = tmp_path / "minilm.int8.onnx"
    report = export(minilm_checkpoint, out, ExportConfig(
        precision="int8", data_dir=str(data_dir), validation_size=400, calibration_size=96))
    assert report.passed, report.describe()
    assert report.plan.get("token", 0) + report.plan.get("block", 0) > 0
    refs, resps = dev_pairs
    ours = np.array(RewardModel(out).batch_score(resps, refs))
    theirs = np.array(TorchReward(minilm_checkpoint).batch_score(resps, refs))
    diff = np.abs(ours - theirs)
    assert diff.mean() <= 0.01 and diff.max() <= 0.05
    assert out.stat().st_size < 40e6  # int8 weights and embedding rows, not fp32
