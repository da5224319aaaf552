"""rewardrt: fast, torch-free CPU scoring with small reference-based reward models.

    from rewardrt import RewardModel
    model = RewardModel()                      # the embedded default INT8 model
    model.score("Paris.", "The capital of France is Paris.")
"""

from __future__ import annotations

from rewardrt.runtime import RankedResponse, RewardModel

__all__ = ["RewardModel", "RankedResponse", "__version__"]
__version__ = "0.1.0"
