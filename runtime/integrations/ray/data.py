"""Ray Data: an actor pool scoring the ``reference``/``response`` columns of a dataset."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from rewardrt.runtime.api import DEFAULT_BATCH_SIZE, RewardModel

if TYPE_CHECKING:
    import ray.data

logger = logging.getLogger(__name__)

COLUMNS = ("reference", "response")
SCORE_COLUMN = "score"


def _model_path(model: str | Path | RewardModel | None) -> str | None:
    """What travels to the workers: a path (or None for the embedded default), never a session."""
    if model is None:
        return None
    if isinstance(model, RewardModel):
        return str(model.path)
    if isinstance(model, (str, Path)):
        return str(model)
    raise TypeError(f"model must be a path, a RewardModel or None, got {type(model).__name__}")


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def assigned_cpus() -> int:
    """CPUs Ray assigned to the current actor or task (rounded down, at least 1); 1 outside Ray."""
    if not ray.is_initialized():  # get_runtime_context() would start a local Ray instance
        return 1
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)
    except Exception:  # noqa: BLE001 - not connected to Ray, or an API without assigned resources
        return 1
    return max(1, math.floor(cpus))


# --- Ray Data ------------------------------------------------------------------------------------

class RayScorer:
    """A callable class for ``Dataset.map_batches``: one onnxruntime session per actor.

    ``model``: an artifact path readable on every node (None: the embedded default model, which is
    installed with rewardrt). ``threads``: intra-op threads (None: the CPUs Ray assigned to the actor,
    so ``num_cpus=2`` per actor gives 2 threads). Batches may be ``batch_format="numpy"`` (dict of
    arrays) or ``"pandas"``; they come back with every column kept and a float64 ``score`` column
    holding exactly the floats ``RewardModel.batch_score`` returns.
    """

    def __init__(self, model: str | Path | None = None, *, threads: int | None = None,
                 max_length: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.threads = threads if threads is not None else assigned_cpus()
        self.model = RewardModel(model, threads=self.threads, max_length=max_length)
        self.batch_size = batch_size

    def __call__(self, batch: Any) -> Any:
        import numpy as np

        columns = list(batch.columns) if hasattr(batch, "columns") else list(batch)
        missing = [name for name in COLUMNS if name not in columns]
        if missing:
            raise ValueError(f"the batch has no {missing[0]!r} column (columns: {columns}); "
                             f"rewardrt scores the columns {list(COLUMNS)}")
        references = self._texts(batch, "reference")
        responses = self._texts(batch, "response")
        scores = np.asarray(self.model.batch_score(responses, references, self.batch_size), dtype=np.float64)
        if hasattr(batch, "assign"):  # pandas: a new frame, the caller's is left untouched
            return batch.assign(**{SCORE_COLUMN: scores})
        return {**batch, SCORE_COLUMN: scores}

    @staticmethod
    def _texts(batch: Any, name: str) -> list[str]:
        values = batch[name]
        values = values.tolist() if hasattr(values, "tolist") else list(values)
        for i, value in enumerate(values):
            if not isinstance(value, str):
                raise TypeError(f"column {name!r} must hold strings; row {i} of this batch is "
                                f"{type(value).__name__}: {value!r:.80}")
        return values


def score_dataset(ds: ray.data.Dataset, model: str | Path | RewardModel | None = None, *,
                  actors: int | tuple[int, int] | None = None, cpus_per_actor: int = 1,
                  threads: int | None = None, batch_size: int = 256,
                  batch_format: str = "numpy", scorer: type[RayScorer] = RayScorer,
                  **map_batches_kwargs: Any) -> ray.data.Dataset:
    """``ds`` with a ``score`` column, scored by a pool of :class:`RayScorer` actors (lazy, like any
    Ray Data transform: nothing runs until the result is consumed or written).

    ``actors``: pool size; an int for a fixed pool, ``(min, max)`` to autoscale, None to autoscale
    from 1 up to what the cluster's free CPUs allow. ``cpus_per_actor``: CPUs reserved per actor,
    also its onnxruntime thread count unless ``threads`` is given; several 1-CPU actors keep every
    core busy on independent batches, more CPUs per actor mean fewer model copies in memory and
    lower latency per batch. ``batch_size``: rows handed to an actor per call; rows inside it are
    length-sorted into forward passes of at most 64 rows. A lost actor is restarted and its
    unfinished batches are retried (Ray Data's defaults; pass ``max_restarts=0`` to disable).
    ``scorer``: a :class:`RayScorer` subclass, e.g. to add columns. Other keyword arguments go to
    ``Dataset.map_batches``. When the actors take every CPU of the cluster, give the read that
    feeds them ``ray_remote_args={"num_cpus": 0}`` (as :func:`score_file` does), or the read tasks
    find no CPU left and the job waits forever.
    """
    from ray.data import ActorPoolStrategy

    _positive_int("cpus_per_actor", cpus_per_actor)
    _positive_int("batch_size", batch_size)
    if threads is not None:
        _positive_int("threads", threads)
    if batch_format not in ("numpy", "pandas"):
        raise ValueError(f"batch_format must be 'numpy' or 'pandas', got {batch_format!r}")
    if not (isinstance(scorer, type) and issubclass(scorer, RayScorer)):
        raise TypeError(f"scorer must be RayScorer or a subclass, got {scorer!r}")
    if actors is None:
        compute = ActorPoolStrategy(min_size=1, max_size=None)
    elif isinstance(actors, tuple) and len(actors) == 2:
        low, high = (_positive_int("actors", a) for a in actors)
        if low > high:
            raise ValueError(f"actors (min, max) needs min <= max, got {actors!r}")
        compute = ActorPoolStrategy(min_size=low, max_size=high)
    else:
        compute = ActorPoolStrategy(size=_positive_int("actors", actors))
    return ds.map_batches(
        scorer,
        fn_constructor_kwargs={"model": _model_path(model), "threads": threads},  # None: the actor's CPUs
        compute=compute,
        num_cpus=cpus_per_actor,
        batch_size=batch_size,
        batch_format=batch_format,
        **map_batches_kwargs,
    )


