"""PixelLM's two-level pixel decoder, for converted PixelLM / Q-Ground weights (``DecoderConfig.style`` "pixellm").

Same contract as ``qground.modeling.pixel_decoder.PixelDecoder`` and the same frames: vision features are a ``g × g``
patch map of the padded model input; level 0 predicts at ``2g × 2g``, level 1 at ``4g × 4g``. What differs from ours
is PixelLM's layout: one input MLP and one neck shared by both levels, a dense (no-mask) embedding added to the
features, a learned 2× upsampler for level 1, one random-Fourier position encoding per level (computed in its matrix's
dtype, as PixelLM's copy of segment-anything does), SAM's iou token and four mask tokens before the seg embedding with a
learned level embedding added to all six, one upscaler and one hypernetwork shared by both levels reading mask token 0
(output index 1), and the levels' logits summed with weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling import TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MLP
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from torch import nn

from qground.modeling.pixel_decoder import check_inputs, neck, upscale

NUM_PREFIX_TOKENS = 5  # SAM's iou token and its four mask tokens
MASK_TOKEN = 1  # the output index the hypernetwork reads: the first mask token


class _GridInMatrixDtype(PositionEmbeddingRandom):
    """SAM's random Fourier position encoding with the coordinate grid built in the frequency matrix's dtype (bf16
    when the model is), as PixelLM computes it. ``forward((h, w))`` → (C, h, w)."""

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        matrix = self.positional_encoding_gaussian_matrix
        grid = torch.ones((h, w), device=matrix.device, dtype=matrix.dtype)
        y = (grid.cumsum(dim=0) - 0.5) / h
        x = (grid.cumsum(dim=1) - 0.5) / w
        return self._pe_encoding(torch.stack([x, y], dim=-1)).permute(2, 0, 1)


class PixelLMDecoder(nn.Module):
    """Seg embeddings + two layers of frozen vision features → mask logits, in PixelLM's layout.

    ``forward(features, seg)``: ``features`` a pair of ``(N, g², Dv)`` patch maps (level 0, level 1; one row per
    target), ``seg`` ``(N, 2, C)`` from ``SegHead`` → ``(N, 4g, 4g)`` logits ``w0 · up(level 0) + w1 · level 1``
    (``level_weights``). Level 1 reads the upsampled level-1 features scaled by ``1 + σ(level-0 logits)``.
    """

    def __init__(
        self,
        vision_dim: int,
        input_hidden: int,
        input_dim: int,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_dim: int,
        level_weights: tuple[float, float] = (0.5, 0.5),
    ) -> None:
        super().__init__()
        self.in_proj = nn.Sequential(nn.Linear(vision_dim, input_hidden), nn.GELU(), nn.Linear(input_hidden, input_dim))
        self.neck = neck(input_dim, dim)
        self.pes = nn.ModuleList([_GridInMatrixDtype(dim // 2), _GridInMatrixDtype(dim // 2)])
        self.dense_embed = nn.Parameter(torch.randn(1, dim) * 0.02)
        self.prefix_tokens = nn.Parameter(torch.randn(NUM_PREFIX_TOKENS, dim) * 0.02)
        self.level_embed = nn.Parameter(torch.randn(2, dim) * 0.02)
        self.transformers = nn.ModuleList(
            [TwoWayTransformer(depth=depth, embedding_dim=dim, num_heads=num_heads, mlp_dim=mlp_dim) for _ in range(2)]
        )
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2), LayerNorm2d(dim), nn.GELU()
        )
        self.upscale = upscale(dim)
        self.hyper = MLP(dim, dim, dim // 8, 3)
        self.level_weights = tuple(level_weights)

    def _level(self, level: int, src: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """``src`` (N, C, h, w) features, ``seg`` (N, C) → logits (N, 2h, 2w)."""
        n, c, h, w = src.shape
        pe = self.pes[level]((h, w)).to(src.dtype)
        prefix = self.prefix_tokens.expand(n, -1, -1)
        tokens = torch.cat([prefix, seg[:, None].to(prefix.dtype)], dim=1) + self.level_embed[level]
        queries, keys = self.transformers[level](src, pe[None].expand(n, -1, -1, -1), tokens)
        up = self.upscale(keys.transpose(1, 2).reshape(n, c, h, w))
        weights = self.hyper(queries[:, MASK_TOKEN])
        return (weights[:, None, :] @ up.flatten(2)).view(n, 2 * h, 2 * w)

    def forward(self, features: tuple[torch.Tensor, torch.Tensor], seg: torch.Tensor) -> torch.Tensor:
        n, g = check_inputs(features, seg)
        maps = [self.neck(self.in_proj(f).transpose(1, 2).reshape(n, -1, g, g)) for f in features]
        dtype = maps[0].dtype
        dense = self.dense_embed.view(1, -1, 1, 1).expand(n, -1, g, g)
        mask0 = self._level(0, maps[0] + dense, seg[:, 0])  # (N, 2g, 2g)
        src1 = (mask0[:, None].sigmoid() + 1) * self.upsample(maps[1])
        dense1 = F.interpolate(dense.float(), size=src1.shape[-2:], mode="bilinear", align_corners=False).to(dtype)
        mask1 = self._level(1, src1 + dense1, seg[:, 1])  # (N, 4g, 4g)
        up0 = F.interpolate(mask0[:, None].float(), scale_factor=2, mode="bilinear", align_corners=False)[:, 0]
        w0, w1 = self.level_weights
        return w0 * up0.to(dtype) + w1 * mask1
