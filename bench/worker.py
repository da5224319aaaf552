"""One engine in a process of its own: ``python -m rewardrt.bench.worker``.

Serve mode (default) reads one JSON request per line on stdin and writes one JSON reply per line
on the original stdout; anything libraries print goes to stderr instead, so it cannot corrupt the
protocol. Requests: ``load``, ``data``, ``threads``, ``warmup``, ``latency``, ``throughput``,
``rl``, ``score``, ``profile``, ``int8_peak``, ``stats``, ``quit``. Timings are taken here, around the engine calls only.

Cold mode (``--cold SPEC_JSON``) imports, loads, scores one pair and exits: the parent times the
whole process from spawn to exit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far.

    Linux: VmHWM of /proc/self/status, the high-water mark of this program's own address space.
    Not ru_maxrss: after fork + exec Linux carries the parent's high-water mark into the child's
    ru_maxrss, so every worker would report at least the parent's size."""
    status = "/proc/self/status"
    if os.path.exists(status):
        with open(status, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB elsewhere


def current_rss_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # pragma: no cover - psutil comes with rewardrt[bench]
        return 0


class Server:
    def __init__(self) -> None:
        self.engine = None
        self.sets: dict[str, dict] = {}

    def handle(self, req: dict) -> dict:
        op = req.get("op")
        method = getattr(self, f"op_{op}", None)
        if method is None:
            raise ValueError(f"unknown op {op!r}")
        return method(req)

    def op_load(self, req: dict) -> dict:
        from rewardrt.bench.engines import EngineSpec, load

        t0 = time.perf_counter()
        self.engine = load(EngineSpec(**req["spec"]), int(req["threads"]))
        return {"load_s": time.perf_counter() - t0, "rss": current_rss_bytes()}

    def op_data(self, req: dict) -> dict:
        self.sets.update(req["sets"])
        return {}

    def op_threads(self, req: dict) -> dict:
        self.engine.set_threads(int(req["threads"]))
        return {}

    def op_warmup(self, req: dict) -> dict:
        """Each latency set once, and one batch of ``n`` pairs: first-run allocations happen here."""
        for name in req.get("latency", []):
            s = self.sets[name]
            self.engine.score_one(s["refs"][0], s["resps"][0])
        if req.get("pairs"):
            s, n = self.sets[req["pairs"]], int(req["n"])
            self.engine.batch_score(s["refs"][:n], s["resps"][:n], n)
        return {}

    def op_latency(self, req: dict) -> dict:
        s = self.sets[req["set"]]
        times = []
        for ref, resp in zip(s["refs"], s["resps"]):
            t0 = time.perf_counter()
            self.engine.score_one(ref, resp)
            times.append(time.perf_counter() - t0)
        return {"times": times}

    def op_throughput(self, req: dict) -> dict:
        """The first ``n`` pairs of the set scored in calls of ``batch`` pairs (the caller's batch),
        summed wall time."""
        s, b, n = self.sets[req["set"]], int(req["batch"]), int(req["n"])
        refs, resps = s["refs"][:n], s["resps"][:n]
        t0 = time.perf_counter()
        for start in range(0, len(refs), b):
            self.engine.batch_score(refs[start : start + b], resps[start : start + b], b)
        return {"seconds": time.perf_counter() - t0, "pairs": len(refs)}

    def op_rl(self, req: dict) -> dict:
        """One batch_score call per RL step (the whole step at once, batch_size 64)."""
        steps = self.sets[req["set"]]["steps"]
        t0 = time.perf_counter()
        for step in steps:
            self.engine.batch_score(step["refs"], step["resps"], 64)
        return {"seconds": time.perf_counter() - t0, "pairs": sum(len(s["refs"]) for s in steps)}

    def op_score(self, req: dict) -> dict:
        s = self.sets[req["set"]]
        return {"scores": self.engine.batch_score(s["refs"], s["resps"], 64)}

    def op_profile(self, req: dict) -> dict:
        """onnxruntime's per-op profile of this engine's artifact (rewardrt engines only)."""
        from rewardrt.bench.profile import profile_artifact

        model = getattr(self.engine, "model", None)
        if not hasattr(model, "spec"):
            raise ValueError("profile needs a rewardrt engine")
        s = self.sets[req["set"]]
        return profile_artifact(str(model.path), s["refs"], s["resps"], int(req["threads"]),
                                single_calls=int(req["single_calls"]), batch=int(req["batch"]),
                                batch_calls=int(req["batch_calls"]))

    def op_int8_peak(self, req: dict) -> dict:
        from rewardrt.bench.probes.int8peak import measure

        return measure(tuple(req["threads"]), calls=int(req["calls"]))

    def op_stats(self, req: dict) -> dict:
        return {"peak_rss": peak_rss_bytes(), "rss": current_rss_bytes()}


def serve() -> int:
    # The protocol keeps the real stdout; fd 1 (and print) now lead to stderr.
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    server = Server()
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("op") == "quit":
            break
        try:
            reply = {"ok": True, **server.handle(req)}
        except Exception as exc:  # reported to the parent, which raises with this text
            traceback.print_exc()
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        proto.write(json.dumps(reply) + "\n")
    return 0


def cold(spec_json: str, threads: int, reference: str, response: str) -> int:
    """Import, load, score one pair: what a fresh process pays before its first score."""
    t0 = time.perf_counter()
    from rewardrt.bench.engines import EngineSpec, load

    engine = load(EngineSpec(**json.loads(spec_json)), threads)
    score = engine.score_one(reference, response)
    out = {"score": score, "inside_s": time.perf_counter() - t0, "peak_rss": peak_rss_bytes()}
    sys.__stdout__.write(json.dumps(out) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rewardrt.bench.worker")
    p.add_argument("--cold", metavar="SPEC_JSON", help="load this engine, score one pair, exit")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reference", default="The capital of France is Paris.")
    p.add_argument("--response", default="Paris is the capital of France.")
    args = p.parse_args(argv)
    if args.cold:
        return cold(args.cold, args.threads, args.reference, args.response)
    return serve()


if __name__ == "__main__":
    sys.exit(main())
