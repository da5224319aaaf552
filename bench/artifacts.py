"""The checkpoint under test and every engine's model file, cached in the results folder.

Cache layout: ``<out>/cache/<checkpoint digest[:16]>/`` holds the plain traced graph, its
quantize_dynamic INT8 version and the rewardrt artifacts (their names carry the export settings
and a digest of the exporter's source, so a changed exporter exports afresh), so a re-run on the
same checkpoint with the same code exports nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from rewardrt.bench.config import BenchPlan
from rewardrt.bench.engines import CT2, ENGINES, HOST_INT8, OPENVINO, EngineSpec, unavailable
from rewardrt.runtime.integrity import weights_file

log = logging.getLogger(__name__)
SEEDED_HEAD_SEED = 0


@dataclass(frozen=True)
class CheckpointChoice:
    path: Path
    source: str                      # "--checkpoint", "default model", "base + seeded head"
    note: str
    digest: str


@dataclass
class Prepared:
    checkpoint: CheckpointChoice
    specs: dict[str, EngineSpec]
    model_files: dict[str, list[str]]            # engine -> files it loads
    exports: dict[str, dict] = field(default_factory=dict)  # what was exported or reused, and how
    skipped: dict[str, str] = field(default_factory=dict)   # optional peer engine -> why it is not measured


def _digest_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _seeded_head_checkpoint(out: Path, pairs: str | None, seed: int = SEEDED_HEAD_SEED) -> Path:
    """The packaged base MiniLM plus a head drawn from ``seed`` and scaled so its raw outputs on a
    few training pairs have mean 0.5 and spread 0.25 (scores not all clamped to 0 or 1)."""
    import torch

    from rewardrt.export.pairs import calibration_pairs, load_pair_set
    from rewardrt.export.reference import encode_pairs, load_encoder, load_tokenizer, meanmax_pool
    from rewardrt.models.base import BASE_FILES, base_model_dir

    if (out / "head_weights.pt").is_file():
        return out
    base = base_model_dir()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in BASE_FILES:
        shutil.copy2(base / name, tmp / name)
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    hidden = config["hidden_size"]
    pairs = calibration_pairs(load_pair_set(pairs), 64, seed=seed)
    tokenizer, encoder = load_tokenizer(tmp), load_encoder(tmp)
    with torch.inference_mode():
        enc = encode_pairs(tokenizer, pairs.references, pairs.responses, 512)
        hidden_states = encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                token_type_ids=torch.zeros_like(enc["input_ids"])).last_hidden_state
        features = meanmax_pool(hidden_states, enc["attention_mask"])
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(1, 2 * hidden, generator=g)
    proj = features @ w[0]
    w = w * (0.25 / proj.std().clamp(min=1e-6))
    b = 0.5 - (features @ w[0]).mean()
    torch.save({"1.weight": w.contiguous(), "1.bias": b.reshape(1).contiguous()}, tmp / "head_weights.pt")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def choose_checkpoint(explicit: Path | None, cache: Path, pairs: str | None) -> CheckpointChoice:
    """``--checkpoint``; else the default model materialized from its delta; else base + seeded head."""
    from rewardrt.export.checkpoint import locate
    from rewardrt.models import model_dir

    if explicit is not None:
        files = locate(explicit)
        return CheckpointChoice(files.root.resolve(), "--checkpoint", f"checkpoint {files.root}",
                                files.digest())
    delta = model_dir() / "delta.safetensors"
    if delta.is_file():
        from rewardrt.models.delta import materialize

        target = cache / "checkpoints" / f"default-{_digest_file(delta)[:16]}"
        if not (target / "head_weights.pt").is_file():
            log.info("materializing the default model into %s", target)
            materialize(delta, target)
        files = locate(target)
        return CheckpointChoice(target.resolve(), "default model",
                                f"the default model, materialized from {delta.name}", files.digest())
    target = _seeded_head_checkpoint(cache / "checkpoints" / f"base-seeded-head-{SEEDED_HEAD_SEED}", pairs)
    files = locate(target)
    return CheckpointChoice(
        target.resolve(), "base + seeded head",
        "the default model is not built yet (no delta.safetensors), so this run uses the packaged "
        f"base all-MiniLM-L6-v2 with a random head (seed {SEEDED_HEAD_SEED}); speed, memory and size "
        "figures carry over to the trained model, fidelity figures are for this untrained head",
        files.digest())


def _default_int8_for(digest: str) -> Path | None:
    """The packaged default INT8 artifact ``RewardModel()`` selects on this CPU (the VNNI one where
    the build carries it and the CPU has VNNI, else the portable one), if it was exported from this
    very checkpoint."""
    from rewardrt.runtime.api import select_default_model
    from rewardrt.runtime.spec import KEY_SPEC

    path = select_default_model()
    if not path.is_file():
        return None
    from rewardrt.runtime.session import make_session

    meta = make_session(path, threads=1).get_modelmeta().custom_metadata_map
    spec = json.loads(meta.get(KEY_SPEC, "{}"))
    return path if spec.get("checkpoint_digest") == digest else None


def _export_rewardrt(ckpt: Path, out: Path, precision: str, plan: BenchPlan, pairs: str | None,
                     target: str = "auto") -> dict:
    from rewardrt.export.config import ExportConfig
    from rewardrt.export.exporter import export

    cfg = ExportConfig(precision=precision, calibration=pairs, target=target,
                       validation_size=plan.export_validation, calibration_size=plan.export_calibration)
    report = export(ckpt, out, cfg)
    log.info("%s", report.describe())
    info = {"exported_s": round(report.seconds, 1), "plan": report.plan}
    if report.rejected:
        info["gate_rejected"] = report.rejected
    return info


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _plain_graphs(ckpt: Path, fp32: Path, int8: Path) -> dict:
    """The baseline a user gets by hand: torch.onnx export of the net, and quantize_dynamic on it."""
    import time

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from rewardrt.export.graph import trace
    from rewardrt.export.reference import TorchReward

    info = {}
    if not fp32.is_file():
        t0 = time.time()
        tmp = fp32.with_name(fp32.stem + ".tmp.onnx")
        trace(TorchReward(ckpt).net, tmp)
        os.replace(tmp, fp32)
        info["ort-fp32"] = {"exported_s": round(time.time() - t0, 1)}
    if not int8.is_file():
        t0 = time.time()
        tmp = int8.with_name(int8.stem + ".tmp.onnx")
        hint = _DropMessage("pre-processing before quantization")  # advice for image models
        logging.getLogger().addFilter(hint)
        try:
            quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        finally:
            logging.getLogger().removeFilter(hint)
        os.replace(tmp, int8)
        info["ort-int8"] = {"exported_s": round(time.time() - t0, 1)}
    return info


def _ct2_model(ckpt: Path, dst: Path) -> dict:
    """CTranslate2's int8 conversion of the encoder, with the head as ``head.npz`` beside it."""
    import time

    import numpy as np

    if (dst / "head.npz").is_file():
        return {"cached": str(dst)}
    import torch
    from ctranslate2.converters import TransformersConverter

    from rewardrt.export.checkpoint import locate

    t0 = time.time()
    tmp = dst.with_name(dst.name + ".tmp")
    config = json.loads((ckpt / "config.json").read_text(encoding="utf-8"))
    source = ckpt
    if "position_embedding_type" not in config:  # newer transformers leave the default out; the converter reads it
        source = dst.with_name(dst.name + ".src")
        source.mkdir(exist_ok=True)
        for f in ckpt.iterdir():
            if f.is_file() and f.name != "config.json" and not (source / f.name).exists():
                (source / f.name).symlink_to(f.resolve())
        (source / "config.json").write_text(json.dumps({**config, "position_embedding_type": "absolute"}),
                                            encoding="utf-8")
    TransformersConverter(str(source)).convert(str(tmp), quantization="int8", force=True)
    files = locate(ckpt)
    if files.head.suffix == ".pt":
        head = torch.load(files.head, map_location="cpu", weights_only=True)
    else:
        from safetensors.torch import load_file

        head = load_file(str(files.head))
    weight = next(v for k, v in head.items() if k.endswith("weight"))
    bias = next(v for k, v in head.items() if k.endswith("bias"))
    np.savez(tmp / "head.npz", weight=weight.float().numpy(), bias=bias.float().numpy())
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    return {"exported_s": round(time.time() - t0, 1)}


def exporter_digest() -> str:
    """A digest of the ``rewardrt.export`` sources (with the quantization code they call)."""
    import rewardrt.export

    h = hashlib.sha256()
    root = Path(rewardrt.export.__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:10]


def prepare(explicit: Path | None, out: Path, plan: BenchPlan, pairs: str | None, tick=lambda _: None) -> Prepared:
    """Every engine's spec, exporting what the cache lacks. ``tick(label)`` reports each step."""
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    tick("checkpoint")
    choice = choose_checkpoint(explicit, cache, pairs)
    from rewardrt.export.checkpoint import locate, read_config

    files = locate(choice.path)
    config = read_config(files)
    max_length = min(512, config["max_position_embeddings"])
    folder = cache / choice.digest[:16]
    folder.mkdir(exist_ok=True)
    from rewardrt.export.config import default_bits, host_target

    code = exporter_digest()
    tag = f"cal{plan.export_calibration}-val{plan.export_validation or 'all'}-{code}"
    host_bits = default_bits(host_target())
    paths = {"ort-fp32": folder / "ort-fp32.onnx", "ort-int8": folder / "ort-int8.onnx",
             "rewardrt-fp32": folder / f"rewardrt-fp32-val{plan.export_validation or 'all'}-{code}.onnx",
             "rewardrt-int8": folder / f"rewardrt-int8-{tag}-a7.onnx",
             HOST_INT8: folder / f"rewardrt-int8-{tag}-a{host_bits}.onnx"}
    exports: dict[str, dict] = {}

    tick("plain ONNX export")
    fresh = _plain_graphs(choice.path, paths["ort-fp32"], paths["ort-int8"])
    for name in ("ort-fp32", "ort-int8"):
        exports[name] = fresh.get(name, {"cached": str(paths[name])})

    tick("rewardrt fp32 export")
    if paths["rewardrt-fp32"].is_file():
        exports["rewardrt-fp32"] = {"cached": str(paths["rewardrt-fp32"])}
    else:
        exports["rewardrt-fp32"] = _export_rewardrt(choice.path, paths["rewardrt-fp32"], "fp32", plan, pairs)

    tick("rewardrt INT8 export")
    packaged = _default_int8_for(choice.digest) if explicit is None else None
    if packaged is not None:
        paths["rewardrt-int8"] = packaged
        exports["rewardrt-int8"] = {"packaged": str(packaged)}
    elif paths["rewardrt-int8"].is_file():
        exports["rewardrt-int8"] = {"cached": str(paths["rewardrt-int8"])}
    else:
        exports["rewardrt-int8"] = _export_rewardrt(choice.path, paths["rewardrt-int8"], "int8", plan,
                                                    pairs, target="avx2")

    tick("rewardrt INT8 export with this CPU's defaults")
    if paths[HOST_INT8].is_file():  # on a CPU without VNNI: the 7-bit export above
        exports[HOST_INT8] = {"cached": str(paths[HOST_INT8])}
    else:
        exports[HOST_INT8] = _export_rewardrt(choice.path, paths[HOST_INT8], "int8", plan, pairs)

    skipped = {name: why for name in (OPENVINO, CT2) if (why := unavailable(name))}
    paths[OPENVINO] = paths["ort-fp32"]  # OpenVINO compiles the plain traced graph
    if CT2 not in skipped:
        tick("CTranslate2 conversion")
        paths[CT2] = folder / "ct2-int8"
        try:
            exports[CT2] = _ct2_model(choice.path, paths[CT2])
        except Exception as exc:  # the converter's own errors (e.g. a config it does not know)
            log.warning("CTranslate2 conversion failed: %s", exc)
            skipped[CT2] = f"its TransformersConverter failed on this checkpoint: {type(exc).__name__}: {exc}"

    specs: dict[str, EngineSpec] = {}
    model_files: dict[str, list[str]] = {}
    for engine in ENGINES:
        if engine.name in skipped:
            continue
        if engine.kind in ("torch", "torch-dynq"):
            specs[engine.name] = EngineSpec(engine.name, engine.kind, str(choice.path), max_length=max_length)
            model_files[engine.name] = [str(files.weights), str(files.head), str(files.config),
                                        str(files.tokenizer)]
        elif engine.kind in ("ort-plain", "openvino"):
            specs[engine.name] = EngineSpec(engine.name, engine.kind, str(paths[engine.name]),
                                            tokenizer=str(files.tokenizer), max_length=max_length)
            model_files[engine.name] = [str(paths[engine.name]), str(files.tokenizer)]
        elif engine.kind == "ctranslate2":
            specs[engine.name] = EngineSpec(engine.name, engine.kind, str(paths[engine.name]),
                                            tokenizer=str(files.tokenizer), max_length=max_length)
            model_files[engine.name] = [str(p) for p in sorted(paths[engine.name].iterdir())] + [str(files.tokenizer)]
        else:
            specs[engine.name] = EngineSpec(engine.name, engine.kind, str(paths[engine.name]))
            weights = weights_file(paths[engine.name])  # a --weights-file artifact is two files
            model_files[engine.name] = [str(paths[engine.name])] + ([str(weights)] if weights else [])
    return Prepared(choice, specs, model_files, exports, skipped)
