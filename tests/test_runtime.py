"""The public API: neural-txt's methods and semantics, batch independence, clear errors."""

from __future__ import annotations

import random

import numpy as np
import onnx
import pytest

from rewardrt import RankedResponse, RewardModel
from rewardrt.runtime.spec import ArtifactError


@pytest.fixture(scope="module")
def fp32(tiny_fp32):
    return RewardModel(tiny_fp32[0])


@pytest.fixture(scope="module")
def int8(tiny_int8):
    return RewardModel(tiny_int8[0])


def test_same_api_as_neural_txt(fp32, tiny_reference):
    ref = "The capital of France is Paris."
    responses = ["Paris.", "It is Lyon.", "", "Paris is the capital of France, obviously."]
    assert fp32.score(responses[0], ref) == pytest.approx(tiny_reference.score(responses[0], ref), abs=1e-5)
    scores = fp32.batch_score(responses, ref)
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)
    assert scores == pytest.approx(tiny_reference.batch_score(responses, ref), abs=1e-5)
    ranked = fp32.rank(responses, ref)
    assert all(isinstance(r, RankedResponse) for r in ranked)
    assert [r.score for r in ranked] == sorted(scores, reverse=True)
    assert {r.index for r in ranked} == set(range(len(responses)))
    assert all(responses[r.index] == r.response for r in ranked)


def test_reference_per_response(fp32):
    refs = ["one", "two", "three"]
    resps = ["uno", "dos", "tres"]
    together = fp32.batch_score(resps, refs)
    alone = [fp32.score(a, b) for a, b in zip(resps, refs)]
    assert together == alone


@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_score_independent_of_neighbours_batch_size_and_order(which, request, dev_pairs):
    """Bit-identical, not just close: see tests/test_determinism.py for the wider checks."""
    model = request.getfixturevalue(which)
    refs, resps = dev_pairs
    refs, resps = list(refs[:120]), list(resps[:120])
    refs.append("short")
    resps.append(" ".join(["long"] * 400))  # a long neighbour changes every batch's padding
    base = np.array(model.batch_score(resps, refs, batch_size=64))
    single = np.array([model.score(a, b) for a, b in zip(resps, refs)])
    order = list(range(len(refs)))
    random.Random(0).shuffle(order)
    shuffled = np.empty_like(base)
    shuffled[order] = model.batch_score([resps[i] for i in order], [refs[i] for i in order], batch_size=7)
    assert np.array_equal(base, single)
    assert np.array_equal(base, shuffled)


def test_duplicates_and_empty(fp32):
    assert fp32.batch_score([], "ref") == []
    s = fp32.batch_score(["a", "b", "a", ""], ["r", "r", "r", ""])
    assert s[0] == s[2] and 0.0 <= s[3] <= 1.0


def test_input_lists_are_not_modified(fp32):
    resps, refs = ["b", "a"], ["x", "y"]
    fp32.batch_score(resps, refs)
    fp32.rank(resps, refs)
    assert resps == ["b", "a"] and refs == ["x", "y"]


@pytest.mark.parametrize("truncation", ["keep_response_end", "keep_start"])
def test_long_texts_truncated_like_reference(fp32, tiny_checkpoint, truncation):
    from rewardrt.export.reference import TorchReward

    long = "word " * 2000 + "the final answer is 72"
    ours = RewardModel(fp32.path, truncation=truncation)
    ref = TorchReward(tiny_checkpoint, truncation=truncation)
    assert ours.score(long, "ref") == pytest.approx(ref.score(long, "ref"), abs=1e-5)
    assert ours.truncated([long, "short"], "ref") == [True, False]
    short = RewardModel(fp32.path, max_length=16, truncation=truncation)
    assert short.max_length == 16
    if truncation == "keep_start":  # the end of the text is cut: what comes last does not count
        assert short.score(long, "ref") == short.score(long + " more", "ref")
        assert short.score(long, "ref") != short.score("other " + long, "ref")
    else:  # the end of the response is kept: what comes first does not count
        assert short.score(long, "ref") == short.score("other " + long, "ref")
        assert short.score(long, "ref") != short.score(long + " 73", "ref")


def test_unknown_truncation_is_refused(tiny_fp32):
    with pytest.raises(ValueError, match="truncation must be one of 'keep_response_end', 'keep_start'"):
        RewardModel(tiny_fp32[0], truncation="left")


@pytest.mark.parametrize("call,exc,match", [
    (lambda m: m.score(1, "r"), TypeError, "response must be str, got int"),
    (lambda m: m.score("x", None), TypeError, "reference must be str, got NoneType"),
    (lambda m: m.batch_score("abc", "r"), TypeError, "responses must be a list of str, got str"),
    (lambda m: m.batch_score(["a", 3], "r"), TypeError, r"responses\[1\] must be str, got int"),
    (lambda m: m.batch_score(["a"], ["r", None]), TypeError, r"reference\[1\] must be str"),
    (lambda m: m.batch_score(["a", "b"], ["r"]), ValueError, "got 1 references for 2 responses"),
    (lambda m: m.batch_score(["a"], "r", batch_size=0), ValueError, "batch_size must be >= 1, got 0"),
    (lambda m: m.batch_score(["a"], "r", batch_size=2.5), TypeError, "batch_size must be an int"),
    (lambda m: m.batch_score([b"a"], "r"), TypeError, r"responses\[0\] must be str, got bytes"),
])
def test_bad_inputs(fp32, call, exc, match):
    with pytest.raises(exc, match=match):
        call(fp32)


def test_bad_constructor_args(tiny_fp32, tmp_path):
    path = tiny_fp32[0]
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        RewardModel(tmp_path / "nope.onnx")
    with pytest.raises(ValueError, match=r"threads must be a positive int"):
        RewardModel(path, threads=0)
    with pytest.raises(ValueError, match=r"max_length must be an int in \[3, 512\]"):
        RewardModel(path, max_length=513)
    with pytest.raises(TypeError, match="path must be a str or Path"):
        RewardModel(3)


def test_corrupt_and_foreign_files_name_the_path(tiny_fp32, tmp_path):
    data = tiny_fp32[0].read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated.onnx"):
        RewardModel(truncated)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ArtifactError, match="garbage.onnx"):
        RewardModel(garbage)
    foreign = tmp_path / "foreign.onnx"
    model = onnx.load(str(tiny_fp32[0]))
    del model.metadata_props[:]
    onnx.save(model, str(foreign))
    with pytest.raises(ArtifactError, match="without rewardrt metadata"):
        RewardModel(foreign)


def test_newer_format_is_refused(tiny_fp32, tmp_path):
    model = onnx.load(str(tiny_fp32[0]))
    for p in model.metadata_props:
        if p.key == "rewardrt.format_version":
            p.value = "99"
    newer = tmp_path / "newer.onnx"
    onnx.save(model, str(newer))
    with pytest.raises(ArtifactError, match="upgrade rewardrt"):
        RewardModel(newer)


def test_spec_and_repr(int8):
    assert int8.spec.precision == "int8"
    assert "int8" in repr(int8)


VNNI = {"int8_dot_product": "VNNI"}
AVX2 = {"int8_dot_product": "AVX2 (no VNNI)"}


@pytest.fixture
def packaged(tmp_path, monkeypatch, tiny_int8, tiny_fp32):
    """A models folder holding a portable artifact (the tiny INT8 one) and, when asked, a VNNI one
    (the tiny fp32 one, so the two are told apart by their precision)."""
    import shutil

    import rewardrt.models as models

    folder = tmp_path / models.DEFAULT_MODEL_NAME
    folder.mkdir()
    shutil.copy2(tiny_int8[0], folder / models.DEFAULT_ARTIFACTS["avx2"])
    monkeypatch.setattr(models, "model_dir", lambda name=models.DEFAULT_MODEL_NAME: folder)
    monkeypatch.delenv("REWARDRT_DEFAULT_ARTIFACT", raising=False)

    def add_vnni():
        shutil.copy2(tiny_fp32[0], folder / models.DEFAULT_ARTIFACTS["avx512-vnni"])
    return folder, add_vnni


def test_default_selection_prefers_the_vnni_artifact_on_vnni_cpus(packaged, monkeypatch):
    from rewardrt.runtime.api import select_default_model

    folder, add_vnni = packaged
    portable, vnni = folder / "model.int8.onnx", folder / "model.vnni.int8.onnx"
    assert select_default_model(features=VNNI) == portable  # no VNNI artifact in this build
    add_vnni()
    assert select_default_model(features=VNNI) == vnni
    assert select_default_model(features=AVX2) == portable
    assert select_default_model(features={"int8_dot_product": "not x86 (no VPMADDUBSW saturation)"}) == portable
    assert select_default_model("avx2", features=VNNI) == portable
    assert select_default_model("avx512-vnni", features=AVX2) == vnni  # asked for: loads, the runtime warns
    monkeypatch.setenv("REWARDRT_DEFAULT_ARTIFACT", "avx2")
    assert select_default_model(features=VNNI) == portable
    monkeypatch.setenv("REWARDRT_DEFAULT_ARTIFACT", "vnni")
    with pytest.raises(ValueError, match="REWARDRT_DEFAULT_ARTIFACT must be one of auto, avx2, avx512-vnni, got 'vnni'"):
        select_default_model(features=VNNI)


def test_a_missing_vnni_artifact_asked_for_by_name_is_an_error(packaged, monkeypatch):
    from rewardrt.runtime.api import select_default_model

    monkeypatch.setenv("REWARDRT_DEFAULT_ARTIFACT", "avx512-vnni")
    with pytest.raises(FileNotFoundError, match="REWARDRT_DEFAULT_ARTIFACT=avx512-vnni .* does not carry; use one of avx2 or auto"):
        select_default_model(features=VNNI)


def test_reward_model_loads_the_selected_default_and_pickles_the_choice_not_the_file(packaged, monkeypatch):
    import pickle

    import rewardrt.runtime.api as api

    folder, add_vnni = packaged
    add_vnni()
    monkeypatch.setattr(api, "cpu_features", lambda: VNNI)
    model = RewardModel(threads=1)
    assert model.path == folder / "model.vnni.int8.onnx" and model.spec.precision == "fp32"
    monkeypatch.setattr(api, "cpu_features", lambda: AVX2)
    again = pickle.loads(pickle.dumps(model))  # path None travels: the receiving CPU selects again
    assert again.path == folder / "model.int8.onnx" and again.spec.precision == "int8"
    monkeypatch.setattr(api, "cpu_features", lambda: VNNI)
    monkeypatch.setenv("REWARDRT_DEFAULT_ARTIFACT", "avx2")
    assert RewardModel(threads=1).path == folder / "model.int8.onnx"
