"""``--weights-file`` artifacts: the large tensors in one file beside the .onnx, mapped by
onnxruntime; the same scores as the self-contained file, the weights file covered by the seal,
and replaced exports leave no stale weights file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from rewardrt import RewardModel
from rewardrt.export.config import ExportConfig
from rewardrt.export.exporter import export
from rewardrt.export.weightsfile import ALIGN, MIN_BYTES
from rewardrt.runtime.integrity import KEY_WEIGHTS, check_artifact, weights_file
from rewardrt.runtime.spec import ArtifactError

PAIRS = [("The answer is 72.", "72"), ("seventy-three", "72"), ("", "Paris"),
         ("A man is playing a guitar.", "A man plays the guitar."), ("B", "(B) 12 m/s")]


def _export(checkpoint, out, precision="int8", weights=True, start="default"):
    cfg = ExportConfig.avx2(precision=precision, validation_size=300, calibration_size=64,
                            weights_file=weights, start_from=start)
    return export(checkpoint, out, cfg)


@pytest.fixture(scope="module")
def split_int8(tiny_checkpoint, tiny_int8, tmp_path_factory):
    """The tiny checkpoint exported with a weights file, with the single-file fixture's plan."""
    out = tmp_path_factory.mktemp("split") / "tiny.int8.onnx"
    return out, _export(tiny_checkpoint, out, start=str(tiny_int8[0]))


def _scores(path) -> np.ndarray:
    model = RewardModel(path, threads=1)
    return np.array(model.batch_score([b for b, _ in PAIRS], [a for _, a in PAIRS]))


def test_weights_file_scores_like_the_single_file_and_is_recorded(split_int8, tiny_int8):
    out, report = split_int8
    data = weights_file(out)
    assert data is not None and data.is_file() and data.parent == out.parent
    assert data.name.startswith(out.name + ".") and data.name.endswith(".data")
    assert report.weights_file == data.name and "weights in" in report.describe()
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([out.name, data.name])  # no work left
    graph = onnx.load(str(out), load_external_data=False)
    external = [t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and all(len(t.raw_data) < MIN_BYTES for t in graph.graph.initializer
                            if t.data_location != onnx.TensorProto.EXTERNAL)
    offsets = [int({e.key: e.value for e in t.external_data}["offset"]) for t in external]
    assert all(o % ALIGN == 0 for o in offsets)
    record = json.loads({p.key: p.value for p in graph.metadata_props}[KEY_WEIGHTS])
    assert record["file"] == data.name and record["bytes"] == data.stat().st_size
    assert report.file_bytes == out.stat().st_size + data.stat().st_size
    assert weights_file(tiny_int8[0]) is None  # the single-file fixture
    # the same plan, the same graph: the same scores, bit for bit
    np.testing.assert_array_equal(_scores(out), _scores(tiny_int8[0]))


@pytest.mark.parametrize("damage", ["missing", "flipped", "cut"])
def test_a_missing_or_changed_weights_file_is_refused_naming_both_files(split_int8, tmp_path, damage):
    out, _ = split_int8
    copy = tmp_path / out.name
    shutil.copy2(out, copy)
    data = weights_file(out)
    if damage != "missing":
        raw = bytearray(data.read_bytes())
        if damage == "flipped":
            raw[len(raw) // 2] ^= 0x01
        else:
            raw = raw[:-1]
        (tmp_path / data.name).write_bytes(bytes(raw))
    want = {"missing": "does not exist; copy both files", "flipped": "corrupt or was modified",
            "cut": "bytes, the artifact records"}[damage]
    with pytest.raises(ArtifactError, match=want) as err:
        check_artifact(copy)
    assert data.name in str(err.value)
    with pytest.raises(ArtifactError, match=want):
        RewardModel(copy)


def test_both_files_copied_together_load(split_int8, tmp_path):
    out, _ = split_int8
    data = weights_file(out)
    shutil.copy2(out, tmp_path / out.name)
    shutil.copy2(data, tmp_path / data.name)
    assert check_artifact(tmp_path / out.name) == 2
    np.testing.assert_array_equal(_scores(tmp_path / out.name), _scores(out))


def test_replacing_an_export_removes_the_old_weights_file(tiny_checkpoint, tmp_path):
    out = tmp_path / "m.onnx"
    _export(tiny_checkpoint, out, precision="fp32")
    first = weights_file(out)
    assert first is not None and first.is_file()
    _export(tiny_checkpoint, out, precision="int8")  # other weights: another name
    second = weights_file(out)
    assert second.is_file() and second.name != first.name and not first.exists()
    _export(tiny_checkpoint, out, precision="fp32", weights=False)  # back to one file
    assert weights_file(out) is None and not second.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_info_names_the_weights_file(split_int8, tiny_int8, capsys):
    from rewardrt.cli import main

    out, _ = split_int8
    assert main(["info", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["weights_file"] == str(weights_file(out))
    assert main(["info", str(tiny_int8[0])]) == 0
    assert json.loads(capsys.readouterr().out)["weights_file"] is None
