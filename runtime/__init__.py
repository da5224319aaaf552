"""Torch-free runtime: spec, tokenizer, session factory, scorer and the public ``RewardModel``."""

from __future__ import annotations

from rewardrt.runtime.api import RankedResponse, RewardModel
from rewardrt.runtime.spec import ArtifactError, ArtifactSpec

__all__ = ["RewardModel", "RankedResponse", "ArtifactSpec", "ArtifactError"]
