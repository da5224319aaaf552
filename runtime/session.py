"""The one place an onnxruntime session is made: CPU provider explicit, threads set, graph
optimisation chosen on purpose, and the providers actually granted checked afterwards."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnxruntime as ort

from rewardrt.runtime.spec import ArtifactError

log = logging.getLogger(__name__)
PROVIDER = "CPUExecutionProvider"


def default_threads() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity where the OS reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """The options every rewardrt session uses (the bench's profiler starts from these too)."""
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Exported graphs are already fused offline; ENABLE_ALL adds the CPU layout passes on top.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No QDQ rewrites: a `dequant` MatMul's weights are one DequantizeLinear of int8 constants, to be
    # folded into fp32 weights once at load (bit-identical to the older Cast·Mul·Reshape form, and a
    # lower load peak); with QDQ rewrites on, onnxruntime would fuse it with the MatMul into a
    # MatMulNBits that quantizes the activations (different scores). Nothing else in rewardrt's
    # graphs is a QDQ pattern (their QuantizeLinear feeds MatMulIntegerToFloat).
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
    opts.log_severity_level = 3
    return opts


def make_session(path: str | Path | bytes, threads: int | None = None,
                 options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """A CPU session on ``path`` (a file, or a serialized model in memory).

    ``threads`` sets intra-op parallelism (default: the cores available to this process). Use 1 per
    process when you run several scorer processes side by side (e.g. one per Ray actor or server
    worker), so they do not oversubscribe the cores. ``options`` (from :func:`session_options`,
    then changed) replaces the defaults, e.g. to turn on onnxruntime's profiler. Bytes are for
    the exporter's trials: a graph scored once is never written, sealed and re-read.
    """
    opts = options if options is not None else session_options(threads)
    if isinstance(path, bytes):
        source, what = path, "the in-memory model"
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model file {str(path)!r} does not exist")
        source, what = str(path), f"model file {str(path)!r}"
    try:
        session = ort.InferenceSession(source, sess_options=opts, providers=[PROVIDER])
    except Exception as exc:  # onnxruntime raises several of its own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"cannot load {what} with onnxruntime: {first}") from exc
    granted = session.get_providers()
    if granted[:1] != [PROVIDER]:
        raise RuntimeError(f"onnxruntime granted providers {granted}, expected {PROVIDER}")
    return session
