"""Reward functions in the shapes RL trainers call them: TRL ``GRPOTrainer``, verl and OpenRLHF.

Nothing here imports a framework (or torch): each adapter takes the plain Python values the trainer
passes and returns plain floats, so the same code runs inside any of them.

    from rewardrt.runtime.integrations.rl import trl_reward_fn
    trainer = GRPOTrainer(..., reward_funcs=trl_reward_fn("model.onnx", reference_column="answer"))

verl and OpenRLHF load a function by file path and call it without a model argument; those adapters
use a process-wide default model, loaded on first call from ``$REWARDRT_MODEL`` (a .onnx path) or the
embedded model, and replaceable with :func:`set_default_model`.

Every RL path removes chat-template special tokens (``<|im_end|>``, ``<|eot_id|>``, ``</s>``, ...) from
the response before it is tokenized: trainers that decode with special tokens kept (OpenRLHF) would
otherwise score them as text. :data:`rewardrt.runtime.chat.CHAT_TOKENS` is the built-in list; each adapter takes
``strip_tokens=`` (a list, or None to keep the text as is), the function-style ones (verl, OpenRLHF)
also ``$REWARDRT_STRIP_TOKENS`` (see :func:`parse_strip_tokens`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rewardrt.runtime.api import DEFAULT_BATCH_SIZE, RewardModel
from rewardrt.runtime.chat import (
    CHAT_TOKENS,
    ENV_STRIP_TOKENS,
    StripTokens,
    check_strip_tokens,
    env_strip_tokens,
    strip_chat_tokens,
    strip_prompt,
)

logger = logging.getLogger(__name__)

ENV_MODEL = "REWARDRT_MODEL"
ModelLike = RewardModel | str | Path


def completion_text(completion: Any, where: str = "completion") -> str:
    """The text of one TRL completion: a str as is, or a conversation's reply.

    A conversational completion is a list of ``{"role", "content"}`` messages (or one such dict); the
    reply is the last ``assistant`` message, or, when no message carries a role, the last message.
    ``content`` may be a str, None (a reply made only of tool calls: empty text) or a list of parts
    (str, or ``{"type": "text", "text": ...}``; other parts such as images are skipped).
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        completion = [completion]
    if isinstance(completion, Sequence) and not isinstance(completion, (bytes, bytearray)):
        messages = list(completion)
        for i, message in enumerate(messages):
            if not isinstance(message, Mapping):
                raise TypeError(f"{where}[{i}] must be a chat message dict with 'content', "
                                f"got {type(message).__name__}")
        if not messages:
            raise ValueError(f"{where} is an empty conversation; expected at least the model's reply")
        if all("role" not in m for m in messages):
            return _content_text(messages[-1], f"{where}[{len(messages) - 1}]")
        for i in range(len(messages) - 1, -1, -1):
            if messages[i].get("role") == "assistant":
                return _content_text(messages[i], f"{where}[{i}]")
        roles = sorted({str(m.get("role")) for m in messages})
        raise ValueError(f"{where} is a conversation without an assistant message (roles: "
                         f"{', '.join(roles)}); expected the model's reply as role 'assistant'")
    raise TypeError(f"{where} must be a str or a list of chat messages, got {type(completion).__name__}")


def _content_text(message: Mapping, where: str) -> str:
    if "content" not in message:
        raise ValueError(f"{where} has no 'content' (keys: {', '.join(map(str, message))})")
    content = message["content"]
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        texts = []
        for j, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Mapping):
                if part.get("type", "text") != "text":
                    continue
                text = part.get("text")
                if not isinstance(text, str):
                    raise TypeError(f"{where}.content[{j}]: a text part needs 'text' as a str, "
                                    f"got {type(text).__name__}")
                texts.append(text)
            else:
                raise TypeError(f"{where}.content[{j}] must be a str or a content part dict, "
                                f"got {type(part).__name__}")
        return "".join(texts)
    raise TypeError(f"{where}.content must be a str, None or a list of content parts, "
                    f"got {type(content).__name__}")


def _as_str(value: Any, where: str, hint: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{where} must be a str (the reference answer), got {type(value).__name__}; {hint}")
    return value


def _resolve(model: ModelLike | None) -> RewardModel:
    if model is None:
        return default_model()
    if isinstance(model, RewardModel):
        return model
    if isinstance(model, (str, Path)):
        return RewardModel(model)
    raise TypeError(f"model must be a RewardModel, a .onnx path or None, got {type(model).__name__}")


# --- the process-wide default model (verl, OpenRLHF) ---------------------------------------------

class _DefaultModel:
    """One lazily loaded model per process, shared by every adapter call (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model: RewardModel | None = None

    def get(self) -> RewardModel:
        with self._lock:
            if self._model is None:
                path = os.environ.get(ENV_MODEL) or None
                self._model = RewardModel(path)
                logger.info("rewardrt adapters: loaded %r", self._model)
            return self._model

    def set(self, model: ModelLike | None) -> None:
        loaded = None if model is None else _resolve(model)
        with self._lock:
            self._model = loaded


_DEFAULT = _DefaultModel()


def default_model() -> RewardModel:
    """The model the verl and OpenRLHF adapters use: set, or ``$REWARDRT_MODEL``, or the embedded one."""
    return _DEFAULT.get()


def set_default_model(model: ModelLike | None) -> None:
    """Use ``model`` (a RewardModel or .onnx path) for the verl and OpenRLHF adapters from now on.

    None forgets the current one, so the next call loads from ``$REWARDRT_MODEL`` again.
    """
    _DEFAULT.set(model)


# --- TRL -----------------------------------------------------------------------------------------

class TRLReward:
    """A reward function for TRL's ``GRPOTrainer(reward_funcs=...)``, as a picklable callable.

    TRL calls it as ``reward(prompts=..., completions=..., **columns)``, where ``columns`` holds every
    other dataset column (one value per completion) plus ``completion_ids``/``trainer_state``. The
    reference of each completion is taken from ``reference_column``; completions are plain strings
    or conversations (see :func:`completion_text`). ``model``: a RewardModel, a .onnx path, or None
    for the process-wide default. ``strip_tokens``: chat-template tokens removed from each completion
    (None: none). ``name``: the ``__name__`` TRL logs the reward under.

    Pickling (async GRPO, multiprocessing) carries the model's path and options, not its session:
    the receiving process loads the same artifact path (the embedded default, when ``model`` was None).
    """

    def __init__(self, model: ModelLike | None = None, reference_column: str = "answer", *,
                 batch_size: int = DEFAULT_BATCH_SIZE, strip_tokens: StripTokens = CHAT_TOKENS,
                 name: str = "rewardrt") -> None:
        if not isinstance(reference_column, str) or not reference_column:
            raise TypeError(f"reference_column must be a non-empty str, got {reference_column!r}")
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.strip_tokens = check_strip_tokens(strip_tokens)
        self.model = _resolve(model)
        self.reference_column = reference_column
        self.batch_size = batch_size
        self.__name__ = name  # TRL logs each reward function under its __name__

    def __call__(self, prompts: Sequence[Any] | None = None, completions: Sequence[Any] | None = None,
                 **columns: Any) -> list[float]:
        if completions is None:
            raise TypeError("the reward needs completions=; GRPOTrainer passes prompts= and completions=")
        column = self.reference_column
        if column not in columns:
            given = sorted(k for k in columns if k not in ("completion_ids", "trainer_state"))
            raise ValueError(
                f"dataset column {column!r} (the reference answers) was not passed to the reward "
                f"function; columns passed: {given}; add it to the dataset or set reference_column="
            )
        references = columns[column]
        if isinstance(references, str) or len(references) != len(completions):
            count = "a str" if isinstance(references, str) else f"{len(references)} values"
            raise ValueError(f"column {column!r} gave {count} for {len(completions)} completions; "
                             "expected one reference per completion")
        hint = f"column {column!r} must hold the reference answer as text"
        refs = [_as_str(r, f"{column}[{i}]", hint) for i, r in enumerate(references)]
        texts = [strip_chat_tokens(completion_text(c, f"completions[{i}]"), self.strip_tokens)
                 for i, c in enumerate(completions)]
        return self.model.batch_score(texts, refs, batch_size=self.batch_size)

    def __repr__(self) -> str:
        return (f"TRLReward({self.model!r}, reference_column={self.reference_column!r}, "
                f"strip_tokens={len(self.strip_tokens)} tokens)")


def trl_reward_fn(model: ModelLike | None = None, reference_column: str = "answer", *,
                  batch_size: int = DEFAULT_BATCH_SIZE, strip_tokens: StripTokens = CHAT_TOKENS,
                  name: str = "rewardrt") -> TRLReward:
    """A :class:`TRLReward` (kept as the factory name the README has always shown)."""
    return TRLReward(model, reference_column, batch_size=batch_size, strip_tokens=strip_tokens, name=name)


# --- verl ----------------------------------------------------------------------------------------

_VERL_HINT = "verl passes reward_model.ground_truth from the dataset; store the reference answer there"


class _FromEnv:
    """The default of the function-style adapters' ``strip_tokens``: ``$REWARDRT_STRIP_TOKENS`` when
    set (see :func:`parse_strip_tokens`), else :data:`CHAT_TOKENS`."""

    def __repr__(self) -> str:
        return f"${ENV_STRIP_TOKENS} or CHAT_TOKENS"


FROM_ENV = _FromEnv()


def _strip_setting(strip_tokens: StripTokens | _FromEnv) -> tuple[str, ...]:
    return env_strip_tokens() if isinstance(strip_tokens, _FromEnv) else check_strip_tokens(strip_tokens)


def _verl_batch(solution_strs: Sequence[Any], ground_truths: Sequence[Any],
                strip_tokens: StripTokens | _FromEnv) -> list[dict[str, Any]]:
    solutions = list(solution_strs)
    truths = list(ground_truths)
    if len(truths) != len(solutions):
        raise ValueError(f"got {len(truths)} ground_truths for {len(solutions)} solution_strs; "
                         "expected one per solution")
    for i, s in enumerate(solutions):
        if not isinstance(s, str):
            raise TypeError(f"solution_strs[{i}] must be a str, got {type(s).__name__}")
    refs = [_as_str(t, f"ground_truths[{i}]", _VERL_HINT) for i, t in enumerate(truths)]
    tokens = _strip_setting(strip_tokens)
    texts = [strip_chat_tokens(s, tokens) for s in solutions]
    model = default_model()
    scores = model.batch_score(texts, refs)
    truncated = model.truncated(texts, refs)
    return [{"score": s, "truncated": t} for s, t in zip(scores, truncated)]


def compute_score(data_source: Any, solution_str: str, ground_truth: Any, extra_info: Any = None, *,
                  strip_tokens: StripTokens | _FromEnv = FROM_ENV, **kwargs: Any) -> dict[str, Any]:
    """verl's ``custom_reward_function`` (default name ``compute_score``): one response's result,
    ``{"score": float, "truncated": bool}``. verl takes ``score`` as the reward and logs the other
    keys; :func:`compute_score_float` is the plain-float form for releases that expect a number.

    ``data_source`` and ``extra_info`` are accepted and ignored; ``ground_truth`` is the reference;
    ``strip_tokens`` may come from ``custom_reward_function.reward_kwargs``.
    """
    if not isinstance(solution_str, str):
        raise TypeError(f"solution_str must be a str, got {type(solution_str).__name__}")
    _as_str(ground_truth, "ground_truth", _VERL_HINT)
    return _verl_batch([solution_str], [ground_truth], strip_tokens)[0]


def compute_score_float(data_source: Any, solution_str: str, ground_truth: Any, extra_info: Any = None, *,
                        strip_tokens: StripTokens | _FromEnv = FROM_ENV, **kwargs: Any) -> float:
    """:func:`compute_score`'s score alone, for verl releases that expect a float."""
    return compute_score(data_source, solution_str, ground_truth, extra_info, strip_tokens=strip_tokens)["score"]


def compute_score_batch(data_sources: Sequence[Any], solution_strs: Sequence[str],
                        ground_truths: Sequence[Any], extra_infos: Sequence[Any] | None = None, *,
                        strip_tokens: StripTokens | _FromEnv = FROM_ENV, **kwargs: Any) -> list[dict[str, Any]]:
    """verl's batch form (``reward_model.reward_manager=batch``): one ``{"score", "truncated"}`` per
    solution, in order. verl passes numpy object arrays; any sequence works."""
    return _verl_batch(solution_strs, ground_truths, strip_tokens)


def compute_score_batch_float(data_sources: Sequence[Any], solution_strs: Sequence[str],
                              ground_truths: Sequence[Any], extra_infos: Sequence[Any] | None = None, *,
                              strip_tokens: StripTokens | _FromEnv = FROM_ENV, **kwargs: Any) -> list[float]:
    """:func:`compute_score_batch`'s scores alone, for verl releases that expect floats."""
    return [r["score"] for r in _verl_batch(solution_strs, ground_truths, strip_tokens)]


# --- OpenRLHF ------------------------------------------------------------------------------------

def openrlhf_rewards(model: RewardModel, queries: Sequence[str], prompts: Sequence[str] | None,
                     labels: Sequence[Any], strip_tokens: StripTokens = CHAT_TOKENS) -> dict[str, Any]:
    """``{"rewards", "scores", "extra_logs"}`` for OpenRLHF's (query, prompt, label) triples.

    The response is each query with its prompt prefix and ``strip_tokens`` removed
    (:func:`strip_prompt`); the label is the reference answer. ``rewards`` and ``scores`` are the
    same [0, 1] scores as plain lists.
    """
    tokens = check_strip_tokens(strip_tokens)
    queries = list(queries)
    labels = list(labels)
    prompts = [None] * len(queries) if prompts is None else list(prompts)
    if not len(queries) == len(prompts) == len(labels):
        raise ValueError(f"got {len(queries)} queries, {len(prompts)} prompts and {len(labels)} labels; "
                         "expected one of each per sample")
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise TypeError(f"queries[{i}] must be a str, got {type(q).__name__}")
    hint = "OpenRLHF passes the dataset field named by --label_key; point it at the reference answers"
    refs = [_as_str(label, f"labels[{i}]", hint) for i, label in enumerate(labels)]
    responses = [strip_prompt(q, p if isinstance(p, str) else None, tokens) for q, p in zip(queries, prompts)]
    scores = model.batch_score(responses, refs)
    return {"rewards": scores, "scores": list(scores), "extra_logs": {}}


def reward_func(queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any], *,
                strip_tokens: StripTokens | _FromEnv = FROM_ENV, **kwargs: Any) -> dict[str, Any]:
    """OpenRLHF's Python-file reward (``--remote_rm_url reward.py``), using the default model and
    ``$REWARDRT_STRIP_TOKENS`` (else :data:`CHAT_TOKENS`).

    Returns a dict of plain lists, which current OpenRLHF reads exactly like the JSON of a remote
    reward server; runtime/integrations/README.md's OpenRLHF section has a two-line tensor wrapper for releases that
    need tensors.
    """
    return openrlhf_rewards(default_model(), queries, prompts, labels, _strip_setting(strip_tokens))
