"""CPU feature detection at load and the warning for integer-GEMM artifacts on CPUs without VNNI."""

from __future__ import annotations

import json
import logging

import pytest

from rewardrt.runtime import RewardModel, cpu
from rewardrt.runtime.spec import ArtifactError, ArtifactSpec, QuantizationRecord

AVX2_ONLY = {"machine": "x86_64", "source": "test", "avx2": True, "avx512f": False, "avx512bw": False,
             "avx512_vnni": False, "avx_vnni": False, "amx_int8": False, "int8_dot_product": "AVX2 (no VNNI)"}
VNNI = {**AVX2_ONLY, "avx512f": True, "avx512bw": True, "avx512_vnni": True, "int8_dot_product": "VNNI"}


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(cpu, "_warned", set())


def test_features_are_detected():
    f = cpu.cpu_features()
    assert f["int8_dot_product"] in ("VNNI", "AVX2 (no VNNI)", "none", "not x86 (no VPMADDUBSW saturation)")
    assert {"avx2", "avx512_vnni", "avx_vnni", "machine", "source"} <= set(f)


def test_linux_flags_parse_the_first_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx_vnni\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu._linux_flags(info) == {"fpu", "avx2", "avx_vnni"}
    assert cpu._linux_flags(tmp_path / "missing") is None


def test_numpy_fallback_names_avx512_vnni():
    f = cpu._numpy_features()
    assert set(f) <= {"avx2", "avx512f", "avx512bw", "avx512_vnni"} and all(isinstance(v, bool) for v in f.values())


EIGHT_BIT = QuantizationRecord.from_wire({"plan": {f"m{i}": "token" for i in range(6)},
                                          "plan_counts": {"token": 2, "token2": 1, "block": 3}, "activation_bits": 8})


def test_eight_bit_integer_gemms_warn_once_without_vnni(caplog, fresh_warnings):
    with caplog.at_level(logging.WARNING, logger="rewardrt.runtime.cpu"):
        assert cpu.check_integer_gemm(EIGHT_BIT, "a.onnx", AVX2_ONLY)
        assert not cpu.check_integer_gemm(EIGHT_BIT, "a.onnx", AVX2_ONLY)  # once per artifact
        assert not cpu.check_integer_gemm(EIGHT_BIT, "b.onnx", VNNI)
        # artifacts from before the activation_bits entry used 8-bit codes
        assert cpu.check_integer_gemm(QuantizationRecord.from_wire({"plan": {"a": "token"}}), "old.onnx", AVX2_ONLY)
        assert not cpu.check_integer_gemm(None, "fp32.onnx", AVX2_ONLY)
    warnings = [r for r in caplog.records if r.name == "rewardrt.runtime.cpu"]
    assert len(warnings) == 2
    text = warnings[0].getMessage()
    assert "3 MatMuls" in text and "no VNNI" in text and "saturating" in text and "a.onnx" in text
    assert "--activation-bits 7" in text and "--target avx2" in text and "--precision fp32" in text
    assert "target avx512-vnni" in text  # the record's target (implied by 8-bit codes)


def test_seven_bit_artifact_loads_without_warning_on_avx2(tiny_int8, tiny_fp32, monkeypatch, caplog,
                                                          fresh_warnings):
    path, report = tiny_int8
    assert report.plan.get("token", 0) + report.plan.get("token2", 0) >= 1
    seen = []
    real = cpu.check_integer_gemm
    from rewardrt.runtime import api

    monkeypatch.setattr(api, "check_integer_gemm", lambda q, s, f=None: seen.append(q) or real(q, s, f))
    monkeypatch.setattr(cpu, "cpu_features", lambda: AVX2_ONLY)
    with caplog.at_level(logging.WARNING, logger="rewardrt.runtime.cpu"):
        RewardModel(path)
        RewardModel(tiny_fp32[0])
    assert seen and seen[0].activation_bits == 7  # the load path hands the spec's record to the check
    assert not [r for r in caplog.records if r.name == "rewardrt.runtime.cpu"]


def test_seven_bit_codes_are_exact_on_this_cpu():
    """Whatever this CPU's kernels: uint8 codes <= 127 times int8 weights give exact integer sums
    (the premise of the 7-bit default); 8-bit codes are exact only where the CPU has VNNI."""
    import numpy as np
    from rewardrt.runtime.session import make_session
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    b = rng.integers(-127, 128, (64, 48)).astype(np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b", "zp"], ["y"])], "g",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [9, 64])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [9, 48])],
        [numpy_helper.from_array(b, "b"), numpy_helper.from_array(np.array(64, np.uint8), "zp")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = make_session(model.SerializeToString(), threads=1)
    a = rng.integers(1, 128, (9, 64)).astype(np.uint8)
    a[0] = 127  # the worst case: every pair of products at 127 x 127
    (y,) = session.run(None, {"a": a})
    assert np.array_equal(y, (a.astype(np.int64) - 64) @ b.astype(np.int64))


def test_token_count_from_plan_or_counts():
    counted = QuantizationRecord.from_wire({"plan": {"a": "token"}, "plan_counts": {"token": 3, "token2": 2, "block": 2}})
    assert counted.integer_gemms == 5
    assert QuantizationRecord.from_wire({"plan": {"a": "token", "b": "fp32", "c": "token"}}).integer_gemms == 2
    assert ArtifactSpec.from_json('{"precision": "fp32", "max_length": 8, "quantization": {}}').quantization is None


def _spec_json(**quantization) -> str:
    plan = {"plan": {"a": "token", "b": "dequant"}, "activation_bits": 7}
    return json.dumps({"precision": "int8", "max_length": 8, "quantization": {**plan, **quantization}})


def test_quantization_record_is_checked_on_read_and_names_the_key():
    record = ArtifactSpec.from_json(_spec_json(newer_entry=1)).quantization  # unknown entries: ignored
    assert record.target == "avx2" and record.plan_counts == {"token": 1, "dequant": 1}
    assert ArtifactSpec.from_json(_spec_json(activation_bits=8)).quantization.target == "avx512-vnni"
    for key, bad in (("activation_bits", 9), ("plan", []), ("plan_counts", {"token": "2"}), ("target", "arm"),
                     ("gptq", "yes"), ("gate_rejected", [{"plan": {}}])):
        with pytest.raises(ArtifactError, match=f"quantization.{key} must be"):
            ArtifactSpec.from_json(_spec_json(**{key: bad}))
    with pytest.raises(ArtifactError, match="activation_bits 8 does not fit quantization.target 'avx2'"):
        ArtifactSpec.from_json(_spec_json(activation_bits=8, target="avx2"))
    with pytest.raises(ArtifactError, match="quantization.plan is missing"):
        ArtifactSpec.from_json('{"precision": "int8", "max_length": 8, "quantization": {"activation_bits": 7}}')


def test_a_bad_record_in_a_file_names_the_file_and_the_key(tiny_int8, tmp_path):
    from rewardrt.runtime.spec import KEY_SPEC, spec_from_metadata

    meta = {p.key: p.value for p in __import__("onnx").load(str(tiny_int8[0])).metadata_props}
    spec = json.loads(meta[KEY_SPEC])
    spec["quantization"]["activation_bits"] = "7"
    with pytest.raises(ArtifactError, match=r"'x.onnx' has an unreadable rewardrt.spec: quantization.activation_bits"):
        spec_from_metadata({**meta, KEY_SPEC: json.dumps(spec)}, "x.onnx")


def test_the_record_writes_the_keys_it_read():
    """The JSON keys are the wire format: a record read from an artifact writes them back unchanged
    (plus the target where an older artifact lacks it)."""
    model = RewardModel()
    meta = {p.key: p.value for p in __import__("onnx").load(str(model.path), load_external_data=False).metadata_props}
    wire = json.loads(meta["rewardrt.spec"])["quantization"]
    again = model.spec.quantization.to_wire()
    assert {k: again[k] for k in wire} == wire and set(again) - set(wire) <= {"target"} and "target" in again
    assert json.loads(model.spec.to_json())["quantization"] == again


def test_info_shows_the_cpu(tiny_int8, capsys):
    from rewardrt.cli import main

    assert main(["info", str(tiny_int8[0])]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cpu"]["int8_dot_product"] == cpu.cpu_features()["int8_dot_product"]
