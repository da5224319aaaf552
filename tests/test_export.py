"""Export: one graph, parity with the torch reference, the INT8 gate, refusals, atomic writes."""

from __future__ import annotations

import collections
import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from rewardrt.export.config import ExportConfig, FidelityBudget, default_bits, host_target
from rewardrt.export.errors import CheckpointError, FidelityError
from rewardrt.export.exporter import export
from rewardrt.runtime import RewardModel
from rewardrt.runtime.spec import KEY_SPEC, KEY_TOKENIZER


def _ops(path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _check_plan_in_graph(path, report) -> None:
    """The written graph holds the nodes of the plan the report names."""
    model = onnx.load(str(path))
    ops = _ops(path)
    # sibling GEMMs of one quantized activation run fused: one GEMM and a Split of k outputs for k MatMuls
    fused_away = sum(len(n.output) - 1 for n in model.graph.node if n.op_type == "Split" and ".fused" in n.name)
    assert ops["MatMulIntegerToFloat"] + fused_away == report.plan.get("token", 0) + 2 * report.plan.get("token2", 0)
    assert ops["MatMulNBits"] == report.plan.get("block", 0)
    assert sum(n.name.endswith((".WeightDequant", ".WeightCast")) for n in model.graph.node) == report.plan.get("dequant", 0)


def test_fp32_graph_matches_torch_raw(tiny_fp32, tiny_reference, dev_pairs):
    path, report = tiny_fp32
    refs, resps = dev_pairs
    ours = np.array(RewardModel(path).raw_scores(resps, refs))
    theirs = np.array(tiny_reference.raw_scores(resps, refs))
    assert np.abs(ours - theirs).max() <= 1e-5
    assert report.passed and report.max_raw_abs_diff <= 1e-4


def test_one_graph_with_fused_ops_and_two_outputs(tiny_fp32):
    path, report = tiny_fp32
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in model.graph.output] == ["score", "raw_score"]
    ops = _ops(path)
    assert ops["Attention"] == 2 and ops["BiasGelu"] == 2
    # the 4 fused SkipLayerNormalization nodes are written back as plain ops (faster on CPU) ...
    assert report.fused_ops["SkipLayerNormalization"] == 4 and report.layer_norms_expanded == 4
    assert ops["SkipLayerNormalization"] == 0 and ops["LayerNormalization"] == 0 and ops["ReduceMean"] == 8
    assert report.fused_ops["Attention"] == 2
    # ... and onnxruntime does not fuse them back when the runtime loads the graph
    from rewardrt.runtime.session import make_session, session_options

    opts = session_options(threads=1)
    opts.optimized_model_filepath = str(path.parent / "loaded-view.onnx")
    make_session(path, options=opts)
    loaded = collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
    (path.parent / "loaded-view.onnx").unlink()
    assert loaded["SkipLayerNormalization"] == 0 and loaded["LayerNormalization"] == 0


def _layer_norm_graph(opset: int):
    """SkipLayerNormalization (skip + bias, beta; its sum output read) then LayerNormalization."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    h = 24
    inits = [numpy_helper.from_array(rng.standard_normal(h).astype(np.float32), n)
             for n in ("gamma", "beta", "bias", "gamma2")]
    nodes = [
        helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"],
                         ["y", "", "", "sum"], domain="com.microsoft", epsilon=1e-12, name="sln"),
        helper.make_node("LayerNormalization", ["y", "gamma2"], ["z"], axis=-1, epsilon=1e-5, name="ln"),
        helper.make_node("Add", ["z", "sum"], ["out"], name="after"),
    ]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", "s", h]) for n in ("x", "skip", "out")]
    graph = helper.make_graph(nodes, "g", io[:2], io[2:], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("opset", [17, 18])
def test_expanded_layer_norms_match_the_fused_kernels(opset):
    from rewardrt.export.graph import expand_layer_norms
    from rewardrt.runtime.session import make_session

    fused = _layer_norm_graph(opset)
    plain = onnx.ModelProto.FromString(fused.SerializeToString())
    assert expand_layer_norms(plain) == 2
    onnx.checker.check_model(plain)
    assert not {n.op_type for n in plain.graph.node} & {"SkipLayerNormalization", "LayerNormalization"}
    rng = np.random.default_rng(1)
    feed = {"x": rng.standard_normal((3, 7, 24)).astype(np.float32) * 4,
            "skip": rng.standard_normal((3, 7, 24)).astype(np.float32)}

    def run(m):
        return make_session(m.SerializeToString(), threads=1).run(None, feed)[0]

    want, got = run(fused), run(plain)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    # the rows are independent: one row alone gives the same values
    alone = make_session(plain.SerializeToString(), threads=1).run(None, {k: v[1:2] for k, v in feed.items()})[0]
    assert np.array_equal(alone[0], got[1])


def test_layer_norms_whose_statistics_are_read_stay_fused():
    from rewardrt.export.graph import expand_layer_norms

    model = _layer_norm_graph(17)
    model.graph.node[1].output.extend(["mean"])
    model.graph.output.extend([onnx.helper.make_tensor_value_info("mean", onnx.TensorProto.FLOAT, None)])
    assert expand_layer_norms(model) == 1
    assert [n.op_type for n in model.graph.node].count("LayerNormalization") == 1


def test_int8_within_budget_and_really_int8(tiny_int8, tiny_reference, dev_pairs):
    path, report = tiny_int8
    refs, resps = dev_pairs
    ours = np.array(RewardModel(path).batch_score(resps, refs))
    theirs = np.array(tiny_reference.batch_score(resps, refs))
    diff = np.abs(ours - theirs)
    assert diff.mean() <= 0.01 and diff.max() <= 0.05
    _check_plan_in_graph(path, report)
    assert set(report.plan) <= {"token", "dequant", "block", "fp32"}  # the default schemes
    # weight_only="auto": as much of what the search leaves on dequant as fits moves to block, and
    # only for a VNNI-targeted artifact; the spec says how many of how many
    spec = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}[KEY_SPEC])
    leftovers = spec["quantization"]["leftovers_to_block"]
    moved, of = (int(x) for x in leftovers.split()[1::2]) if leftovers.startswith("moved") else (0, 0)
    assert report.plan.get("block", 0) == moved and report.plan.get("dequant", 0) == of - moved
    assert leftovers == "not tried" or spec["quantization"]["target"] == "avx512-vnni"
    assert report.plan.get("token", 0) + report.plan.get("dequant", 0) + report.plan.get("block", 0) >= 1
    inits = {t.name: t for t in onnx.load(str(path)).graph.initializer}
    tables = [name for name, t in inits.items() if t.data_type == onnx.TensorProto.FLOAT16 and t.dims[0] == 30522]
    assert len(tables) == 1 and spec["quantization"]["float16_embedding_tables"] == [tables[0][: -len(".f16")]]


def test_metadata_makes_the_file_self_contained(tiny_int8, tiny_checkpoint):
    path, _ = tiny_int8
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    spec = json.loads(meta[KEY_SPEC])
    assert spec["precision"] == "int8" and spec["max_length"] == 512
    assert spec["template"] == "{reference} [SEP] {response}"
    assert spec["fidelity"]["mean_abs_diff"] <= 0.01 and "budget" in spec["fidelity"]
    assert spec["quantization"]["plan"] and spec["versions"]["onnxruntime"]
    assert json.loads(meta[KEY_TOKENIZER])["model"]["type"] == "WordPiece"
    from rewardrt.export.checkpoint import locate

    assert spec["checkpoint_digest"] == locate(tiny_checkpoint).digest()


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_refuses_missing_files(tiny_checkpoint, tmp_path):
    bad = _copy(tiny_checkpoint, tmp_path / "ck")
    (bad / "head_weights.pt").unlink()
    (bad / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"missing tokenizer\.json, head_weights\.pt"):
        export(bad, tmp_path / "o.onnx", ExportConfig())
    assert not (tmp_path / "o.onnx").exists()


def test_refuses_wrong_head_width(tiny_checkpoint, tmp_path):
    bad = _copy(tiny_checkpoint, tmp_path / "ck")
    torch.save({"1.weight": torch.zeros(1, 32), "1.bias": torch.zeros(1)}, bad / "head_weights.pt")
    with pytest.raises(CheckpointError, match=r"expected \(1, 64\)"):
        export(bad, tmp_path / "o.onnx", ExportConfig())


def test_refuses_non_bert(tiny_checkpoint, tmp_path):
    bad = _copy(tiny_checkpoint, tmp_path / "ck")
    config = json.loads((bad / "config.json").read_text())
    config["model_type"] = "gpt2"
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model_type 'gpt2'"):
        export(bad, tmp_path / "o.onnx", ExportConfig())


def test_refuses_unreadable_weights(tiny_checkpoint, tmp_path):
    bad = _copy(tiny_checkpoint, tmp_path / "ck")
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot load encoder weights"):
        export(bad, tmp_path / "o.onnx", ExportConfig())


def test_refuses_pickled_code_in_head(tiny_checkpoint, tmp_path):
    bad = _copy(tiny_checkpoint, tmp_path / "ck")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"1.weight": Evil(), "1.bias": torch.zeros(1)}, bad / "head_weights.pt")
    with pytest.raises(CheckpointError, match="only tensor state dicts"):
        export(bad, tmp_path / "o.onnx", ExportConfig())
    assert not marker.exists()


def test_over_budget_writes_nothing_and_keeps_previous_file(tiny_checkpoint, tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous")
    impossible = FidelityBudget(max_mean_abs=0.0, max_abs=0.0, min_spearman=1.0, min_agreement=1.0)
    cfg = ExportConfig(precision="int8", validation_size=50,
                       calibration_size=16, budget=impossible)
    with pytest.raises(FidelityError, match="over its fidelity budget") as info:
        export(tiny_checkpoint, out, cfg)
    assert info.value.report is not None and not info.value.report.passed
    assert "--start-plan" in str(info.value) and "--precision fp32" in str(info.value)  # what to try next
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_config_validation():
    with pytest.raises(ValueError, match="precision must be one of"):
        ExportConfig(precision="int4")
    with pytest.raises(ValueError, match="max_length"):
        ExportConfig(max_length=1)
    with pytest.raises(ValueError, match="agreement_margin"):
        ExportConfig(agreement_margin=0)
    with pytest.raises(ValueError, match="sensitivity_size"):
        ExportConfig(sensitivity_size=4)


def test_search_target_takes_its_own_agreement_fraction():
    b = FidelityBudget()
    same = b.scaled(0.5)
    wider = b.scaled(0.5, 0.8)
    assert same.max_mean_abs == wider.max_mean_abs == b.max_mean_abs * 0.5
    assert same.min_spearman == wider.min_spearman
    assert 1 - same.min_agreement == pytest.approx((1 - b.min_agreement) * 0.5)
    assert 1 - wider.min_agreement == pytest.approx((1 - b.min_agreement) * 0.8)


def test_int8_artifact_quantizes_each_activation_with_one_quantizelinear(tiny_int8):
    path, report = tiny_int8
    model = onnx.load(str(path))
    ops = _ops(path)
    spec = json.loads({p.key: p.value for p in model.metadata_props}[KEY_SPEC])
    assert spec["quantization"]["activation_chain"] == "qlinear"
    assert spec["quantization"]["activation_bits"] == 7 and spec["quantization"]["target"] == "avx2"
    codes = {n.input[0] for n in model.graph.node if n.op_type == "MatMulIntegerToFloat"}
    residual = {c for c in codes if c.endswith(".rq")}
    # per quantized activation: one blocked QuantizeLinear for the codes (a block per row, no
    # reshapes), and one more for the residual codes of the token2 scheme; the zero points (sized
    # like the row scales) made once for the whole graph unless every activation is one-sided
    names = {n.name for n in model.graph.node}
    one_sided = {c for c in codes if c.endswith(".xq") and c[: -len(".xq")] + ".Shift" in names}
    assert len(codes) >= 1 and report.plan.get("token", 0) + report.plan.get("token2", 0) >= 1
    symmetric = len(codes) - len(residual) > len(one_sided)
    assert ops["QuantizeLinear"] == len(codes) + int(symmetric)
    assert ops["Round"] == 0
    # the integer GEMMs sharing one quantized activation (Q, K, V) run as one GEMM and a Split
    gemm_inputs = [n.input[0] for n in model.graph.node if n.op_type == "MatMulIntegerToFloat"]
    assert len(gemm_inputs) == len(set(gemm_inputs))
    assert report.graph_nodes == len(model.graph.node)
    assert not [n for n in model.graph.node if n.op_type == "Reshape" and ".act." in n.input[0]]
    k_of = {t.name: t.dims[0] for t in model.graph.initializer if t.name.endswith(".wq")}
    gemm_k = {n.input[0]: k_of[n.input[1]] for n in model.graph.node if n.op_type == "MatMulIntegerToFloat"}
    for node in (n for n in model.graph.node if n.name.endswith(".Quantize")):
        assert {a.name: a.i for a in node.attribute} == {"axis": -1, "block_size": gemm_k[node.output[0]]}
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [21]


def test_int8_with_token2_and_block_schemes(tiny_checkpoint, tmp_path, tiny_reference, dev_pairs):
    """The non-default schemes (two-level integer GEMM, MatMulNBits) through the same search and gate."""
    out = tmp_path / "tb.onnx"
    report = export(tiny_checkpoint, out, ExportConfig(
        precision="int8", validation_size=200, calibration_size=64,
        integer_schemes=["token", "token2"], weight_only="block"))
    assert report.passed and set(report.plan) <= {"token", "token2", "block", "fp32"}, report.plan
    _check_plan_in_graph(out, report)
    spec = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}[KEY_SPEC])
    assert spec["quantization"]["integer_schemes"] == ["token", "token2"]
    assert spec["quantization"]["weight_only"] == "block"
    refs, resps = dev_pairs
    diff = np.abs(np.array(RewardModel(out).batch_score(resps, refs))
                  - np.array(tiny_reference.batch_score(resps, refs)))
    assert diff.mean() <= 0.01 and diff.max() <= 0.05


def test_scheme_options_are_checked():
    with pytest.raises(ValueError, match="integer_schemes"):
        ExportConfig(integer_schemes=("token", "token"))
    with pytest.raises(ValueError, match="integer_schemes"):
        ExportConfig(integer_schemes=("block",))
    with pytest.raises(ValueError, match="integer_schemes"):
        ExportConfig(integer_schemes="token")
    with pytest.raises(ValueError, match="weight_only"):
        ExportConfig(weight_only="token")
    assert ExportConfig(integer_schemes=[]).integer_schemes == ()


def test_auto_weight_only_moves_leftovers_to_block_only_for_the_vnni_target():
    assert ExportConfig(activation_bits=8).leftovers_to_block  # 8-bit codes imply the VNNI target
    assert not ExportConfig(activation_bits=7).leftovers_to_block  # portable: dequant is fp32 speed on AVX2
    assert not ExportConfig(activation_bits=8, weight_only="dequant").leftovers_to_block
    assert ExportConfig.avx512_vnni().leftovers_to_block and not ExportConfig.avx2().leftovers_to_block
    with pytest.raises(ValueError, match="resolve_target"):
        _ = ExportConfig().leftovers_to_block  # "auto" is decided when the export runs
    assert ExportConfig().search_weight_only == "dequant"
    assert ExportConfig(weight_only="block").search_weight_only == "block"


def test_activation_chain_and_bits_are_checked():
    with pytest.raises(ValueError, match="activation_chain must be one of"):
        ExportConfig(activation_chain="fast")
    with pytest.raises(ValueError, match="activation_bits must be one of"):
        ExportConfig(activation_bits=6)
    with pytest.raises(ValueError, match="activation_bits must be one of"):
        ExportConfig(activation_bits="8")


def test_auto_target_follows_the_exporting_cpu_when_the_export_runs(monkeypatch):
    from rewardrt.export.config import resolve_target
    from rewardrt.runtime import cpu

    assert host_target({"int8_dot_product": "VNNI"}) == "avx512-vnni"
    assert host_target({"int8_dot_product": "AVX2 (no VNNI)"}) == "avx2"
    assert host_target({"int8_dot_product": "none"}) == "avx2"
    assert host_target({"int8_dot_product": "not x86 (no VPMADDUBSW saturation)"}) == "avx512-vnni"

    def no_probe():
        raise AssertionError("building a config must not probe the CPU")

    monkeypatch.setattr(cpu, "cpu_features", no_probe)
    cfg = ExportConfig()
    assert cfg.target == "auto" and cfg.activation_bits is None and cfg.bits is None
    # explicit bits imply the target: no probe either
    assert resolve_target(ExportConfig(activation_bits=8)).target == "avx512-vnni"
    assert (resolve_target(ExportConfig(activation_bits=7)).target, ExportConfig(activation_bits=7).bits) == ("avx2", 7)
    monkeypatch.setattr(cpu, "cpu_features", lambda: {"int8_dot_product": "AVX2 (no VNNI)"})
    assert (resolve_target(cfg).target, resolve_target(cfg).activation_bits) == ("avx2", 7)
    monkeypatch.setattr(cpu, "cpu_features", lambda: {"int8_dot_product": "VNNI"})
    assert (resolve_target(cfg).target, resolve_target(cfg).activation_bits) == ("avx512-vnni", 8)
    assert resolve_target(ExportConfig.avx2()).activation_bits == 7  # a named target is kept


def test_target_presets_and_disagreeing_bits():
    assert (ExportConfig.avx512_vnni().target, ExportConfig.avx512_vnni().bits) == ("avx512-vnni", 8)
    assert (ExportConfig.avx2().target, ExportConfig.avx2().bits) == ("avx2", 7)
    assert ExportConfig.avx512_vnni(activation_bits=7).bits == 7  # exact on VNNI too
    with pytest.raises(ValueError, match="activation_bits 8 does not agree with target avx2"):
        ExportConfig.avx2(activation_bits=8)
    with pytest.raises(ValueError, match="target must be one of"):
        ExportConfig(target="avx512")


def test_cli_target_flag_and_one_line_conflict_error(tiny_checkpoint, tmp_path, capsys):
    from rewardrt.cli import main

    with pytest.raises(SystemExit):
        main(["export", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--target {avx512-vnni,avx2,auto}" in help_text and "VPMADDUBSW" in help_text
    code = main(["export", str(tiny_checkpoint), "-o", str(tmp_path / "x.onnx"), "--target", "avx2",
                 "--activation-bits", "8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "--activation-bits 8 does not agree with --target avx2" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_gate_fallbacks_cut_the_most_sensitive_integer_matmuls_first():
    from rewardrt.export.search import gate_fallbacks

    plan = {f"m{i}": "token" for i in range(6)} | {"d0": "dequant", "d1": "dequant"}
    sens = {f"m{i}": float(5 - i) for i in range(6)}   # m5 least sensitive, m0 most
    ladder = gate_fallbacks(plan, sens, retries=3, start_scheme="dequant", weight_only="dequant")
    assert [sorted(s for s, x in p.items() if x == "token") for p in ladder] == [
        ["m2", "m3", "m4", "m5"], ["m4", "m5"], []]
    # more steps than MatMuls: no plan twice
    short = gate_fallbacks({"a": "token", "b": "token"}, {"a": 1.0, "b": 2.0}, 4, "dequant", "dequant")
    assert [sorted(s for s, x in p.items() if x == "token") for p in short] == [["a"], []]
    assert all(sum(x == "dequant" for x in p.values()) == 8 - sum(x == "token" for x in p.values())
               for p in ladder)
    # every MatMul on the integer GEMM: they go back to where the search started
    all_token = {"a": "token", "b": "token"}
    assert gate_fallbacks(all_token, {"a": 0.1, "b": 0.2}, 1, "dequant", "dequant") == [
        {"a": "dequant", "b": "dequant"}]
    # an fp32 start: to the int8-weight scheme if the plan uses it, else to fp32
    fp32_start = {"a": "token", "b": "token", "c": "fp32"}
    assert gate_fallbacks(fp32_start, {"a": 0.1, "b": 0.2}, 1, "fp32", "dequant") == [
        {"a": "fp32", "b": "fp32", "c": "fp32"}]
    assert gate_fallbacks({**fp32_start, "d": "block"}, {"a": 0.1, "b": 0.2}, 2, "fp32", "block") == [
        {"a": "token", "b": "block", "c": "fp32", "d": "block"},
        {"a": "block", "b": "block", "c": "fp32", "d": "block"}]
    # block MatMuls the search moved from dequant (weight_only auto) go back there in one last plan:
    # MatMulNBits quantizes its activations too (the v6 default's VNNI export failed its gate without it)
    moved = {"a": "token", "b": "fp32", "c": "block"}
    assert gate_fallbacks(moved, {"a": 0.1}, 1, "fp32", "dequant") == [
        {"a": "fp32", "b": "fp32", "c": "block"}, {"a": "fp32", "b": "fp32", "c": "dequant"}]
    assert ExportConfig().gate_retries == 4
    assert gate_fallbacks(plan, sens, 0, "dequant", "dequant") == []
    assert gate_fallbacks({"d0": "dequant"}, {}, 3, "dequant", "dequant") == []
    with pytest.raises(ValueError, match="gate_retries"):
        ExportConfig(gate_retries=-1)


def test_held_out_gate_rejection_retries_with_fewer_integer_matmuls(tiny_checkpoint, tmp_path):
    """A plan that fits the calibration pairs but fails the held-out gate is not the end of the
    export: the next plan of the ladder is verified and written, and both are on record."""
    seen = []

    class RejectFirst(FidelityBudget):  # the gate's budget; the search's scaled copy is a plain one
        def failures(self, f):
            seen.append(f)
            return ["rejected on purpose"] if len(seen) == 1 else super().failures(f)

    loose = RejectFirst(max_mean_abs=1.0, max_abs=1.0, min_spearman=-1.0, min_agreement=0.0)
    out = tmp_path / "retry.onnx"
    report = export(tiny_checkpoint, out, ExportConfig(
        precision="int8", validation_size=50, calibration_size=16,
        sensitivity_size=8, budget=loose))
    n = 6 * 2  # per layer: Q, K, V, attention output, FFN in, FFN out; 2 layers
    assert len(seen) == 2 and report.passed
    assert report.rejected == [{"plan": {"token": n}, "failures": ["rejected on purpose"]}]
    assert report.plan == {"token": n * 3 // 4, "dequant": n - n * 3 // 4}  # the first step of four
    _check_plan_in_graph(out, report)
    spec = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}[KEY_SPEC])
    assert spec["quantization"]["gate_rejected"] == report.rejected
    assert spec["quantization"]["plan_counts"] == report.plan
    assert "rejected by the held-out gate first: token=12" in report.describe()
    assert report.activation_bits == default_bits(host_target()) and report.target == host_target()
    assert spec["quantization"]["target"] == host_target()
    assert f"activation codes: {report.activation_bits}-bit" in report.describe()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["retry.onnx"]


def test_a_start_plan_that_fits_skips_the_search(tiny_checkpoint, tiny_int8, tmp_path):
    """--start-plan ARTIFACT: the plan it records is tried first and kept when it fits the search
    target and the held-out gate; a plan naming other MatMuls is ignored (full search)."""
    from rewardrt.runtime import RewardModel

    first = RewardModel(tiny_int8[0]).spec.quantization
    out = tmp_path / "again.int8.onnx"
    report = export(tiny_checkpoint, out, ExportConfig(start_from=str(tiny_int8[0]), validation_size=300,
                                                      calibration_size=64, activation_bits=7))
    q = RewardModel(out).spec.quantization
    assert report.passed and q.search == "start plan fits" and q.plan == first.plan
    assert q.sensitivity_mean_abs is None and "sensitivity_mean_abs" not in onnx_spec(out)["quantization"]
    assert "plan search" in report.stage_seconds
    other = export(tiny_checkpoint, tmp_path / "other.int8.onnx", ExportConfig(
        start_plan={"not-a-matmul": "token"}, validation_size=100, calibration_size=32, activation_bits=7))
    assert other.passed and RewardModel(tmp_path / "other.int8.onnx").spec.quantization.sensitivity_mean_abs
    with pytest.raises(FileNotFoundError, match="start plan artifact"):
        export(tiny_checkpoint, tmp_path / "x.onnx", ExportConfig(start_from=str(tmp_path / "missing.onnx")))


def test_a_start_plan_the_gate_rejects_leads_to_a_full_search(tiny_checkpoint, tiny_int8, tmp_path):
    """The start plan fits the calibration pairs but the held-out gate rejects it: the export then
    searches the fp32 graph afresh (every MatMul gets a scheme again), never the rejected one."""
    seen = []

    class RejectFirst(FidelityBudget):
        def failures(self, f):
            seen.append(f)
            return ["rejected on purpose"] if len(seen) == 1 else super().failures(f)

    loose = RejectFirst(max_mean_abs=1.0, max_abs=1.0, min_spearman=-1.0, min_agreement=0.0)
    out = tmp_path / "searched.onnx"
    report = export(tiny_checkpoint, out, ExportConfig(start_from=str(tiny_int8[0]), validation_size=50,
                                                      calibration_size=16, sensitivity_size=8,
                                                      activation_bits=7, budget=loose))
    n = 6 * 2
    q = onnx_spec(out)["quantization"]
    assert report.passed and len(seen) == 2 and report.rejected[0]["failures"] == ["rejected on purpose"]
    assert sum(report.plan.values()) == n and len(q["plan"]) == n, report.plan
    assert "sensitivity_mean_abs" in q and q.get("search") != "start plan fits"
    _check_plan_in_graph(out, report)


def onnx_spec(path):
    return json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}[KEY_SPEC])


def test_a_start_plan_is_adapted_to_what_the_export_allows():
    from rewardrt.export.search import adapted_plan

    plan = {"a": "token", "b": "block", "c": "token2", "d": "fp32", "e": "dequant"}
    portable = ExportConfig(activation_bits=7)  # weight_only auto: block only with 8-bit codes
    assert adapted_plan(plan, portable) == {"a": "token", "b": "dequant", "c": "dequant", "d": "fp32", "e": "dequant"}
    vnni = ExportConfig(activation_bits=8, integer_schemes=("token", "token2"))
    assert adapted_plan(plan, vnni) == plan
    assert adapted_plan(plan, ExportConfig(activation_bits=7, integer_schemes=()))["a"] == "dequant"
    assert adapted_plan(None, portable) is None
