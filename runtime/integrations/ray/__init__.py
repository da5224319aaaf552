"""Scale-out on Ray (needs ``rewardrt[ray]``): batch scoring with Ray Data, and a Ray Serve deployment.

Batch scoring: every Ray Data actor loads the model once and scores the ``reference``/``response``
columns of the batches it is given, adding a ``score`` column::

    import ray
    from rewardrt.runtime.integrations.ray import score_dataset
    ds = ray.data.read_parquet("s3://bucket/pairs/")          # columns reference, response, ...
    scored = score_dataset(ds)                                # one actor per CPU, 1 thread each
    scored.write_parquet("s3://bucket/scored/")

Serving: ``build_app`` returns a Ray Serve application answering ``POST /score`` with the same JSON
as ``rewardrt serve`` (bodies checked by :mod:`rewardrt.runtime.protocol`), batched across
concurrent requests with ``@serve.batch``::

    from ray import serve
    from rewardrt.runtime.integrations.ray import build_app
    serve.run(build_app(replicas=4, threads=2), route_prefix="/")

Scores are bit-identical to :meth:`rewardrt.RewardModel.batch_score` on the same artifact: a pair's
score does not depend on the batch it shares (runtime/README.md "Guarantees"); Ray's batching changes
only which pairs share a model call.

This package is the only one that imports Ray; ``import rewardrt`` never does.
"""

from __future__ import annotations

try:
    import ray  # noqa: F401 - fail here, with the extras hint, not deep inside a call
except ModuleNotFoundError as exc:  # keep ``name`` so the CLI's extras hint applies
    raise ModuleNotFoundError("rewardrt.runtime.integrations.ray needs Ray; pip install 'rewardrt[ray]'", name=exc.name) from None

from rewardrt.runtime.integrations.ray.data import (
    RayScorer,
    assigned_cpus,
    score_dataset,
)
from rewardrt.runtime.integrations.ray.files import (
    BadLineError,
    RayScoringError,
    ScoredFile,
    connect,
    init_local,
    score_file,
)
from rewardrt.runtime.integrations.ray.serve import ScoreDeployment, build_app

__all__ = ["RayScorer", "score_dataset", "score_file", "connect", "init_local", "ScoreDeployment", "build_app",
           "assigned_cpus", "ScoredFile", "BadLineError", "RayScoringError"]
