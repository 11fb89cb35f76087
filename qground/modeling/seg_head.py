"""The segmentation-token head: LLM hidden states of one ``[SEG0]…[SEG5]`` group → one embedding per decoder level."""

from __future__ import annotations

import torch
from torch import nn


class SegHead(nn.Module):
    """``(N, levels·k, D)`` hidden states (the states that *predict* each seg token of N groups) → ``(N, levels, E)``.

    An MLP (D → D → E) maps every state; the k tokens of a level are fused by a learned softmax-weighted sum in float32
    (``fusion`` is a registered parameter, uniform at initialization).
    """

    def __init__(self, llm_dim: int, seg_dim: int, levels: int, tokens_per_level: int) -> None:
        super().__init__()
        self.levels = levels
        self.tokens_per_level = tokens_per_level
        self.mlp = nn.Sequential(nn.Linear(llm_dim, llm_dim), nn.ReLU(), nn.Linear(llm_dim, seg_dim))
        self.fusion = nn.Parameter(torch.zeros(levels, tokens_per_level))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        n, t, _ = hidden.shape
        if t != self.levels * self.tokens_per_level:
            raise ValueError(f"a seg group has {self.levels * self.tokens_per_level} tokens, got {t}")
        emb = self.mlp(hidden).view(n, self.levels, self.tokens_per_level, -1)
        weights = self.fusion.float().softmax(dim=-1)  # weighed in float32 (1/3 is not a bf16 number)
        return (emb.float() * weights[None, :, :, None]).sum(dim=2).to(emb.dtype)
