"""The per-MatMul INT8 schemes of export/quantize/ on small hand-built graphs (no export run)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rewardrt.export.quantize import (
    ActivationStats, QuantPlan, activation_range, apply_plan, dequant_weights, float16_exact_weights,
    float16_tables, int8_tables, quantize_embedding_tables, residual_steps,
)
from rewardrt.runtime.session import make_session, session_options

K, N = 64, 48


def _graph(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """x [B, T, K] read by one MatMul per weight (like Q, K and V sharing their input)."""
    nodes = [helper.make_node("MatMul", ["x", f"W{name}"], [f"y{name}"], name=name) for name in weights]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", K])],
        [helper.make_tensor_value_info(f"y{name}", TensorProto.FLOAT, ["B", "T", N]) for name in weights],
        [numpy_helper.from_array(w, f"W{name}") for name, w in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    return make_session(model.SerializeToString(), threads=1).run(None, {"x": x})


def _activation(rng, rows=3, tokens=7) -> np.ndarray:
    x = rng.standard_normal((rows, tokens, K)).astype(np.float32)
    x[..., 3] *= 30.0  # one outlier channel sets every row's scale, as in BERT's hidden states
    return x


@pytest.mark.parametrize("bits", [7, 8])
def test_token2_computes_the_two_level_integer_product(bits):
    """token2 = x's codes · W's int8 codes, plus the residual's codes on a 2·qmax finer grid, times
    the row and column scales: the graph must compute exactly that arithmetic. (8-bit codes only
    on CPUs with VNNI: elsewhere the kernels saturate, which is why 7 bits are the default.)"""
    from rewardrt.runtime.cpu import integer_gemm_may_saturate

    if bits == 8 and integer_gemm_may_saturate():
        pytest.skip("8-bit activation codes saturate in this CPU's integer kernels (no VNNI)")
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((K, N)) * 0.1).astype(np.float32)
    x = _activation(rng)
    (y,) = _run(apply_plan(_graph({"a": w}), QuantPlan({"a": "token2"}, activation_bits=bits)), x)

    qmax, _ = activation_range(bits)
    steps = residual_steps(bits)
    x2 = x.reshape(-1, K).astype(np.float64)
    s1 = np.abs(x2).max(axis=1, keepdims=True) / qmax
    q1 = np.clip(np.rint(x2 / s1), -qmax, qmax)
    q2 = np.rint((x2 - q1 * s1) / (s1 / steps))
    assert np.abs(q2).max() <= qmax  # the residual fits its grid
    ws = np.abs(w).max(axis=0) / 127.0
    wq = np.clip(np.rint(w / ws), -127, 127)
    expect = (s1 * ((q1 @ wq) + (q2 @ wq) / steps) * ws).reshape(y.shape)
    assert np.abs(y - expect).max() <= 1e-4 * np.abs(expect).max()


def test_token2_error_is_far_below_token_and_rows_are_independent():
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((K, N)) * 0.1).astype(np.float32)
    x = _activation(rng)
    exact = x @ w
    errors = {}
    for scheme in ("token", "token2"):
        model = apply_plan(_graph({"a": w}), QuantPlan({"a": scheme}))
        (y,) = _run(model, x)
        errors[scheme] = np.abs(y - exact).mean()
        (one,) = _run(model, x[1:2])
        assert np.array_equal(one, y[1:2]), scheme  # a row's result ignores its batch neighbours
    assert errors["token2"] < errors["token"] / 3, errors


def test_token2_shares_one_quantization_per_activation_and_skips_smoothing():
    rng = np.random.default_rng(2)
    ws = {n: (rng.standard_normal((K, N)) * 0.1).astype(np.float32) for n in ("q", "k", "v")}
    x = _activation(rng)
    absmax = {n: np.abs(x).max(axis=(0, 1)) for n in ws}
    model = apply_plan(_graph(ws), QuantPlan({"q": "token2", "k": "token2", "v": "token"}, smooth_alpha=0.5),
                       ActivationStats(absmax))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulIntegerToFloat") == 2 + 2 + 1
    # token2's codes + residual + zero points, token's codes + zero points
    assert ops.count("QuantizeLinear") == 3 + 2
    smooth = [n for n in model.graph.node if n.name.endswith(".Smooth")]
    assert len(smooth) == 1 and smooth[0].name.startswith("v.")  # only the token group is smoothed


def test_gptq_cache_follows_the_smoothed_weights_not_the_node_name():
    """Smoothing is fitted to the MatMuls that share an activation, so Q alone and Q with K and V get
    different integer weights; reusing the codes of an earlier plan by name would be wrong."""
    rng = np.random.default_rng(3)
    ws = {n: (rng.standard_normal((K, N)) * 0.1 * (1 + 3 * (n == "v"))).astype(np.float32) for n in ("q", "k", "v")}
    x = _activation(rng)
    absmax = {n: np.abs(x).max(axis=(0, 1)) for n in ws}
    flat = x.reshape(-1, K).astype(np.float64)
    hessians = {n: flat.T @ flat for n in ws}
    all_token = {"q": "token", "k": "token", "v": "token"}
    stats = ActivationStats(absmax, hessians)
    cache: dict = {}
    apply_plan(_graph(ws), QuantPlan({"q": "token"}, smooth_alpha=0.5), stats, cache)
    shared = _run(apply_plan(_graph(ws), QuantPlan(all_token, smooth_alpha=0.5), stats, cache), x)
    fresh = _run(apply_plan(_graph(ws), QuantPlan(all_token, smooth_alpha=0.5), stats, {}), x)
    for a, b in zip(shared, fresh):
        assert np.array_equal(a, b)


def test_unknown_scheme_is_refused():
    with pytest.raises(ValueError, match="unknown schemes"):
        QuantPlan({"a": "token3"})


@pytest.mark.parametrize("k, block, blocks", [(K, 32, 2), (K, 48, 1)])  # 48 does not divide 64: per channel
def test_dequant_stores_int8_blocks_and_runs_fp32_on_the_dequantized_weights(tmp_path, k, block, blocks):
    rng = np.random.default_rng(4)
    w = (rng.standard_normal((k, N)) * 0.1).astype(np.float32)
    w[5, 7] = 3.0  # an outlier weight coarsens only its own block's scale
    model = apply_plan(_graph({"a": w}), QuantPlan({"a": "dequant"}, block_size=block))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert not any(a.dtype == np.float32 and a.size >= k * N for a in inits.values())  # no fp32 copy stored
    codes, scale = dequant_weights(w, block)
    assert codes.dtype == np.int8 and codes.shape == (blocks, k // blocks, N) and scale.shape == (blocks, 1, N)
    assert np.abs(codes).max() <= 127
    dq = (codes.astype(np.float32) * scale).reshape(k, N)
    assert np.abs(dq - w).max() <= scale.max() / 2 + 1e-7  # round to nearest
    x = _activation(rng)
    (y,) = _run(model, x)
    assert np.abs(y - x @ dq).max() <= 1e-5 * np.abs(x @ dq).max()  # fp32 compute, activations untouched
    (plain,) = _run(_graph({"a": dq}), x)
    assert np.array_equal(y, plain)  # the folded weights are code x scale bit for bit (as Cast-Mul-Reshape was)
    assert [n.op_type for n in model.graph.node] == ["DequantizeLinear", "MatMul"]
    # onnxruntime folds the constant blocked DequantizeLinear into one fp32 weight when the session
    # loads (the session turns QDQ rewrites off: else DequantizeLinear + MatMul became a MatMulNBits)
    opts = session_options(threads=1)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    make_session(model.SerializeToString(), options=opts)
    optimized = onnx.load(opts.optimized_model_filepath)
    assert [n.op_type for n in optimized.graph.node] == ["MatMul"]
    (folded,) = [t for t in optimized.graph.initializer if t.name == optimized.graph.node[0].input[1]]
    assert folded.data_type == TensorProto.FLOAT and list(folded.dims) == [k, N]


def _gelu_graph(w: np.ndarray) -> onnx.ModelProto:
    """x [B, T, K] -> BiasGelu -> one MatMul: the FFN's second MatMul reads a GELU output."""
    nodes = [helper.make_node("BiasGelu", ["x", "b"], ["g"], domain="com.microsoft", name="gelu"),
             helper.make_node("MatMul", ["g", "W"], ["y"], name="down")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", N])],
        [numpy_helper.from_array(np.zeros(K, np.float32), "b"), numpy_helper.from_array(w, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.microsoft", 1)])


def _gelu(x: np.ndarray) -> np.ndarray:
    from math import erf, sqrt

    return x * 0.5 * (1.0 + np.vectorize(lambda v: erf(v / sqrt(2.0)))(x))


@pytest.mark.parametrize("bits", [7, 8])
def test_gelu_output_is_quantized_one_sided_with_the_shift_taken_back(bits):
    """A token MatMul reading a GELU output quantizes x + GELU_FLOOR on codes 0..2·qmax+1 (zero
    point 0) and subtracts GELU_FLOOR · Ŵ: the graph must compute exactly that arithmetic."""
    from rewardrt.export.quantize import GELU_FLOOR, one_sided_range
    from rewardrt.runtime.cpu import integer_gemm_may_saturate

    if bits == 8 and integer_gemm_may_saturate():
        pytest.skip("8-bit activation codes saturate in this CPU's integer kernels (no VNNI)")
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((K, N)) * 0.1).astype(np.float32)
    x = (rng.standard_normal((3, 7, K)) * 2).astype(np.float32)
    model = apply_plan(_gelu_graph(w), QuantPlan({"down": "token"}, activation_bits=bits))
    assert "Abs" not in {n.op_type for n in model.graph.node}  # the shifted row is >= 0
    (y,) = _run(model, x)

    g = _gelu(x.reshape(-1, K).astype(np.float64)) + GELU_FLOOR
    assert g.min() > 0
    top = one_sided_range(bits)
    s = g.max(axis=1, keepdims=True) / top
    q = np.rint(g / s)
    assert q.min() >= 0 and q.max() == top
    ws = np.abs(w).max(axis=0) / 127.0
    wq = np.clip(np.rint(w / ws), -127, 127)
    expect = (s * (q @ wq) * ws - GELU_FLOOR * (wq * ws).sum(axis=0)).reshape(y.shape)
    assert np.abs(y - expect).max() <= 1e-4 * np.abs(expect).max()


def test_one_sided_gelu_codes_halve_the_error_and_keep_rows_independent():
    rng = np.random.default_rng(6)
    w = (rng.standard_normal((K, N)) * 0.1).astype(np.float32)
    x = (rng.standard_normal((4, 9, K)) * 2).astype(np.float32)
    x[..., 5] *= 8.0  # an outlier channel sets each row's scale
    exact = _gelu(x.astype(np.float64)) @ w
    errors = {}
    for one_sided in (False, True):
        model = apply_plan(_gelu_graph(w), QuantPlan({"down": "token"}, one_sided_gelu=one_sided))
        (y,) = _run(model, x)
        errors[one_sided] = np.abs(y - exact).mean()
        (one,) = _run(model, x[2:3])
        assert np.array_equal(one, y[2:3]), one_sided  # a row's result ignores its batch neighbours
    assert errors[True] < errors[False] / 1.6, errors


def test_one_sided_codes_only_follow_gelu_outputs():
    """An activation that may be negative anywhere (Q/K/V's layer-norm output) stays symmetric."""
    w = np.ones((K, N), np.float32)
    plain = apply_plan(_graph({"a": w}), QuantPlan({"a": "token"}))
    assert "Abs" in {n.op_type for n in plain.graph.node}
    assert not any(n.name.endswith(".Shift") or n.name.endswith(".Unshift") for n in plain.graph.node)


def _gelu_bias_graph(w: np.ndarray, bias: np.ndarray, read_sum: bool = False) -> onnx.ModelProto:
    """BiasGelu -> MatMul -> + residual -> + bias, like the FFN's end before the layer norm.
    ``read_sum``: the residual sum is also a graph output, so the path is read elsewhere."""
    nodes = [helper.make_node("BiasGelu", ["x", "b"], ["g"], domain="com.microsoft", name="gelu"),
             helper.make_node("MatMul", ["g", "W"], ["y"], name="down"),
             helper.make_node("Add", ["y", "skip"], ["s"], name="residual"),
             helper.make_node("Add", ["s", "bias"], ["out"], name="bias_add")]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", "T", N])]
    if read_sum:
        outputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, ["B", "T", N]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", K]),
                     helper.make_tensor_value_info("skip", TensorProto.FLOAT, ["B", "T", N])],
        outputs, [numpy_helper.from_array(np.zeros(K, np.float32), "b"), numpy_helper.from_array(w, "W"),
                  numpy_helper.from_array(bias, "bias")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("read_sum", [False, True])
def test_unshift_folds_into_the_bias_downstream_only_when_nothing_else_reads_the_path(read_sum):
    rng = np.random.default_rng(8)
    w = (rng.standard_normal((K, N)) * 0.1).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    feed = {"x": (rng.standard_normal((2, 5, K)) * 2).astype(np.float32),
            "skip": rng.standard_normal((2, 5, N)).astype(np.float32)}
    model = apply_plan(_gelu_bias_graph(w, bias, read_sum), QuantPlan({"down": "token"}))
    names = [n.name for n in model.graph.node]
    assert any(n.endswith(".Unshift") for n in names) == read_sum
    (bias_now,) = [t for t in model.graph.initializer if t.name == "bias"]
    assert np.array_equal(numpy_helper.to_array(bias_now), bias) == read_sum
    unfolded = apply_plan(_gelu_bias_graph(w, bias, read_sum=True), QuantPlan({"down": "token"}))
    session = make_session(model.SerializeToString(), threads=1)
    reference = make_session(unfolded.SerializeToString(), threads=1)
    out, ref = session.run(["out"], feed)[0], reference.run(["out"], feed)[0]
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()  # the same sum, up to float rounding


def test_integer_plans_raise_the_opset_and_move_reduction_axes_to_inputs():
    """The qlinear chain's blocked QuantizeLinear needs opset 21: a traced opset-17 graph is raised,
    its ReduceMean's axes attribute becomes an input, and the outputs stay the same."""
    from rewardrt.export.quantize import QLINEAR_OPSET

    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[-1], keepdims=1, name="mean"),
             helper.make_node("Sub", ["x", "m"], ["c"], name="center"),
             helper.make_node("MatMul", ["c", "W"], ["y"], name="mm")]
    w = np.random.default_rng(9).standard_normal((K, N)).astype(np.float32)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", N])],
                              [numpy_helper.from_array(w, "W")])
    traced = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    traced.ir_version = 8
    model = apply_plan(traced, QuantPlan({"mm": "token"}))
    onnx.checker.check_model(model)
    assert [o.version for o in model.opset_import if o.domain == ""] == [QLINEAR_OPSET]
    (mean,) = [n for n in model.graph.node if n.name == "mean"]
    assert len(mean.input) == 2 and "axes" not in {a.name for a in mean.attribute}
    x = _activation(np.random.default_rng(10))
    (y,) = _run(model, x)
    # the elementwise chain makes the same codes without raising the opset
    same_codes = apply_plan(traced, QuantPlan({"mm": "token"}, chain="elementwise"))
    assert [o.version for o in same_codes.opset_import if o.domain == ""] == [17]
    (expected,) = _run(same_codes, x)
    assert np.abs(y - expected).max() <= 1e-5 * np.abs(expected).max()
    fp32 = apply_plan(traced, QuantPlan({"mm": "fp32"}))  # no integer MatMul: the graph keeps its opset
    assert [o.version for o in fp32.opset_import if o.domain == ""] == [17]


def test_raising_the_opset_refuses_ops_it_does_not_know_to_keep_their_meaning():
    from rewardrt.export.quantize import raise_opset

    node = helper.make_node("Pad", ["x", "pads"], ["y"], name="pad")  # Pad changed in opsets 18-21
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
                              [numpy_helper.from_array(np.array([1, 1], np.int64), "pads")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ValueError, match="Pad changed"):
        raise_opset(model, 21)
    assert model.opset_import[0].version == 17


@pytest.mark.parametrize("k", [K, 384])
def test_both_activation_chains_give_identical_codes(k):
    """The one-op QuantizeLinear chain reproduces the elementwise chain's uint8 codes bit for bit
    (round half to even, an all-zero row, a row of tiny values), hence identical MatMul outputs."""
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((k, N)) / np.sqrt(k)).astype(np.float32)
    x = rng.standard_normal((2, 9, k)).astype(np.float32)
    x[..., rng.choice(k, 4, replace=False)] *= 20.0
    x[0, 0, :] = np.resize(np.array([127.0, -2.5, 3.5, -0.5, 0.5, 126.5, -127.0], np.float32), k)  # .5 ties
    x[0, 1, :] = 0.0
    x[0, 2, :] *= 1e-30
    outs = {}
    for chain in ("elementwise", "qlinear"):
        nodes = [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", k])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", N])],
                                  [numpy_helper.from_array(w, "W")])
        model = apply_plan(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                           QuantPlan({"mm": "token"}, chain=chain))
        model.graph.output.append(helper.make_tensor_value_info("mm.act.xq", TensorProto.UINT8, None))
        outs[chain] = _run(model, x)
    (y_e, codes_e), (y_q, codes_q) = outs["elementwise"], outs["qlinear"]
    assert np.array_equal(codes_e, codes_q), int(np.sum(codes_e != codes_q))
    assert np.array_equal(y_e, y_q)


def _two_stage_graph(rng) -> onnx.ModelProto:
    """x -> Q, K, V (one activation read by three MatMuls) -> their sum -> one more MatMul: two
    quantized activations, the first shared by three integer GEMMs."""
    w = {n: (rng.standard_normal((K, K)) * 0.1).astype(np.float32) for n in ("q", "k", "v", "o")}
    nodes = [helper.make_node("MatMul", ["x", f"W{n}"], [f"y{n}"], name=n) for n in ("q", "k", "v")]
    nodes += [helper.make_node("Add", ["yq", "yk"], ["s1"], name="add1"),
              helper.make_node("Add", ["s1", "yv"], ["s"], name="add2"),
              helper.make_node("MatMul", ["s", "Wo"], ["y"], name="o")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", K])],
        [numpy_helper.from_array(a, f"W{n}") for n, a in w.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("outliers", [0, 2])
def test_compact_fuses_sibling_gemms_and_shares_zero_points_bit_for_bit(outliers):
    """Q, K and V on the integer GEMM become one MatMulIntegerToFloat on their weights side by side
    and a Split (outlier channels' fp32 products likewise one MatMul); the zero points are made
    once for the graph. Every output is the same int32 sum times the same scales: == before."""
    from collections import Counter

    from rewardrt.export.quantize.compact import compact

    rng = np.random.default_rng(4)
    model = _two_stage_graph(rng)
    x = _activation(rng)
    absmax = np.abs(x).reshape(-1, K).max(axis=0)
    stats = ActivationStats(absmax={n: absmax for n in ("q", "k", "v", "o")})
    plan = QuantPlan({n: "token" for n in ("q", "k", "v", "o")}, smooth_alpha=0.5, outlier_channels=outliers)
    loose = apply_plan(model, plan, stats)
    tight = onnx.ModelProto.FromString(loose.SerializeToString())
    assert compact(tight) == {"gemms_fused": 2, "zero_points_shared": 1, "scale_floors_dropped": 2}
    before = Counter(n.op_type for n in loose.graph.node)
    after = Counter(n.op_type for n in tight.graph.node)
    assert (before["MatMulIntegerToFloat"], after["MatMulIntegerToFloat"]) == (4, 2)
    assert after["Split"] == 1 and after["QuantizeLinear"] == before["QuantizeLinear"] - 1 == 3
    assert after["MatMul"] == (1 + 1 if outliers else 0)  # one fused outlier product per group
    assert after["Max"] == before["Max"] - 2 == 0  # the row scales' 1e-12 floors
    assert len(tight.graph.node) == len(loose.graph.node) - (10 if outliers else 6)
    onnx.checker.check_model(tight)
    (y0,) = _run(loose, x)
    (y1,) = _run(tight, x)
    assert np.array_equal(y0, y1)
    (one,) = _run(tight, x[2:3])
    assert np.array_equal(one, y1[2:3])  # still row-wise: a row ignores its batch neighbours
    zero = x.copy()
    zero[1, 2] = 0.0  # an all-zero row: its scale is 0 now that the floor is gone, its output still 0
    (z0,) = _run(loose, zero)
    (z1,) = _run(tight, zero)
    assert np.array_equal(z0, z1) and np.isfinite(z1).all()


def test_compact_leaves_a_graph_without_siblings_alone():
    from rewardrt.export.quantize.compact import compact

    rng = np.random.default_rng(5)
    w = (rng.standard_normal((K, N)) * 0.1).astype(np.float32)
    model = apply_plan(_graph({"a": w}), QuantPlan({"a": "token"}))
    nodes = [n.SerializeToString() for n in model.graph.node]
    assert compact(model)["gemms_fused"] == compact(model)["zero_points_shared"] == 0
    assert [n.op_type for n in model.graph.node] == [n.op_type for n in map(onnx.NodeProto.FromString, nodes)
                                                      if n.op_type != "Max"]


def test_the_packaged_artifact_is_written_in_the_current_compact_form():
    """The embedded default is the graph a fresh export writes: compacting it again finds nothing to
    fuse or drop (sibling integer GEMMs already fused, one zero-point QuantizeLinear, no scale
    floors), and its dequant weights are one DequantizeLinear each."""
    from collections import Counter

    from rewardrt.export.quantize.compact import compact
    from rewardrt.models import default_model_path

    model = onnx.load(str(default_model_path()))
    before = Counter(n.op_type for n in model.graph.node)
    done = compact(model)
    assert not any(done.values()), done
    assert Counter(n.op_type for n in model.graph.node) == before
    zero_points = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.name.endswith(".ZeroPoints")]
    assert len(zero_points) <= 1
    plan = json.loads({p.key: p.value for p in model.metadata_props}["rewardrt.spec"])["quantization"]["plan"]
    assert before["DequantizeLinear"] == sum(1 for s in plan.values() if s == "dequant")


def _embedding_graph(table: np.ndarray) -> onnx.ModelProto:
    """ids [B, T] -> Gather(table, ids), the word-embedding lookup."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0, name="emb")], "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "T"])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["B", "T", table.shape[1]])],
        [numpy_helper.from_array(table, "table")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_embedding_tables_are_stored_as_float16_by_default_or_as_int8_rows():
    rng = np.random.default_rng(5)
    table = (rng.standard_normal((1200, 32)) * 0.05).astype(np.float32)
    table[7, 3] = 0.9  # one large entry: int8 rows lose the rest of that row's precision
    ids = rng.integers(0, 1200, (2, 9)).astype(np.int64)
    ids[0, 0] = 7
    rows = {}
    for precision in ("float16", "int8"):
        model = _embedding_graph(table)
        assert quantize_embedding_tables(model, precision) == ["table"]
        assert "table" not in {t.name for t in model.graph.initializer}  # only the stored form is kept
        assert float16_tables(model) == (["table"] if precision == "float16" else [])
        assert int8_tables(model) == (["table"] if precision == "int8" else [])
        rows[precision] = make_session(model.SerializeToString(), threads=1).run(None, {"ids": ids})[0]
    want = table[ids]
    np.testing.assert_array_equal(rows["float16"], want.astype(np.float16).astype(np.float32))
    scale = np.abs(table).max(axis=1, keepdims=True) / 127.0
    np.testing.assert_allclose(rows["int8"], (np.rint(table / scale) * scale)[ids], rtol=0, atol=1e-7)
    err16, err8 = np.abs(rows["float16"] - want).max(), np.abs(rows["int8"][0, 0] - want[0, 0]).max()
    assert err16 < 1e-4 < err8  # the outlier row: int8 steps of 0.9/127 against float16's 2^-11 relative
    small = _embedding_graph(table[:999])
    assert quantize_embedding_tables(small) == [] and small.graph.node[0].op_type == "Gather"  # small tables stay
    with pytest.raises(ValueError, match="embedding table precision"):
        quantize_embedding_tables(_embedding_graph(table), "bf16")
    huge = table.copy()
    huge[3, 3] = 1e5
    with pytest.raises(ValueError, match=r"beyond float16's range.*--embedding-table int8"):
        quantize_embedding_tables(_embedding_graph(huge))
    assert quantize_embedding_tables(_embedding_graph(huge), "int8") == ["table"]
    with pytest.raises(ValueError, match="embedding_table"):
        QuantPlan({}, embedding_table="int4")


def test_weights_float16_holds_exactly_are_stored_as_float16_and_score_bit_for_bit():
    """A recipe's release_precision float16 makes trained weights float16-exact: stored as float16 +
    Cast they take half the bytes, and onnxruntime folds the Cast at load, so every output is the
    same float32 bit for bit. A weight float16 does not hold exactly stays fp32."""
    rng = np.random.default_rng(11)
    exact = (rng.standard_normal((K, N)) * 0.05).astype(np.float16).astype(np.float32)
    inexact = exact.copy()
    inexact[5, 7] += 1e-6  # one entry off the float16 grid
    model = _graph({"q": exact, "v": inexact})
    x = _activation(rng)
    before = _run(model, x)
    size = model.ByteSize()
    assert float16_exact_weights(model, min_elements=1024) == ["Wq"]
    stored = {t.name: t.data_type for t in model.graph.initializer}
    assert stored == {"Wq.f16w": TensorProto.FLOAT16, "Wv": TensorProto.FLOAT}
    assert [n.op_type for n in model.graph.node] == ["Cast", "MatMul", "MatMul"]
    assert model.ByteSize() < size - K * N * 2 + 200
    after = _run(model, x)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert float16_exact_weights(model, min_elements=1024) == []  # nothing left to store
    assert float16_exact_weights(_graph({"q": exact})) == []  # 3,072 entries: under the default 4,096
