"""``export()``: checkpoint -> ONE verified ONNX graph (self-contained, or with its weights file).

Steps: load the checkpoint as the torch reference; trace encoder + pooling + head + clamp to ONNX;
fuse offline. For INT8 then, in four stages a reader can run alone:

    fit       calibration statistics of the fp32 graph, torch reference scores   (export/fit.py)
    plan      the start plan if it fits, else a per-MatMul plan search            (export/search.py)
    quantize  the fp32 graph rewritten by the plan                                (export/quantize/)
    gate      the written file through the runtime vs the torch reference on
              held-out pairs; over budget -> the next, safer plan, or nothing     (export/gate.py)

The tokenizer and the spec (with the typed quantization record) go in as metadata; the file is
published atomically, and only once it passed the gate.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx

from rewardrt.export import graph, quantize
from rewardrt.export.checkpoint import CheckpointFiles, locate, read_config
from rewardrt.export.config import ExportConfig, resolve_target
from rewardrt.export.errors import FidelityError
from rewardrt.export.fit import Calibration, fit, reference_raw
from rewardrt.export.gate import HeldOut, Verdict, budget_record, gate
from rewardrt.export.pairs import LONG_PAIRS, PairSet, calibration_pairs, load_pair_set, validation_pairs
from rewardrt.export.quantize import QuantPlan
from rewardrt.export.reference import TorchReward
from rewardrt.export.search import PlanSearch, adapted_plan, recorded_plan, search_plan
from rewardrt.export.workdir import export_workdir, remove_stale_workdirs
from rewardrt.export.weightsfile import WeightsFile, externalize, previous_weights
from rewardrt.runtime.integrity import KEY_WEIGHTS, fsync_dir, seal_bytes
from rewardrt.runtime.metrics import Fidelity
from rewardrt.runtime.spec import (
    FORMAT_VERSION, KEY_FORMAT, KEY_SPEC, KEY_TOKENIZER, ArtifactSpec, QuantizationRecord,
)

log = logging.getLogger(__name__)


@dataclass
class ExportReport:
    output: str
    precision: str
    fidelity: Fidelity
    max_raw_abs_diff: float
    passed: bool
    failures: list[str]
    plan: dict[str, int]            # scheme -> number of MatMuls
    fused_ops: dict[str, int]
    file_bytes: int
    seconds: float
    # plans the held-out gate rejected before this one: {"plan": counts, "failures": [...]}
    rejected: list[dict] = field(default_factory=list)
    activation_bits: int | None = None  # of the integer-GEMM MatMuls (None: the plan has none)
    layer_norms_expanded: int = 0       # fused layer norms written back as plain ops
    stage_seconds: dict[str, float] = field(default_factory=dict)
    target: str | None = None           # the CPU family an INT8 artifact is verified for
    graph_nodes: int = 0                # nodes of the written graph (quantize.compact keeps them few)
    weights_file: str | None = None     # the weights file beside the .onnx (--weights-file), by name

    def describe(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        plan = ", ".join(f"{k}={v}" for k, v in sorted(self.plan.items()))
        lines = [
            f"{status} {self.precision} export -> {self.output}",
            f"  fidelity vs torch reference: {self.fidelity.describe()} raw max|Δ|={self.max_raw_abs_diff:.2e}",
            f"  MatMul plan: {plan}" + (f" (target {self.target})" if self.target else ""),
            "  fused: " + ", ".join(f"{k}={v}" for k, v in sorted(self.fused_ops.items()))
            + (f"; {self.layer_norms_expanded} layer norms written back as plain ops (faster on CPU)"
               if self.layer_norms_expanded else ""),
            f"  size {self.file_bytes / 1e6:.1f} MB, {self.graph_nodes} nodes, {self.seconds:.0f} s"
            + (" (" + ", ".join(f"{k} {v:.0f} s" for k, v in self.stage_seconds.items()) + ")"
               if self.stage_seconds else ""),
        ]
        if self.weights_file:
            lines.append(f"  weights in {self.weights_file} beside it (copy both files together)")
        if self.activation_bits == 8:
            lines.append("  activation codes: 8-bit, exact on CPUs with VNNI only (the runtime warns on "
                         "others); --target avx2 for an artifact that runs exactly on every x86 CPU")
        elif self.activation_bits == 7:
            lines.append("  activation codes: 7-bit, exact on every x86 CPU")
        for r in self.rejected:
            counts = ", ".join(f"{k}={v}" for k, v in sorted(r["plan"].items()))
            lines.append(f"  rejected by the held-out gate first: {counts} ({'; '.join(r['failures'])})")
        lines += [f"  over budget: {f}" for f in self.failures]
        return "\n".join(lines)


def _versions() -> dict[str, str]:
    import onnxruntime
    import tokenizers
    import torch
    import transformers
    from rewardrt import __version__

    return {"rewardrt": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "tokenizers": tokenizers.__version__}


def _write(model: onnx.ModelProto, spec: ArtifactSpec, tokenizer_json: str, path: Path,
           weights: WeightsFile | None = None) -> int:
    """Set the metadata, serialize and seal (content digest, see rewardrt.runtime.integrity), then
    write and fsync; ``weights``: the weights file ``model``'s external tensors are in (from
    :func:`~rewardrt.export.weightsfile.externalize`), recorded in the sealed metadata. Returns the
    bytes of the artifact (both files)."""
    props = {KEY_FORMAT: str(FORMAT_VERSION), KEY_SPEC: spec.to_json(), KEY_TOKENIZER: tokenizer_json}
    if weights is not None:
        props[KEY_WEIGHTS] = weights.record
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    model.producer_name = "rewardrt"
    with open(path, "wb") as f:
        f.write(seal_bytes(model.SerializeToString()))
        f.flush()
        os.fsync(f.fileno())
    return path.stat().st_size + (weights.path.stat().st_size if weights is not None else 0)


class Stages:
    """Wall time per export stage (``with stages("name"): ...``), logged as each ends."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.time()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.time() - t, 1)
            log.info("stage %s: %.1f s", name, time.time() - t)


def quantization_record(plan: QuantPlan, search: PlanSearch, cfg: ExportConfig, model: onnx.ModelProto,
                        rejected: list[dict]) -> QuantizationRecord:
    """What the artifact quantized by ``plan`` records about it (``rejected``: plans the gate turned
    down before it)."""
    bits = plan.activation_bits
    return QuantizationRecord(
        plan=dict(plan.schemes), plan_counts=plan.counts, activation_bits=bits, target=cfg.target,
        block_size=plan.block_size, smooth_alpha=plan.smooth_alpha, outlier_channels=plan.outlier_channels,
        gptq=plan.gptq, activation_chain=plan.chain, one_sided_gelu=plan.one_sided_gelu,
        activation_scales=f"per token (row), {bits}-bit, computed at run time; symmetric"
                          + (", or one-sided on GELU outputs" if plan.one_sided_gelu else ""),
        integer_schemes=cfg.integer_schemes, weight_only=cfg.weight_only,
        weight_scales="per output channel (token, token2) / per block (block, dequant)",
        int8_embedding_tables=tuple(quantize.int8_tables(model)),
        float16_embedding_tables=tuple(quantize.float16_tables(model)),
        gate_rejected=tuple(rejected), **search.record_entries())


def _plans(fused: onnx.ModelProto, cal: Calibration, cfg: ExportConfig, tokenizer_json: str, max_length: int,
           cache: dict, stages: Stages) -> Iterator[tuple[QuantPlan, PlanSearch]]:
    """The INT8 plans for the gate, in order; the next is only made if the gate rejected the last:
    the plan stage's answer; if that was a kept start plan with 8-bit codes, the same plan with 7;
    then a fresh search if it was a kept start plan, then the fallbacks."""
    with stages("plan search"):
        search = search_plan(fused, cal, cfg, tokenizer_json, max_length, cache)
    yield search.plan, search
    if search.start_plan_fits and search.plan.activation_bits == 8:
        # a start plan recorded with 7-bit codes (the portable default's) can pass the gate at 7 bits
        # where 8 flips a near-0.5 pair: every target allows 7, and a search costs minutes
        log.warning("held-out gate rejected the start plan with 8-bit codes; trying it with 7")
        with stages("plan search"):
            seven = search_plan(fused, cal, replace(cfg, activation_bits=7), tokenizer_json, max_length, cache,
                                start_only=True)
        if seven is not None:
            yield seven.plan, seven
    if search.start_plan_fits:
        log.warning("held-out gate rejected the start plan; searching")
        with stages("plan search"):
            search = search_plan(fused, cal, replace(cfg, start_plan=None), tokenizer_json, max_length, cache)
        yield search.plan, search
    for plan in search.fallbacks(cfg):
        log.warning("retrying with fewer integer-GEMM MatMuls: %s", plan.counts)
        yield plan, search


def _held_out(reference: TorchReward, pair_set: PairSet, size: int | None) -> HeldOut:
    pairs = validation_pairs(pair_set, size)
    log.info("torch reference on %d held-out pairs of %s", len(pairs), pair_set.source)
    return HeldOut(pairs, reference_raw(reference, pairs),
                   f"{len(pairs)} pairs: the held-out part of {pair_set.source} + {LONG_PAIRS} long pairs")


def _checked_output(output: str | Path) -> Path:
    output = Path(output)
    if output.suffix != ".onnx":
        raise ValueError(f"output must end in .onnx, got {str(output)!r}")
    if output.is_dir():
        raise ValueError(f"output {str(output)!r} is a directory; give a file path ending in .onnx")
    if not output.parent.is_dir():
        raise FileNotFoundError(f"output folder {str(output.parent)!r} does not exist")
    return output


@dataclass
class _Job:
    """What one export has read and measured before it writes anything."""

    cfg: ExportConfig              # resolved: a concrete target for INT8
    files: CheckpointFiles
    arch: dict                     # the checkpoint's config.json
    reference: TorchReward
    tokenizer_json: str
    pair_set: PairSet
    held_out: HeldOut
    spec: ArtifactSpec             # everything but the quantization record and the fidelity figures
    stages: Stages
    started: float

    @property
    def int8(self) -> bool:
        return self.cfg.precision == "int8"


def _prepare(checkpoint_dir: str | Path, cfg: ExportConfig, started: float) -> _Job:
    files = locate(checkpoint_dir)
    arch = read_config(files)
    max_length = min(cfg.max_length, arch["max_position_embeddings"])
    pair_set = load_pair_set(cfg.calibration)
    if cfg.precision == "int8":
        cfg = resolve_target(cfg)
        log.info("INT8 target %s: %d-bit activation codes", cfg.target, cfg.bits)
        if cfg.start_plan is None and cfg.start_from is not None:
            cfg = replace(cfg, start_plan=adapted_plan(recorded_plan(cfg.start_from, cfg.target), cfg))
    reference = TorchReward(files.root, max_length=max_length)
    stages = Stages()
    with stages("torch reference"):
        held_out = _held_out(reference, pair_set, cfg.validation_size)
    spec = ArtifactSpec(
        precision=cfg.precision, max_length=max_length,
        hidden_size=arch["hidden_size"], num_layers=arch["num_hidden_layers"],
        checkpoint_digest=files.digest(), versions=_versions(),
        single_row_safe=True,  # reference.meanmax_pool sums with a MatMul (tests/test_determinism.py)
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    return _Job(cfg, files, arch, reference, files.tokenizer.read_text(encoding="utf-8"), pair_set, held_out,
                spec, stages, started)


@dataclass
class _Fp32Graph:
    model: onnx.ModelProto         # the fp32 graph every plan quantizes (and every search starts from)
    fused_ops: dict[str, int]
    layer_norms_expanded: int


def _fp32_graph(job: _Job, work: Path) -> _Fp32Graph:
    """Trace and fuse. INT8 keeps Q/K/V as separate MatMuls (MultiHeadAttention) so they can be
    quantized, and the word-embedding Gather visible so its table can be stored as int8."""
    arch = job.arch
    with job.stages("trace + fuse"):
        graph.trace(job.reference.net, work / "traced.onnx")
        counts = graph.fuse(work / "traced.onnx", work / "fused.onnx", arch["num_attention_heads"],
                            arch["hidden_size"], arch["num_hidden_layers"],
                            fuse_embeddings=not job.int8, separate_qkv=job.int8)
        model = graph.load(work / "fused.onnx")
        expanded = graph.expand_layer_norms(model) if job.cfg.expand_layer_norms else 0
    return _Fp32Graph(model, {k: v for k, v in counts.items() if k in graph.FUSED_OPS}, expanded)


def _report(job: _Job, output: Path, fp32: _Fp32Graph, verdict: Verdict, plan: QuantPlan | None, size: int,
            rejected: list[dict], nodes: int = 0) -> ExportReport:
    integer = plan is not None and sum(plan.counts.get(s, 0) for s in quantize.INTEGER_SCHEMES) > 0
    return ExportReport(
        output=str(output), precision=job.cfg.precision, fidelity=verdict.fidelity,
        max_raw_abs_diff=verdict.max_raw_abs_diff, passed=verdict.passed, failures=list(verdict.failures),
        plan=plan.counts if plan is not None else {"fp32": len(quantize.quantizable_matmuls(fp32.model))},
        fused_ops=fp32.fused_ops, layer_norms_expanded=fp32.layer_norms_expanded, file_bytes=size,
        seconds=time.time() - job.started, rejected=list(rejected),
        activation_bits=plan.activation_bits if integer else None, stage_seconds=job.stages.seconds,
        target=job.cfg.target if job.int8 else None, graph_nodes=nodes)


def export(checkpoint_dir: str | Path, output: str | Path, config: ExportConfig | None = None) -> ExportReport:
    """Export ``checkpoint_dir`` to ``output`` (.onnx). Raises FidelityError, leaving no file, when
    the written graph disagrees with the torch reference beyond the budget. An INT8 export with
    ``target="auto"`` is made for the CPU it runs on (:func:`~rewardrt.export.config.resolve_target`)."""
    started = time.time()
    output = _checked_output(output)
    remove_stale_workdirs(output.parent)  # left by exports that were killed (SIGKILL)
    job = _prepare(checkpoint_dir, config or ExportConfig(), started)
    cfg, stages = job.cfg, job.stages
    # everything is written in a locked working folder next to the output, see export/workdir.py
    with export_workdir(output.parent) as work:
        fp32 = _fp32_graph(job, work)
        cache: dict = {}  # GPTQ codes, shared by every plan of this export
        attempts: Iterator[tuple[QuantPlan | None, PlanSearch | None]] = iter([(None, None)])  # fp32
        stats = None
        if job.int8:
            with stages("fit"):
                cal = fit(fp32.model, calibration_pairs(job.pair_set, cfg.calibration_size), job.reference,
                          job.tokenizer_json, job.spec.max_length, cfg.threads)
            stats = cal.stats
            attempts = _plans(fp32.model, cal, cfg, job.tokenizer_json, job.spec.max_length, cache, stages)
        candidate = work / output.name  # a weights file's name starts with the output's
        rejected: list[dict] = []
        for plan, search in attempts:
            model = fp32.model if plan is None else quantize.quantize(fp32.model, plan, stats, cache)
            weights = None
            if cfg.weights_file:  # a copy; its fp32 weights stay fp32, mapped as they are
                model, weights = externalize(model, work, output.name)
            else:  # lossless: half the bytes where float16 holds them
                if plan is None:
                    model = onnx.ModelProto.FromString(model.SerializeToString())  # fp32.model stays
                quantize.float16_exact_weights(model)
            record = None if plan is None else quantization_record(plan, search, cfg, model, rejected)
            spec = replace(job.spec, quantization=record)
            with stages("gate"):
                size = _write(model, spec, job.tokenizer_json, candidate, weights)
                try:
                    verdict = gate(candidate, job.held_out, cfg.budget, cfg.precision, cfg.threads)
                    break
                except FidelityError as exc:
                    verdict = exc.report
                    log.warning("held-out gate rejected plan %s (%s; largest on %s)", plan.counts if plan else "fp32",
                                "; ".join(verdict.failures), verdict.worst)
                    rejected.append({"plan": plan.counts if plan else {}, "failures": list(verdict.failures)})
        else:
            rejected.pop()  # the last one is this failure's
            tried = "" if not rejected else f" after {len(rejected)} other plan(s) were rejected too"
            hint = ("" if not job.int8 else "; what can get it through: calibrating on pairs like your traffic "
                    "(--calibration), the plan of an export that passed (--start-plan ARTIFACT.onnx), more "
                    "fallback plans (--gate-retries), or --precision fp32")
            raise FidelityError(f"{cfg.precision} export of {str(job.files.root)!r} is over its fidelity budget "
                                f"({'; '.join(verdict.failures)}){tried}; nothing was written{hint}",
                                _report(job, output, fp32, verdict, plan, size, rejected))
        fid = {**verdict.fidelity.as_dict(), "max_raw_abs_diff": verdict.max_raw_abs_diff,
               "validation": job.held_out.description, "budget": budget_record(cfg.precision, cfg.budget)}
        size = _write(model, replace(spec, fidelity=fid), job.tokenizer_json, candidate, weights)
        result = _report(job, output, fp32, verdict, plan, size, rejected, len(model.graph.node))
        data = weights.path if weights is not None else None
        result.weights_file = data.name if data is not None else None
        old = previous_weights(output)
        if data is not None:  # under its own name, before the .onnx that refers to it
            os.replace(data, output.parent / data.name)
        os.replace(candidate, output)
        fsync_dir(output.parent)
        if old is not None and (data is None or old.name != data.name):
            old.unlink(missing_ok=True)  # the replaced artifact's weights file
    return result
