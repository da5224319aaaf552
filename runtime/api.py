"""The public API: ``RewardModel`` with neural-txt's ``NeuralTxtReward`` method names and argument
order, so switching is a one-line import change."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rewardrt.runtime.cpu import check_integer_gemm, cpu_features
from rewardrt.runtime.integrity import check_artifact
from rewardrt.runtime.scorer import Scorer
from rewardrt.runtime.session import make_session
from rewardrt.runtime.spec import ArtifactSpec, spec_from_metadata
from rewardrt.runtime.tokenizer import DEFAULT_TRUNCATION, PairEncoder, check_truncation, load_tokenizer

DEFAULT_BATCH_SIZE = 64
# Which embedded artifact ``RewardModel()`` loads: "auto" (default), "avx2" (the portable one) or
# "avx512-vnni"; see select_default_model.
DEFAULT_ARTIFACT_ENV = "REWARDRT_DEFAULT_ARTIFACT"
DEFAULT_ARTIFACT_CHOICES = ("auto", "avx2", "avx512-vnni")


def select_default_model(choice: str | None = None, features: Mapping | None = None) -> Path:
    """The embedded default artifact ``RewardModel()`` loads on this machine.

    ``choice`` (None: the ``REWARDRT_DEFAULT_ARTIFACT`` environment variable, else ``"auto"``):
    ``"auto"`` takes the VNNI artifact (target avx512-vnni: 8-bit activation codes, a plan fitted
    to VNNI kernels, faster) when the build carries one and this CPU sums uint8 x int8 products
    with VNNI (``rewardrt.runtime.cpu``), else the portable one (target avx2: 7-bit codes, exact on
    every x86 CPU). ``"avx2"`` or ``"avx512-vnni"`` names one (the VNNI artifact on a CPU without
    VNNI loads with the runtime's saturation warning). Scores of the two artifacts differ slightly
    (each is verified against the torch reference on its own), so pin one where scores must match
    across machines of different CPU types."""
    from rewardrt.models import DEFAULT_ARTIFACTS, PORTABLE_TARGET, default_model_path

    where = "choice"
    if choice is None:
        choice, where = os.environ.get(DEFAULT_ARTIFACT_ENV) or "auto", DEFAULT_ARTIFACT_ENV
    if choice not in DEFAULT_ARTIFACT_CHOICES:
        raise ValueError(f"{where} must be one of {', '.join(DEFAULT_ARTIFACT_CHOICES)}, got {choice!r}")
    if choice != "auto":
        path = default_model_path(choice)
        if not path.is_file():
            raise FileNotFoundError(f"{where}={choice} names the embedded {choice} artifact {str(path)!r}, "
                                    f"which this build does not carry; use one of "
                                    f"{', '.join(t for t in DEFAULT_ARTIFACTS if default_model_path(t).is_file())} "
                                    "or auto")
        return path
    f = cpu_features() if features is None else features
    vnni = default_model_path("avx512-vnni")
    if f.get("int8_dot_product") == "VNNI" and vnni.is_file():
        return vnni
    return default_model_path(PORTABLE_TARGET)


@dataclass(frozen=True)
class RankedResponse:
    index: int  # 0-based position in the responses given to ``rank``
    response: str
    score: float


def check_text(name: str, value: object) -> str:
    """``value`` if it is a str that can be tokenized; TypeError / ValueError naming ``name``.

    Lone surrogates (e.g. ``"\\ud800"``, which JSON ``\\ud800`` escapes and ``errors="surrogateescape"``
    decoding produce) are not Unicode text and cannot be encoded as UTF-8: refused, not replaced."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str, got {type(value).__name__}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"{name} holds a lone surrogate {value[exc.start]!r} at index {exc.start}, which is not "
                "valid Unicode text; decode your bytes with errors='replace' or remove it"
            ) from None
    return value


def _check_texts(name: str, values: Sequence[str]) -> list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a list of str, got {type(values).__name__}")
    out = list(values)
    for i, v in enumerate(out):
        check_text(f"{name}[{i}]", v)
    return out


def normalize_references(responses: Sequence[str], reference: str | Sequence[str]) -> list[str]:
    """One reference per response: a single str is repeated; a list must match in length."""
    responses = _check_texts("responses", responses)
    if isinstance(reference, str):
        return [check_text("reference", reference)] * len(responses)
    references = _check_texts("reference", reference)
    if len(references) != len(responses):
        raise ValueError(
            f"reference must be one str or one per response; got {len(references)} references "
            f"for {len(responses)} responses"
        )
    return references


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool):
        raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


class RewardModel:
    """Scores responses against reference answers on [0, 1] with an exported rewardrt model.

    ``path``: an .onnx written by ``rewardrt export``, its weights file beside it if it has one (None: the embedded default for
    this CPU, :func:`select_default_model`; ``REWARDRT_DEFAULT_ARTIFACT`` overrides the choice).
    ``threads``: intra-op threads (None: the cores available to this process).
    ``max_length``: truncate inputs to fewer tokens than the artifact's own max_length (None: keep).
    ``truncation``: how a pair longer than that is cut. ``"keep_response_end"`` (default) keeps the
    reference and the end of the response, where a rollout's final answer is; ``"keep_start"`` cuts
    the end of the joined text, as neural-txt does (``rewardrt.runtime.tokenizer``).

    One instance may be shared by many threads; calls do not mutate it. It pickles as its path and
    options (never its session): unpickling loads the same artifact path again (when ``path`` was
    None, the embedded default the receiving machine selects), so a model can be handed to worker
    processes.
    """

    def __init__(self, path: str | Path | None = None, *, threads: int | None = None,
                 max_length: int | None = None, truncation: str = DEFAULT_TRUNCATION) -> None:
        check_truncation(truncation)
        self._options = (path, threads, max_length, truncation)  # what __reduce__ pickles
        if path is None:
            path = select_default_model()
            if not path.is_file():
                raise FileNotFoundError(
                    f"the embedded default model {str(path)!r} is not installed; pass the path of "
                    "an artifact written by `rewardrt export`"
                )
        if not isinstance(path, (str, Path)):
            raise TypeError(f"path must be a str or Path, got {type(path).__name__}")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"model file {str(self.path)!r} does not exist")
        check_artifact(self.path)  # structure, format version and digest, before onnxruntime parses it
        session = make_session(self.path, threads)
        meta = session.get_modelmeta().custom_metadata_map
        spec, tokenizer_json = spec_from_metadata(meta, str(self.path))
        check_integer_gemm(spec.quantization, str(self.path))  # warns on CPUs without VNNI
        if max_length is not None:
            if not isinstance(max_length, int) or isinstance(max_length, bool) or not 3 <= max_length <= spec.max_length:
                raise ValueError(
                    f"max_length must be an int in [3, {spec.max_length}] for this model, got {max_length!r}"
                )
        self.max_length = max_length or spec.max_length
        self.truncation = truncation
        encoder = PairEncoder(load_tokenizer(tokenizer_json, str(self.path)), self.max_length, truncation)
        self._scorer = Scorer(session, encoder, spec, str(self.path))

    @property
    def spec(self) -> ArtifactSpec:
        """What the artifact says about itself (precision, fidelity at export, versions…)."""
        return self._scorer.spec

    def score(self, response: str, reference: str) -> float:
        """Score one response against a reference answer on a 0-1 scale."""
        check_text("response", response)
        check_text("reference", reference)
        return self.batch_score([response], reference)[0]

    def batch_score(self, responses: Sequence[str], reference: str | Sequence[str],
                    batch_size: int = DEFAULT_BATCH_SIZE) -> list[float]:
        """Scores of ``responses`` against one reference (str) or one reference per response.

        Order is preserved. ``batch_size`` caps the rows per forward pass; the rows are grouped by
        length first, which changes speed, never scores.
        """
        return self._run(responses, reference, batch_size, "score")

    def raw_scores(self, responses: Sequence[str], reference: str | Sequence[str],
                   batch_size: int = DEFAULT_BATCH_SIZE) -> list[float]:
        """The head's output before the [0, 1] clamp (for parity checks and calibration)."""
        return self._run(responses, reference, batch_size, "raw_score")

    def truncated(self, responses: Sequence[str], reference: str | Sequence[str]) -> list[bool]:
        """For each pair, whether it is longer than ``max_length`` tokens and so scored truncated
        (by ``truncation``)."""
        references = normalize_references(responses, reference)
        return self._scorer.encoder(references, list(responses))[1] if references else []

    def rank(self, responses: Sequence[str], reference: str | Sequence[str]) -> list[RankedResponse]:
        """Responses with their scores, highest first (ties keep input order)."""
        scores = self.batch_score(responses, reference)
        ranked = [RankedResponse(i, r, s) for i, (r, s) in enumerate(zip(responses, scores))]
        return sorted(ranked, key=lambda item: item.score, reverse=True)

    def _run(self, responses, reference, batch_size: int, output: str) -> list[float]:
        _check_batch_size(batch_size)
        references = normalize_references(responses, reference)
        if not references:
            return []
        return self._scorer.run(references, list(responses), batch_size, output).tolist()

    def __reduce__(self):
        path, threads, max_length, truncation = self._options
        # an absolute path, so the receiving process need not share this one's working directory
        return _reload, (None if path is None else str(self.path.resolve()), threads, max_length, truncation)

    def __repr__(self) -> str:
        return f"RewardModel(path={str(self.path)!r}, precision={self.spec.precision!r})"


def _reload(path: str | Path | None, threads: int | None, max_length: int | None, truncation: str) -> RewardModel:
    return RewardModel(path, threads=threads, max_length=max_length, truncation=truncation)
