"""Parity with upstream neural-txt itself: ``neuraltxt.NeuralTxtReward`` (installed ``--no-deps`` by
``make setup``). The export is verified against rewardrt's own copy of the torch scoring path
(rewardrt.export.reference); these tests hold that copy, the fp32 runtime, the embedded default and
``rewardrt crosscheck`` to the upstream class, so a mistake in the copy cannot pass unseen."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from neuraltxt import NeuralTxtReward

from rewardrt import RewardModel
from rewardrt.export.reference import TorchReward

RESPONSES = ["Paris.", "It is Lyon.", "The capital of France is Paris, a city on the Seine.", "No idea."]
REFERENCE = "The capital of France is Paris."


def test_reference_copy_and_fp32_runtime_match_upstream(minilm_shaped_checkpoint, minilm_shaped_fp32, dev_pairs):
    refs, resps = dev_pairs
    upstream = np.array(NeuralTxtReward(model_path=str(minilm_shaped_checkpoint)).batch_score(resps, refs))
    ours = np.array(TorchReward(minilm_shaped_checkpoint).batch_score(resps, refs))
    runtime = np.array(RewardModel(minilm_shaped_fp32, threads=1).batch_score(resps, refs))
    assert upstream.std() > 0.01, "scores too flat to say anything about parity"
    assert np.abs(ours - upstream).max() <= 1e-5
    assert np.abs(runtime - upstream).max() <= 1e-5


def test_score_and_rank_semantics_match_upstream(minilm_shaped_checkpoint, minilm_shaped_fp32):
    upstream = NeuralTxtReward(model_path=str(minilm_shaped_checkpoint))
    model = RewardModel(minilm_shaped_fp32, threads=1)
    assert model.score(RESPONSES[0], REFERENCE) == pytest.approx(upstream.score(RESPONSES[0], REFERENCE), abs=1e-5)
    theirs, ours = upstream.rank(RESPONSES, REFERENCE), model.rank(RESPONSES, REFERENCE)
    assert [r.index for r in ours] == [r.index for r in theirs]
    assert [r.response for r in ours] == [r.response for r in theirs]
    assert [r.score for r in ours] == pytest.approx([r.score for r in theirs], abs=1e-5)
    # one reference per response, and the batch size, as upstream takes them
    refs = [REFERENCE, "Lyon is in France.", REFERENCE, "Berlin."]
    assert model.batch_score(RESPONSES, refs, batch_size=3) == pytest.approx(
        upstream.batch_score(RESPONSES, refs, batch_size=3), abs=1e-5)


def test_bench_reference_loads_attention_as_upstream(minilm_shaped_checkpoint):
    # the bench times its torch reference as the speed baseline: it must run the encoder the way
    # upstream does (transformers' default attention), not the eager form the export traces
    import torch

    from rewardrt.bench.engines import REFERENCE as REFERENCE_ENGINE, EngineSpec, TorchEngine

    upstream = NeuralTxtReward(model_path=str(minilm_shaped_checkpoint))
    threads = torch.get_num_threads()  # the engine sets torch's thread count for this process
    try:
        engine = TorchEngine(EngineSpec(REFERENCE_ENGINE, "torch", str(minilm_shaped_checkpoint)), threads=1)
    finally:
        torch.set_num_threads(threads)
    assert engine.model.net.encoder.config._attn_implementation == upstream.encoder.config._attn_implementation
    assert TorchReward(minilm_shaped_checkpoint).net.encoder.config._attn_implementation == "eager"


def test_crosscheck_refuses_an_artifact_of_another_checkpoint(minilm_shaped_checkpoint, tiny_fp32, capsys):
    from rewardrt.cli import main

    artifact, _ = tiny_fp32
    code = main(["crosscheck", "--checkpoint", str(minilm_shaped_checkpoint), "--artifact", str(artifact)])
    assert code == 2
    err = capsys.readouterr().err
    assert "--artifact" in err and "was not exported from --checkpoint" in err


@pytest.mark.parametrize("args, named", [(["--rl-steps", "0"], "--rl-steps"), (["--fidelity-pairs", "x"], "--fidelity-pairs"),
                                          (["--threads", "0"], "--threads"), (["--rounds", "-1"], "--rounds")])
def test_crosscheck_bad_options_name_the_option(args, named, tmp_path, capsys):
    from rewardrt.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["crosscheck", "--checkpoint", str(tmp_path), "--artifact", str(tmp_path / "m.onnx"), *args])
    assert exc.value.code == 2
    assert f"argument {named}: must be" in capsys.readouterr().err  # the one CLI error style


def test_crosscheck_missing_inputs_name_the_argument(tmp_path, capsys):
    from rewardrt.cli import main

    assert main(["crosscheck", "--checkpoint", str(tmp_path / "none"), "--artifact", "m.onnx"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["crosscheck", "--checkpoint", str(tmp_path), "--artifact", str(tmp_path / "m.onnx")]) == 2
    assert "--artifact" in capsys.readouterr().err
    assert main(["crosscheck", "--checkpoint", str(tmp_path), "--artifact", str(tmp_path / "m.onnx"),
                 "--out", str(tmp_path / "no" / "such" / "summary.json")]) == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.slow
def test_crosscheck_runs_both_sides_end_to_end(minilm_shaped_checkpoint, minilm_shaped_fp32, tmp_path):
    out = tmp_path / "crosscheck.json"
    proc = subprocess.run(
        [sys.executable, "-m", "rewardrt.cli", "crosscheck", "--checkpoint", str(minilm_shaped_checkpoint),
         "--artifact", str(minilm_shaped_fp32), "--threads", "1", "--rounds", "2", "--rl-steps", "1",
         "--fidelity-pairs", "64", "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(out.read_text())
    row = summary["threads"]["1"]
    for engine in ("neural-txt", "rewardrt"):
        assert row[engine]["batch1_p50_ms"] > 0 and row[engine]["rl_pairs_per_s"] > 0
    assert row["batch1_speedup"] > 0 and row["rl_speedup"] > 0
    assert summary["workloads"]["rl"]["pairs"] == 64 and summary["fidelity"]["n"] == 64
    # the fp32 artifact against upstream: float rounding only, and batch neighbours change nothing
    assert summary["fidelity_failures"] == [] and summary["fidelity"]["max_abs_diff"] <= 1e-5
    assert summary["alone_vs_batch_max_abs"] == 0.0
    assert "batch-1 speed-up" in proc.stdout


@pytest.mark.slow
def test_embedded_default_matches_upstream_on_its_checkpoint(tmp_path, dev_pairs):
    from rewardrt.models import model_dir
    from rewardrt.models.delta import materialize
    from rewardrt.runtime.metrics import fidelity
    from rewardrt.export.config import FidelityBudget

    ckpt = materialize(model_dir() / "delta.safetensors", tmp_path / "ckpt")
    refs, resps = dev_pairs
    upstream = NeuralTxtReward(model_path=str(ckpt)).batch_score(resps, refs)
    ours = TorchReward(ckpt).batch_score(resps, refs)
    # float rounding only, which the trained model amplifies on a few near-miss pairs: "5824" against
    # "5825" differs by 5.6e-6 scored alone and 1.14e-5 in its padded batch (v8, 2026-12-06)
    assert np.abs(np.array(ours) - np.array(upstream)).max() <= 5e-5
    fid = fidelity(upstream, RewardModel().batch_score(resps, refs))
    assert FidelityBudget().failures(fid) == [], fid.describe()
