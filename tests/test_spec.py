"""The artifact spec's typed records: the embedded model's JSON reads and writes back key for key,
and a bad entry is an ArtifactError naming its key."""

from __future__ import annotations

import json

import onnx
import pytest

from rewardrt.models import default_model_path
from rewardrt.runtime.spec import KEY_SPEC, ArtifactError, ArtifactSpec, FidelityRecord


@pytest.fixture(scope="module")
def wire() -> dict:
    meta = {p.key: p.value for p in onnx.load(str(default_model_path()), load_external_data=False).metadata_props}
    return json.loads(meta[KEY_SPEC])


def test_the_embedded_spec_round_trips(wire):
    spec = ArtifactSpec.from_json(json.dumps(wire))
    assert isinstance(spec.fidelity, FidelityRecord) and spec.fidelity.n == wire["fidelity"]["n"]
    again = json.loads(spec.to_json())
    assert again["fidelity"] == wire["fidelity"]
    for key, value in wire["quantization"].items():
        assert again["quantization"][key] == value, key


@pytest.mark.parametrize("key, value, message", [
    ("n", 0, r"fidelity.n must be an int >= 1, got 0"),
    ("max_abs_diff", "0.1", r"fidelity.max_abs_diff must be a number >= 0"),
    ("agreement_at_half", 1.5, r"fidelity.agreement_at_half must be a number in \[0, 1\]"),
    ("budget", {"max_abs": "x"}, r"fidelity.budget must be an object"),
])
def test_a_bad_fidelity_entry_names_its_key(wire, key, value, message):
    with pytest.raises(ArtifactError, match=message):
        ArtifactSpec.from_json(json.dumps({**wire, "fidelity": {**wire["fidelity"], key: value}}))


def test_a_missing_fidelity_entry_names_its_key_and_an_empty_one_is_none(wire):
    partial = {k: v for k, v in wire["fidelity"].items() if k != "spearman"}
    with pytest.raises(ArtifactError, match=r"fidelity.spearman is missing"):
        ArtifactSpec.from_json(json.dumps({**wire, "fidelity": partial}))
    assert ArtifactSpec.from_json(json.dumps({**wire, "fidelity": {}})).fidelity is None
