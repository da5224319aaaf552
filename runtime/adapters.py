"""Reward functions in the shapes RL trainers call them: TRL ``GRPOTrainer``, verl and OpenRLHF.

Nothing here imports a framework (or torch): each adapter takes the plain Python values the trainer
passes and returns plain floats, so the same code runs inside any of them.

    from rewardrt.runtime.adapters import trl_reward_fn
    trainer = GRPOTrainer(..., reward_funcs=trl_reward_fn("model.onnx", reference_column="answer"))

verl and OpenRLHF load a function by file path and call it without a model argument; those adapters
use a process-wide default model, loaded on first call from ``$REWARDRT_MODEL`` (a .onnx path) or the
embedded model, and replaceable with :func:`set_default_model`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rewardrt.runtime.api import DEFAULT_BATCH_SIZE, RewardModel

logger = logging.getLogger(__name__)

ENV_MODEL = "REWARDRT_MODEL"

ModelLike = RewardModel | str | Path


# --- shared helpers ------------------------------------------------------------------------------

def strip_prompt(query: str, prompt: str | None) -> str:
    """The response inside an OpenRLHF ``query`` (the prompt followed by the generated response).

    Rule: if ``query`` starts with ``prompt``, the response is the rest of ``query``; otherwise (no
    prompt, or a prompt that the trainer's decode did not reproduce exactly) it is the whole query.
    """
    if prompt and query.startswith(prompt):
        return query[len(prompt):]
    return query


def completion_text(completion: Any, where: str = "completion") -> str:
    """The text of one TRL completion: a str as is, or a conversation's last assistant message.

    A conversational completion is a list of ``{"role", "content"}`` messages; content may also be a
    list of parts (``{"type": "text", "text": ...}``), whose text parts are joined.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        completion = [completion]
    if isinstance(completion, Sequence):
        for message in reversed(completion):
            if isinstance(message, Mapping) and message.get("role") == "assistant":
                return _content_text(message.get("content"), where)
        raise ValueError(f"{where} is a conversation without an assistant message; expected a list of "
                         '{"role": ..., "content": ...} messages ending with the model\'s reply')
    raise TypeError(f"{where} must be a str or a list of chat messages, got {type(completion).__name__}")


def _content_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = [p.get("text", "") for p in content
                 if isinstance(p, Mapping) and p.get("type", "text") == "text"]
        if all(isinstance(p, str) for p in parts):
            return "".join(parts)
    raise TypeError(f"{where}: the assistant message's content must be a str or a list of text parts, "
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

def trl_reward_fn(model: ModelLike | None = None, reference_column: str = "answer", *,
                  batch_size: int = DEFAULT_BATCH_SIZE) -> Callable[..., list[float]]:
    """A reward function for TRL's ``GRPOTrainer(reward_funcs=...)``.

    TRL calls it as ``reward_fn(prompts=..., completions=..., **columns)``, where ``columns`` holds
    every other dataset column (one value per completion). The reference answer of each completion is
    taken from ``reference_column``; completions are plain strings or conversations (the last
    assistant message is scored). ``model``: a RewardModel, a .onnx path, or None for the default.
    """
    if not isinstance(reference_column, str) or not reference_column:
        raise TypeError(f"reference_column must be a non-empty str, got {reference_column!r}")
    scorer = _resolve(model)

    def reward_fn(prompts: Sequence[Any] | None = None, completions: Sequence[Any] | None = None,
                  **columns: Any) -> list[float]:
        if completions is None:
            raise TypeError("reward_fn needs completions=; GRPOTrainer passes prompts= and completions=")
        if reference_column not in columns:
            given = sorted(k for k in columns if k not in ("completion_ids", "trainer_state"))
            raise ValueError(
                f"dataset column {reference_column!r} (the reference answers) was not passed to the "
                f"reward function; columns passed: {given}; add it to the dataset or set "
                "trl_reward_fn(reference_column=...)"
            )
        references = columns[reference_column]
        if isinstance(references, str) or len(references) != len(completions):
            count = "a str" if isinstance(references, str) else f"{len(references)} values"
            raise ValueError(f"column {reference_column!r} gave {count} for {len(completions)} "
                             "completions; expected one reference per completion")
        hint = f"column {reference_column!r} must hold the reference answer as text"
        refs = [_as_str(r, f"{reference_column}[{i}]", hint) for i, r in enumerate(references)]
        texts = [completion_text(c, f"completions[{i}]") for i, c in enumerate(completions)]
        return scorer.batch_score(texts, refs, batch_size=batch_size)

    reward_fn.__name__ = "rewardrt"  # TRL logs each reward function under its __name__
    reward_fn.__qualname__ = "rewardrt"
    return reward_fn


# --- verl ----------------------------------------------------------------------------------------

_VERL_HINT = "verl passes reward_model.ground_truth from the dataset; store the reference answer there"


def compute_score(data_source: Any, solution_str: str, ground_truth: Any,
                  extra_info: Any = None, **kwargs: Any) -> float:
    """verl's ``custom_reward_function`` (default name ``compute_score``): one response's score.

    ``data_source`` and ``extra_info`` are accepted and ignored; ``ground_truth`` is the reference.
    """
    if not isinstance(solution_str, str):
        raise TypeError(f"solution_str must be a str, got {type(solution_str).__name__}")
    reference = _as_str(ground_truth, "ground_truth", _VERL_HINT)
    return default_model().score(solution_str, reference)


def compute_score_batch(data_sources: Sequence[Any], solution_strs: Sequence[str],
                        ground_truths: Sequence[Any], extra_infos: Sequence[Any] | None = None,
                        **kwargs: Any) -> list[float]:
    """verl's batch form (``reward_model.reward_manager=batch``): one score per solution, in order.

    verl passes numpy object arrays; any sequence works.
    """
    solutions = list(solution_strs)
    truths = list(ground_truths)
    if len(truths) != len(solutions):
        raise ValueError(f"got {len(truths)} ground_truths for {len(solutions)} solution_strs; "
                         "expected one per solution")
    for i, s in enumerate(solutions):
        if not isinstance(s, str):
            raise TypeError(f"solution_strs[{i}] must be a str, got {type(s).__name__}")
    refs = [_as_str(t, f"ground_truths[{i}]", _VERL_HINT) for i, t in enumerate(truths)]
    return default_model().batch_score(solutions, refs)


# --- OpenRLHF ------------------------------------------------------------------------------------

def openrlhf_rewards(model: RewardModel, queries: Sequence[str], prompts: Sequence[str] | None,
                     labels: Sequence[Any]) -> dict[str, Any]:
    """``{"rewards", "scores", "extra_logs"}`` for OpenRLHF's (query, prompt, label) triples.

    The response is each query with its prompt prefix removed (:func:`strip_prompt`); the label is
    the reference answer. ``rewards`` and ``scores`` are the same [0, 1] scores as plain lists.
    """
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
    responses = [strip_prompt(q, p if isinstance(p, str) else None) for q, p in zip(queries, prompts)]
    scores = model.batch_score(responses, refs)
    return {"rewards": scores, "scores": list(scores), "extra_logs": {}}


def reward_func(queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any],
                **kwargs: Any) -> dict[str, Any]:
    """OpenRLHF's Python-file reward (``--remote_rm_url reward.py``), using the default model.

    Returns a dict of plain lists, which current OpenRLHF reads exactly like the JSON of a remote
    reward server; see SERVING.md for a two-line tensor wrapper if an older release needs tensors.
    """
    return openrlhf_rewards(default_model(), queries, prompts, labels)
