"""``rewardrt bench``: the quick run end to end on a tiny checkpoint, its inputs, its cache and its
argument errors. No timing is asserted anywhere: only that every figure exists and is well formed."""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter

import pytest

from rewardrt.bench.config import QUICK, BenchConfig
from rewardrt.bench.engines import ENGINES, HOST_INT8, OPTIONAL, REFERENCE
from rewardrt.cli import main as cli_main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results"
    code = cli_main(["bench", "--quick", "--checkpoint", str(tiny_checkpoint), "--out", str(out),
                     "--threads", "1,2", "--rounds", "1", "--no-progress"])
    assert code == 0
    return out


def test_quick_bench_writes_json_md_and_plots(quick_run):
    res = json.loads((quick_run / "results.json").read_text(encoding="utf-8"))
    # optional peers (OpenVINO, CTranslate2) are measured where their wheels work, else listed with the reason
    assert set(res["skipped_engines"]) <= set(OPTIONAL)
    assert all(isinstance(why, str) and why for why in res["skipped_engines"].values())
    names = [e.name for e in ENGINES if e.name not in res["skipped_engines"]]
    assert list(res["engines"]) == names
    assert res["mode"] == "quick" and res["conditions"]["threads"] == [1, 2]
    assert res["conditions"]["cpu"]["flags"] and res["conditions"]["versions"]["onnxruntime"]
    expected = {f"latency_speedup_{n}tok_{t}t" for n in QUICK.lengths for t in (1, 2)}
    expected |= {"latency_dev_speedup_1t", "latency_dev_speedup_2t"}
    expected |= {f"throughput_speedup_b{b}_{t}t" for b in QUICK.batches for t in (1, 2)}
    expected |= {"rl_speedup_1t", "rl_speedup_2t", "cold_start_speedup", "peak_rss_fraction",
                 "installed_size_fraction", "model_file_fraction"}
    for name in names:
        ratios = res["ratios"][name]
        assert expected <= set(ratios), (name, expected - set(ratios))
        assert all(math.isfinite(v) and v > 0 for v in ratios.values()), (name, ratios)
    assert all(v == 1.0 for v in res["ratios"][REFERENCE].values())
    for row in res["latency"] + res["latency_dev"]:
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
    assert {r["n"] for r in res["latency_dev"]} == {QUICK.latency_dev_calls}
    # the torch-free engines need no torch, so they install less than the torch engines
    assert res["ratios"]["rewardrt-int8"]["installed_size_fraction"] < 1
    assert {r["engine"] for r in res["fidelity"]} == set(names) - {REFERENCE}
    fp32 = next(r for r in res["fidelity"] if r["engine"] == "rewardrt-fp32")
    assert fp32["max_abs_diff"] < 1e-4 and fp32["n"] == QUICK.fidelity_pairs
    assert {r["engine"] for r in res["swap"]} >= {REFERENCE, "rewardrt-int8"}

    md = (quick_run / "results.md").read_text(encoding="utf-8")
    summary = md.split("## Ratios to the PyTorch reference", 1)[1].split("## ", 1)[0]
    for engine in (e for e in ENGINES if e.name in names):
        line = next(line for line in summary.splitlines() if line.startswith(f"| {engine.label}"))
        assert line.count("×") >= 7 and "%" in line
        # the fidelity column says whether the engine is inside rewardrt's budget, and the label is marked if not
        assert line.rstrip(" |").endswith(("in budget", "over budget", "reference"))
        assert (" ✗ |" in line) == line.rstrip(" |").endswith("over budget")
    for engine, why in res["skipped_engines"].items():
        assert why in summary
    for png in ("latency.png", "throughput.png", "fidelity.png"):
        assert (quick_run / png).read_bytes()[:8] == PNG_MAGIC


def test_rerun_reuses_cached_artifacts(quick_run, tiny_checkpoint):
    from rewardrt.bench.artifacts import prepare

    prepared = prepare(tiny_checkpoint, quick_run, QUICK, None)
    peers = {"ct2-int8"} - set(prepared.skipped)  # CTranslate2's conversion is cached too, where it runs
    assert set(prepared.exports) == {"ort-fp32", "ort-int8", "rewardrt-fp32", "rewardrt-int8", HOST_INT8} | peers
    assert all(set(v) == {"cached"} for v in prepared.exports.values()), prepared.exports
    # the portable artifact has 7-bit codes; the one exported with this CPU's defaults follows the CPU
    from rewardrt.export.config import default_bits, host_target
    from rewardrt.runtime import RewardModel

    bits = {e: RewardModel(prepared.specs[e].model).spec.quantization.activation_bits
            for e in ("rewardrt-int8", HOST_INT8)}
    assert bits == {"rewardrt-int8": 7, HOST_INT8: default_bits(host_target())}


def test_workloads_have_exact_lengths_and_whole_groups(tiny_checkpoint):
    from rewardrt.bench.workloads import TokenCounter, build, read_dev

    counter = TokenCounter(tiny_checkpoint / "tokenizer.json")
    w = build(read_dev(), counter, QUICK)
    for n in QUICK.lengths:
        s = w.sets[w.latency_set(n)]
        assert len(s["refs"]) == QUICK.latency_calls
        assert [counter.pair(a, b) for a, b in zip(s["refs"], s["resps"])] == [n] * QUICK.latency_calls
    dev = w.sets["latency-dev"]
    assert len(dev["refs"]) == QUICK.latency_dev_calls
    assert all(20 <= counter.pair(a, b) <= 80 for a, b in zip(dev["refs"], dev["resps"]))
    (step,) = w.sets["rl"]["steps"]
    assert len(step["refs"]) == QUICK.rl_groups * 8
    assert all(k % 8 == 0 for k in Counter(step["refs"]).values())
    assert w.info["rl"]["response_tokens_max"] <= 600
    swap = w.sets["swap"]
    half = len(swap["refs"]) // 2
    assert swap["resps"][:half] == swap["refs"][:half] and swap["refs"][half:] == swap["refs"][:half]


@pytest.mark.parametrize("argv, match", [
    (["--threads", "0"], "--threads"),
    (["--threads", "one"], "--threads"),
    (["--rounds", "0"], "--rounds"),
])
def test_bad_cli_values_name_the_argument(argv, match, capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["bench", *argv])
    assert info.value.code == 2
    assert match in capsys.readouterr().err


def test_bad_paths_name_the_argument(tmp_path, capsys):
    from rewardrt.bench.suite import main

    args = argparse.Namespace(quick=True, checkpoint=str(tmp_path / "missing"), out=str(tmp_path / "o"),
                              threads="1", rounds=None, pairs=None)
    assert main(args) == 2
    assert "--checkpoint" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="--out"):
        BenchConfig.from_args(argparse.Namespace(quick=True, out=str(tmp_path / "file")))
    with pytest.raises(FileNotFoundError, match="--pairs"):
        BenchConfig.from_args(argparse.Namespace(quick=True, pairs=str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match=r"--rounds must be an integer >= 1, got '0'"):
        BenchConfig.from_args(argparse.Namespace(quick=True, rounds=0))
    with pytest.raises(ValueError, match=r"--threads must be comma-separated positive integers"):
        BenchConfig.from_args(argparse.Namespace(quick=True, threads=(1, 0)))


def test_quick_bench_profiles_the_host_int8_export_and_measures_the_int8_peak(quick_run):
    res = json.loads((quick_run / "results.json").read_text(encoding="utf-8"))
    prof = res["profile"]
    assert prof["engine"] == HOST_INT8 and set(prof["by_threads"]) == {"1", "2"}
    for p in prof["by_threads"].values():
        assert set(p["cases"]) == {"batch 1", "batch 32"}
        for name, case in p["cases"].items():
            assert case["rows"] == (1 if name == "batch 1" else 32) and case["calls"] >= 1
            shares = [o["share"] for o in case["ops"]]
            assert abs(sum(shares) - 1.0) < 1e-6 and min(shares) >= 0
            assert 0 < case["kernel_ms"] <= case["run_ms"]
            assert abs(sum(o["ms_per_call"] for o in case["ops"]) - case["kernel_ms"]) < 1e-6 * case["kernel_ms"] + 1e-9
            ops = {o["op"] for o in case["ops"]}
            assert "MatMulIntegerToFloat" in ops and case["integer_gemm"]["gops"] > 0
    peak = res["int8_peak"]
    assert {(r["op"], r["threads"]) for r in peak["rows"]} == {
        (op, t) for op in ("MatMulIntegerToFloat", "MatMulInteger") for t in (1, 2)}
    assert all(r["best_gops"] >= r["median_gops"] > 0 for r in peak["rows"])
    eff = {r["threads"]: r for r in res["int8_efficiency"]}
    assert set(eff) == {1, 2} and all(r["integer_gemm_of_peak"] > 0 for r in eff.values())

    md = (quick_run / "results.md").read_text(encoding="utf-8")
    section = md.split("## Where the time goes (rewardrt INT8)", 1)[1].split("\n## ", 1)[0]
    assert "MatMulIntegerToFloat" in section and "other op types" in section
    assert "## INT8 throughput against the machine's peak" in md


def test_readme_blocks_are_the_runs_tables(quick_run, tmp_path):
    """bench/readme.py: README.md gets the ratios table, bench/README.md every headline table and the
    plot, each between its markers and stamped with the run's commit; the rest of each file is kept."""
    from rewardrt.bench.readme import END, START
    from rewardrt.bench.readme import main as readme_main

    res = json.loads((quick_run / "results.json").read_text(encoding="utf-8"))
    md = (quick_run / "results.md").read_text(encoding="utf-8")
    front, room = tmp_path / "README.md", tmp_path / "bench" / "README.md"
    room.parent.mkdir()
    prose = f"The block between `{START}` and `{END}` is generated.\n"  # named in prose: not a marker
    for path in (front, room):
        path.write_text(f"# x\n{prose}{START}\nSTALE\n{END}\ntail\n", encoding="utf-8")
    assert readme_main([str(quick_run), "--readme", str(front), "--bench-readme", str(room)]) == 0

    ratios = next(line for line in md.split("## Ratios to the PyTorch reference", 1)[1].splitlines()
                  if line.startswith("| rewardrt INT8 |"))
    for path in (front, room):
        text = path.read_text(encoding="utf-8")
        assert "STALE" not in text and text.startswith(f"# x\n{prose}") and text.endswith("tail\n")
        assert ratios in text and res["conditions"]["git"]["commit"][:12] in text
    front_text, room_text = front.read_text(encoding="utf-8"), room.read_text(encoding="utf-8")
    assert "Fidelity against the reference" not in front_text and "### Where the time goes" not in front_text
    assert "### Where the time goes (rewardrt INT8)" in room_text and "Fidelity against the reference" in room_text
    assert "](figures/latency.png)" in room_text
    assert (room.parent / "figures" / "latency.png").read_bytes().startswith(PNG_MAGIC)


def test_readme_refuses_a_file_without_markers(quick_run, tmp_path, capsys):
    from rewardrt.bench.readme import main as readme_main

    front, room = tmp_path / "README.md", tmp_path / "ROOM.md"
    front.write_text("# no markers\n", encoding="utf-8")
    room.write_text("<!-- bench:start -->\n<!-- bench:end -->\n", encoding="utf-8")
    assert readme_main([str(quick_run), "--readme", str(front), "--bench-readme", str(room)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(front) in err and "lacks the <!-- bench:start -->" in err
    assert room.read_text(encoding="utf-8") == "<!-- bench:start -->\n<!-- bench:end -->\n"  # nothing written


def test_profile_breakdown_of_a_synthetic_trace():
    from rewardrt.bench.profile import breakdown

    def node(ts, dur, op, shapes=None):
        args = {"op_name": op}
        if shapes:
            args.update(input_type_shape=[{"uint8": shapes[0]}], output_type_shape=[{"float": shapes[1]}])
        return {"cat": "Node", "name": f"n{ts}_kernel_time", "ts": ts, "dur": dur, "args": args}

    trace = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},      # warm-up, skipped
             node(10, 50, "Add"),
             {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100},
             node(210, 30, "MatMulIntegerToFloat", ([2, 3, 4], [2, 3, 5])), node(250, 10, "Add")]
    b = breakdown(trace, skip_runs=1)
    assert b["calls"] == 1 and b["run_ms"] == 0.1 and b["kernel_ms"] == 0.04
    assert [(o["op"], round(o["share"], 3)) for o in b["ops"]] == [("MatMulIntegerToFloat", 0.75), ("Add", 0.25)]
    assert b["integer_gemm"]["gop_per_call"] == 2 * 6 * 4 * 5 / 1e9
    with pytest.raises(ValueError, match="nothing left"):
        breakdown(trace, skip_runs=2)


def test_full_bench_exports_with_the_cli_default_calibration():
    """"exported here" must be the plan `rewardrt export --precision int8` gives, so the full bench
    calibrates on as many pairs as the exporter's default."""
    from rewardrt.bench.config import FULL
    from rewardrt.export.config import ExportConfig

    assert FULL.export_calibration == ExportConfig.__dataclass_fields__["calibration_size"].default


def test_planbound_exports_every_matmul_as_an_integer_gemm_and_times_both(tiny_checkpoint, tiny_int8, capsys):
    """The all-integer upper-bound probe: every MatMul on ``token`` whatever its fidelity, the file
    gone afterwards, and a batch-1 figure for both models (no timing asserted)."""
    from rewardrt.bench.probes import planbound

    code = planbound.main([str(tiny_checkpoint), "--target", "avx2", "--against", str(tiny_int8[0]),
                           "--rounds", "2", "--pairs", "3"])
    out = capsys.readouterr().out
    assert code == 0
    plan = out.split("all-integer (avx2): ", 1)[1].split(",", 1)[0]
    assert plan.startswith("{'token': ") and "dequant" not in plan and "fp32" not in plan
    assert "max|Δ|=" in out and out.count("speed vs against") == 2
    assert "against      batch-1 median" in out and "1.00x" in out.split("all-integer  batch-1")[0]


@pytest.mark.parametrize("argv, match", [(["ck", "--rounds", "0"], "--rounds"), (["ck", "--against", "nope.onnx"], "--against")])
def test_planbound_bad_arguments_name_the_argument(argv, match, capsys):
    from rewardrt.bench.probes import planbound

    with pytest.raises(SystemExit):
        planbound.main(argv)
    assert match in capsys.readouterr().err
