"""CPU feature detection at load and the warning for integer-GEMM artifacts on CPUs without VNNI."""

from __future__ import annotations

import json
import logging

import pytest

from rewardrt.runtime import RewardModel, cpu

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


def test_int8_artifact_warns_once_without_vnni(tiny_int8, monkeypatch, caplog, fresh_warnings):
    path, report = tiny_int8
    assert report.plan.get("token", 0) >= 1
    monkeypatch.setattr(cpu, "cpu_features", lambda: AVX2_ONLY)
    with caplog.at_level(logging.WARNING, logger="rewardrt.runtime.cpu"):
        RewardModel(path)
        RewardModel(path)
    warnings = [r for r in caplog.records if r.name == "rewardrt.runtime.cpu"]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "no VNNI" in text and "saturating" in text and "--precision fp32" in text and str(path) in text


def test_no_warning_with_vnni_or_without_integer_gemm(tiny_int8, tiny_fp32, monkeypatch, caplog, fresh_warnings):
    with caplog.at_level(logging.WARNING, logger="rewardrt.runtime.cpu"):
        monkeypatch.setattr(cpu, "cpu_features", lambda: VNNI)
        RewardModel(tiny_int8[0])
        monkeypatch.setattr(cpu, "cpu_features", lambda: AVX2_ONLY)
        RewardModel(tiny_fp32[0])
    assert not [r for r in caplog.records if r.name == "rewardrt.runtime.cpu"]


def test_token_count_from_plan_or_counts():
    assert cpu.integer_gemm_count({"plan_counts": {"token": 3, "block": 2}}) == 3
    assert cpu.integer_gemm_count({"plan": {"a": "token", "b": "fp32", "c": "token"}}) == 2
    assert cpu.integer_gemm_count({}) == 0


def test_info_shows_the_cpu(tiny_int8, capsys):
    from rewardrt.cli import main

    assert main(["info", str(tiny_int8[0])]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cpu"]["int8_dot_product"] == cpu.cpu_features()["int8_dot_product"]
