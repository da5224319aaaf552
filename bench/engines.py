"""The engines compared, and how a worker process loads and calls each one.

Every engine answers the same two calls, ``score_one`` (batch-1 latency) and ``batch_score``, and
runs in a process of its own (rewardrt.bench.worker), so the ORT engines never import torch.
Heavy imports happen inside ``load`` only.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import asdict, dataclass

REFERENCE = "torch-ref"
HOST_INT8 = "rewardrt-int8-host"  # what `rewardrt export --precision int8` gives on the bench's CPU
OPENVINO = "openvino-fp32"
CT2 = "ct2-int8"


@dataclass(frozen=True)
class EngineInfo:
    name: str
    label: str
    kind: str                        # torch | torch-dynq | ort-plain | rewardrt | openvino | ctranslate2
    needs: tuple[str, ...]           # distributions a user installs to score with it
    how: str                         # one line for the report


ENGINES: tuple[EngineInfo, ...] = (
    EngineInfo(REFERENCE, "PyTorch reference (fp32)", "torch",
               ("torch", "transformers", "tokenizers", "safetensors", "numpy"),
               "neural-txt's NeuralTxtReward path as upstream loads it: transformers tokenizer, fp32, "
               "transformers' default attention (SDPA), batches of 64 in input order padded to the longest"),
    EngineInfo("torch-dynq", "PyTorch dynamic INT8", "torch-dynq",
               ("torch", "transformers", "tokenizers", "safetensors", "numpy"),
               "the reference with torch.ao.quantization.quantize_dynamic(net, {Linear}, qint8)"),
    EngineInfo("ort-fp32", "ONNX Runtime fp32 (plain export)", "ort-plain",
               ("onnxruntime", "tokenizers", "numpy"),
               "the torch net traced to ONNX as is; batches of 64 in input order padded to the longest"),
    EngineInfo("ort-int8", "ONNX Runtime INT8 (quantize_dynamic)", "ort-plain",
               ("onnxruntime", "tokenizers", "numpy"),
               "the traced graph through onnxruntime.quantization.quantize_dynamic (QInt8, per channel)"),
    EngineInfo("rewardrt-fp32", "rewardrt fp32", "rewardrt", ("rewardrt",),
               "rewardrt.RewardModel on the fused fp32 artifact"),
    EngineInfo("rewardrt-int8", "rewardrt INT8", "rewardrt", ("rewardrt",),
               "rewardrt.RewardModel on the portable INT8 artifact: the embedded default model's "
               "when the checkpoint is the default model, else exported with --activation-bits 7 "
               "(exact on every x86 CPU)"),
    EngineInfo(HOST_INT8, "rewardrt INT8, exported here", "rewardrt", ("rewardrt",),
               "rewardrt.RewardModel on `rewardrt export --precision int8` of the checkpoint with "
               "default settings on this CPU (activation bits auto: 8 with VNNI, else 7)"),
    EngineInfo(OPENVINO, "OpenVINO fp32 (plain export)", "openvino", ("openvino", "tokenizers", "numpy"),
               "the plain traced graph (as ONNX Runtime fp32) compiled by OpenVINO for the CPU with its "
               "default settings (its own precision hint: bf16 where the CPU has it); batches of 64 in "
               "input order padded to the longest"),
    EngineInfo(CT2, "CTranslate2 INT8", "ctranslate2", ("ctranslate2", "tokenizers", "numpy"),
               "the encoder converted by ctranslate2's TransformersConverter (quantization int8) and run "
               "by ctranslate2.Encoder (compute type int8); masked mean⊕max pooling, head and clamp in "
               "numpy; batches of 64 in input order"),
)
# Peers that need a wheel the bench's extra does not install: measured where it imports, else
# skipped with the reason (rewardrt.bench.engines.unavailable).
OPTIONAL = {OPENVINO: "openvino", CT2: "ctranslate2"}
BY_NAME = {e.name: e for e in ENGINES}


@dataclass(frozen=True)
class EngineSpec:
    """What a worker needs to load one engine (JSON-serialisable)."""

    name: str
    kind: str
    model: str                       # checkpoint folder (torch kinds), .onnx file, or ctranslate2 model folder
    tokenizer: str = ""              # tokenizer.json (ort-plain, openvino, ctranslate2)
    max_length: int = 512

    def to_dict(self) -> dict:
        return asdict(self)


class LoadedEngine:
    """Common calls over the four kinds; ``references`` and ``responses`` are parallel lists."""

    threads = 0

    def score_one(self, reference: str, response: str) -> float:
        return self.batch_score([reference], [response], 1)[0]

    def batch_score(self, references: Sequence[str], responses: Sequence[str], batch_size: int) -> list[float]:
        raise NotImplementedError

    def set_threads(self, threads: int) -> None:
        raise NotImplementedError


class TorchEngine(LoadedEngine):
    def __init__(self, spec: EngineSpec, threads: int) -> None:
        import torch

        from rewardrt.export.reference import TorchReward

        torch.set_num_threads(threads)
        self.threads = threads
        # attention as upstream NeuralTxtReward loads it (transformers' default), not the eager form
        # the export traces: eager is ~1.1x slower at batch 1 and ~1.7x on RL-shaped batches here
        self.model = TorchReward(spec.model, max_length=spec.max_length, attn_implementation=None)
        if spec.kind == "torch-dynq":
            from torch.ao.quantization import quantize_dynamic

            self.model.net = quantize_dynamic(self.model.net, {torch.nn.Linear}, dtype=torch.qint8).eval()

    def score_one(self, reference: str, response: str) -> float:
        return self.model.score(response, reference)

    def batch_score(self, references, responses, batch_size):
        return self.model.batch_score(list(responses), list(references), batch_size=batch_size)

    def set_threads(self, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.threads = threads


class RewardrtEngine(LoadedEngine):
    def __init__(self, spec: EngineSpec, threads: int) -> None:
        self.spec = spec
        self.model = None
        self.set_threads(threads)

    def set_threads(self, threads: int) -> None:
        from rewardrt.runtime import RewardModel

        if threads == self.threads:
            return
        self.threads = threads
        self.model = None
        gc.collect()
        self.model = RewardModel(self.spec.model, threads=threads)

    def score_one(self, reference: str, response: str) -> float:
        return self.model.score(response, reference)

    def batch_score(self, references, responses, batch_size):
        return self.model.batch_score(list(responses), list(references), batch_size=batch_size)


def unavailable(name: str) -> str | None:
    """Why an optional peer engine cannot run here (its wheel does not import), or None."""
    import importlib

    module = OPTIONAL.get(name)
    if module is None:
        return None
    try:
        importlib.import_module(module)
    except Exception as exc:  # an ImportError, or a wheel built for another CPU or Python
        return f"{module} does not import ({type(exc).__name__}: {exc}); pip install '.[bench-peers]'"
    return None


class _PaddedBatches(LoadedEngine):
    """Engines fed the runtime's token ids and truncation (so only the graph and its executor
    differ), batches in input order padded to the longest. A subclass loads its executor in
    ``_load`` and names the attributes holding it in ``_handles``."""

    _handles: tuple[str, ...] = ()

    def __init__(self, spec: EngineSpec, threads: int) -> None:
        from pathlib import Path

        from rewardrt.runtime.tokenizer import PairEncoder, load_tokenizer

        self.spec = spec
        self.encoder = PairEncoder(load_tokenizer(Path(spec.tokenizer).read_text(encoding="utf-8"), spec.tokenizer),
                                   spec.max_length)
        self.set_threads(threads)

    def set_threads(self, threads: int) -> None:
        if threads == self.threads:
            return
        self.threads = threads
        for name in self._handles:
            setattr(self, name, None)
        gc.collect()  # drop the old executor first, so peak RSS never holds two
        self._load(threads)

    def _load(self, threads: int) -> None:
        raise NotImplementedError

    def forward(self, input_ids, mask) -> list[float]:
        raise NotImplementedError

    def batch_score(self, references, responses, batch_size):
        from rewardrt.runtime.tokenizer import pad

        references, responses = list(references), list(responses)
        out: list[float] = []
        for start in range(0, len(references), batch_size):
            ids, mask = pad(self.encoder(references[start : start + batch_size],
                                         responses[start : start + batch_size])[0])
            out.extend(self.forward(ids, mask))
        return out


class PlainOrtEngine(_PaddedBatches):
    """An ONNX graph exported by hand, in a session with rewardrt's own options (a fair race)."""

    _handles = ("session",)

    def _load(self, threads: int) -> None:
        from rewardrt.runtime.session import make_session

        self.session = make_session(self.spec.model, threads)
        self.inputs = [i.name for i in self.session.get_inputs()]

    def forward(self, input_ids, mask):
        feed = {"input_ids": input_ids, "attention_mask": mask}
        (scores,) = self.session.run(["score"], {n: feed[n] for n in self.inputs})
        return [float(v) for v in scores]


class OpenVinoEngine(_PaddedBatches):
    """The plain traced ONNX graph compiled by OpenVINO (latency hint, ``threads`` inference threads)."""

    _handles = ("compiled", "request")

    def _load(self, threads: int) -> None:
        import openvino as ov

        self.compiled = ov.Core().compile_model(self.spec.model, "CPU", {
            "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
        self.request = self.compiled.create_infer_request()

    def forward(self, input_ids, mask):
        result = self.request.infer({"input_ids": input_ids, "attention_mask": mask})
        return [float(v) for v in result[self.compiled.output("score")]]


class CTranslate2Engine(_PaddedBatches):
    """ctranslate2.Encoder (int8) for the encoder; pooling, head and clamp as the reference does them."""

    _handles = ("encoder_ct2",)

    def _load(self, threads: int) -> None:
        from pathlib import Path

        import ctranslate2
        import numpy as np

        self.encoder_ct2 = ctranslate2.Encoder(self.spec.model, device="cpu", compute_type="int8",
                                               intra_threads=threads, inter_threads=1)
        head = np.load(Path(self.spec.model) / "head.npz")
        self.w, self.b = head["weight"].astype(np.float32), head["bias"].astype(np.float32)

    def forward(self, input_ids, mask):
        import numpy as np

        lengths = mask.sum(axis=1)
        rows = [list(map(int, r[:n])) for r, n in zip(input_ids, lengths)]
        out = self.encoder_ct2.forward_batch(rows)
        hidden = np.asarray(out.last_hidden_state, dtype=np.float32)[:, : mask.shape[1]]
        m = mask[:, : hidden.shape[1], None].astype(np.float32)
        mean = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        mx = np.where(m > 0, hidden, -np.inf).max(axis=1)
        raw = np.concatenate([mean, mx], axis=-1) @ self.w.T + self.b
        return [float(v) for v in np.clip(raw[:, 0], 0.0, 1.0)]


def load(spec: EngineSpec, threads: int) -> LoadedEngine:
    if spec.kind in ("torch", "torch-dynq"):
        return TorchEngine(spec, threads)
    if spec.kind == "ort-plain":
        return PlainOrtEngine(spec, threads)
    if spec.kind == "rewardrt":
        return RewardrtEngine(spec, threads)
    if spec.kind == "openvino":
        return OpenVinoEngine(spec, threads)
    if spec.kind == "ctranslate2":
        return CTranslate2Engine(spec, threads)
    raise ValueError(f"engine kind must be torch, torch-dynq, ort-plain, rewardrt, openvino or ctranslate2, "
                     f"got {spec.kind!r}")
