"""The choice head: which image of a prompt does an answer pick? A pointer over the prompt's images.

A Co-Instruct-style answer spells the picked image's place ("The second image."), so the LLM would have to route one
image's evidence to a place word through attention over all images. A small LLM does not learn that for several
question kinds at once (docs/experiments/2026-12-01-comparisons-before-the-choice-head.md). Here the state that
predicts ``[CHOICE]`` is a query that only has to say *what* is asked (which quality, which direction); each image
is a key; the scores are their scaled dot products.
A key is either the LLM's state at the image's last token or, with ``config.choice_keys`` "readout", the image's own
whole-image readout scores: then an image's score is a question-dependent linear function of its own evidence, the
same whatever its place in the prompt or the images before it.
"""

from __future__ import annotations

import torch
from torch import nn


class ChoiceHead(nn.Module):
    """``query`` ``(D,)`` (the LLM state predicting ``[CHOICE]``) and ``keys`` ``(n, key_dim)`` (one per image of the
    prompt, in prompt order; ``key_dim`` defaults to D, LLM states) → ``(n,)`` logits over the images."""

    def __init__(self, llm_dim: int, key_dim: int | None = None, dim: int = 128) -> None:
        super().__init__()
        self.query = nn.Linear(llm_dim, dim)
        self.key = nn.Linear(key_dim or llm_dim, dim)
        self.scale = dim**-0.5

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        if query.dim() != 1 or keys.dim() != 2 or keys.shape[0] == 0:
            raise ValueError(
                f"the choice head takes one (D,) query and (n ≥ 1, key_dim) keys, got {query.shape} and {keys.shape}"
            )
        return (self.key(keys) @ self.query(query)) * self.scale
