"""Baseline scorers that need torch: cosine similarity of the base all-MiniLM-L6-v2 embeddings
(mean pooling, L2-normalised), as sentence-transformers computes them."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rewardrt.export.reference import load_encoder, load_tokenizer


def base_embedder(batch_size: int = 64):
    """``embed(texts) -> (n, 384)`` L2-normalised mean-pooled embeddings of the pinned base model."""
    from rewardrt.models.base import base_model_dir

    root = base_model_dir()
    tokenizer = load_tokenizer(root)
    encoder = load_encoder(root)

    @torch.inference_mode()
    def embed(texts: Sequence[str]) -> torch.Tensor:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding
        out = torch.empty(len(texts), encoder.config.hidden_size)
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                            truncation=True, max_length=256)
            hidden = encoder(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(mean, dim=-1)
        return out

    return embed


def base_cosine_scorer(batch_size: int = 64):
    embed = base_embedder(batch_size)

    def score(references: Sequence[str], responses: Sequence[str]) -> list[float]:
        uniq = list(dict.fromkeys([*references, *responses]))
        vectors = embed(uniq)
        index = {t: i for i, t in enumerate(uniq)}
        a = vectors[[index[t] for t in references]]
        b = vectors[[index[t] for t in responses]]
        return (a * b).sum(-1).tolist()

    return score
