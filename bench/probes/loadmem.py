"""Memory of loading one artifact: RSS after the imports, after the session is built, the
high-water mark (VmHWM) after scoring a few dev pairs one at a time, each in a fresh process; and
the raw scores compared bit for bit with the first variant.

Variants: the artifact as written; its ``dequant`` weights rewritten to the one-node form the
export now writes (one blocked ``DequantizeLinear`` of int8 constants instead of Cast·Mul·Reshape,
``rewardrt.export.quantize.weights.dequant_matmul_nodes``), with the runtime's session options
(QDQ rewrites off) and with QDQ rewrites on (onnxruntime then fuses DequantizeLinear + MatMul into
a MatMulNBits that quantizes activations: other scores).

``python -m rewardrt.bench.probes.loadmem [--model M.onnx] [--pairs 32]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def one_node_dequant(src: str, dst: Path) -> int:
    """``src`` with every Cast·Mul·Reshape weight chain as one blocked DequantizeLinear (sealed)."""
    import onnx
    from onnx import helper, numpy_helper

    from rewardrt.export.quantize.opset import QLINEAR_OPSET, raise_opset
    from rewardrt.export.quantize.sites import add_const, replace_nodes
    from rewardrt.runtime.integrity import seal_bytes

    model = onnx.load(src)
    raise_opset(model, QLINEAR_OPSET)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes, done = [], 0
    for n in graph.node:
        if n.name.endswith((".WeightCast", ".WeightScale")):
            continue
        if n.name.endswith(".WeightReshape"):
            p = n.name[: -len(".WeightReshape")]
            codes = numpy_helper.to_array(inits[f"{p}.wq8"])
            scale = numpy_helper.to_array(inits[f"{p}.wq8_scale"])
            kb, b, cols = codes.shape
            add_const(graph, f"{p}.wq8_2d", codes.reshape(kb * b, cols))
            add_const(graph, f"{p}.wq8_scale_2d", scale.reshape(kb, cols))
            nodes.append(helper.make_node("DequantizeLinear", [f"{p}.wq8_2d", f"{p}.wq8_scale_2d"], [n.output[0]],
                                          axis=0, block_size=b, name=f"{p}.WeightDequant"))
            done += 1
            continue
        nodes.append(n)
    replace_nodes(graph, nodes)
    dst.write_bytes(seal_bytes(model.SerializeToString()))
    return done


def child(spec: dict) -> dict:
    import numpy as np

    def status(key: str) -> float:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key)) / 1024

    import onnxruntime  # noqa: F401  (the imports a scoring process pays anyway)
    import tokenizers  # noqa: F401

    imports = status("VmRSS")
    import rewardrt.runtime.api as api
    from rewardrt.runtime.session import make_session, session_options

    opts = session_options(1)
    if spec["qdq"]:
        opts.add_session_config_entry("session.disable_quant_qdq", "0")
    api.make_session = lambda path, threads=None: make_session(path, options=opts)
    model = api.RewardModel(spec["model"], threads=1)
    loaded = status("VmRSS")
    raw = [model.raw_scores([resp], ref)[0] for ref, resp in spec["pairs"]]
    return {"imports_mb": imports, "loaded_mb": loaded, "hwm_mb": status("VmHWM"),
            "raw": np.asarray(raw, dtype=np.float64).tolist()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rewardrt.bench.probes.loadmem", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None)
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(sys.stdin.read()))))
        return 0
    from rewardrt.bench.workloads import read_dev

    if args.model is None:
        from rewardrt.runtime.api import select_default_model

        args.model = str(select_default_model())
    pairs = [(r["a"], r["b"]) for r in read_dev()[: args.pairs]]
    with tempfile.TemporaryDirectory(prefix="rewardrt-loadmem-") as tmp:
        rewritten = Path(tmp) / "one-node-dequant.onnx"
        chains = one_node_dequant(args.model, rewritten)
        variants = {"as written": (args.model, False),
                    f"one-node dequant ({chains} MatMuls)": (str(rewritten), False),
                    "one-node dequant, QDQ rewrites on": (str(rewritten), True)}
        rows = {}
        for name, (path, qdq) in variants.items():
            proc = subprocess.run([sys.executable, "-m", "rewardrt.bench.probes.loadmem", "--child"],
                                  input=json.dumps({"model": path, "qdq": qdq, "pairs": pairs}),
                                  capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if proc.returncode != 0:
                raise RuntimeError(f"{name} failed:\n{proc.stderr[-2000:]}")
            rows[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    first = next(iter(rows.values()))["raw"]
    print(f"model {args.model}; {len(pairs)} dev pairs scored one at a time, 1 thread, each variant in a fresh process")
    print("| variant | RSS after imports MB | RSS after load MB | peak RSS (VmHWM) MB | raw scores == first | max raw diff |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        diff = max(abs(a - b) for a, b in zip(first, r["raw"]))
        print(f"| {name} | {r['imports_mb']:.0f} | {r['loaded_mb']:.0f} | {r['hwm_mb']:.0f} | "
              f"{'yes' if r['raw'] == first else 'no'} | {diff:.2e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
