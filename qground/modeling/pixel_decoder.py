"""The light two-level pixel decoder (PixelLM-style, no SAM image encoder), built from segment-anything parts.

Frames: vision features are a ``g × g`` patch map of the padded model input (``g = image_size // patch_size``); level 0
predicts at ``2g × 2g``, level 1 at ``4g × 4g``; all cover the full padded ``image_size²`` input, top-left aligned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling import TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MLP
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from torch import nn


def check_inputs(features: tuple[torch.Tensor, torch.Tensor], seg: torch.Tensor) -> tuple[int, int]:
    """A decoder's inputs: ``features`` (N, g², Dv) pairs, ``seg`` (N, 2, C) → (N, g); ValueError when they do not
    fit."""
    n, hw, _ = features[0].shape
    g = int(hw**0.5)
    if g * g != hw:
        raise ValueError(f"pixel decoder expects a square patch map, got {hw} patches")
    if seg.shape[:2] != (n, 2):
        raise ValueError(f"seg embeddings must be ({n}, 2, C) for {n} targets, got {tuple(seg.shape)}")
    return n, g


def neck(in_dim: int, dim: int) -> nn.Sequential:
    """1×1 conv to ``dim``, LayerNorm2d, 3×3 conv, LayerNorm2d (SAM's neck)."""
    return nn.Sequential(
        nn.Conv2d(in_dim, dim, kernel_size=1, bias=False),
        LayerNorm2d(dim),
        nn.Conv2d(dim, dim, kernel_size=3, padding=1, bias=False),
        LayerNorm2d(dim),
    )


class _FloatPositionEncoding(PositionEmbeddingRandom):
    """SAM's random Fourier position encoding whose frequency matrix stays float32 when the model is cast to bf16 or
    fp16 (``segment_anything`` builds its coordinate grid in float32; the phases need the precision). ``forward``
    returns (C, h, w) float32; callers cast it to the features' dtype."""

    def _apply(self, fn, recurse=True):
        matrix = self.positional_encoding_gaussian_matrix
        super()._apply(fn, recurse)
        moved = self.positional_encoding_gaussian_matrix
        self.positional_encoding_gaussian_matrix = matrix.to(device=moved.device, dtype=torch.float32)
        return self


def upscale(dim: int) -> nn.Sequential:
    """2× transposed-conv upsampling to ``dim // 8`` channels (the hypernetwork's width)."""
    return nn.Sequential(nn.ConvTranspose2d(dim, dim // 8, kernel_size=2, stride=2), LayerNorm2d(dim // 8), nn.GELU())


class _Level(nn.Module):
    """One decoder level: a learned output token + the seg embedding attend to the features (two-way), then a
    hypernetwork turns the output token into per-pixel weights over 2× upsampled features."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.output_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.output_token, std=0.02)
        self.transformer = TwoWayTransformer(depth=depth, embedding_dim=dim, num_heads=num_heads, mlp_dim=mlp_dim)
        self.upscale = upscale(dim)
        self.hyper = MLP(dim, dim, dim // 8, 3)

    def forward(self, features: torch.Tensor, pe: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """``features`` (N, C, h, w), ``pe`` (C, h, w), ``seg`` (N, C) → mask logits (N, 2h, 2w)."""
        n, c, h, w = features.shape
        tokens = torch.cat([self.output_token.expand(n, -1, -1), seg[:, None, :]], dim=1)
        queries, keys = self.transformer(features, pe[None].expand(n, -1, -1, -1), tokens)
        up = self.upscale(keys.transpose(1, 2).reshape(n, c, h, w))
        weights = self.hyper(queries[:, 0])
        return (weights[:, None, :] @ up.flatten(2)).view(n, 2 * h, 2 * w)


class PixelDecoder(nn.Module):
    """Seg embeddings + two layers of frozen vision features → mask logits.

    ``forward(features, seg)``: ``features`` is a pair of ``(N, g², Dv)`` patch maps (level 0 from a deep layer,
    level 1 from a middle one, one row per target), ``seg`` is ``(N, 2, C)`` from ``SegHead``. Returns ``(N, 4g, 4g)``
    logits: ``w0 · up(level 0) + w1 · level 1`` (``level_weights``, 1 and 1 by default). Level 1 runs on 2×
    upsampled features gated by level 0's mask.
    """

    def __init__(
        self,
        vision_dim: int,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_dim: int,
        level_weights: tuple[float, float] = (1.0, 1.0),
    ) -> None:
        super().__init__()
        self.level_weights = tuple(level_weights)
        self.necks = nn.ModuleList([neck(vision_dim, dim), neck(vision_dim, dim)])
        self.pe = _FloatPositionEncoding(dim // 2)
        self.levels = nn.ModuleList([_Level(dim, depth, num_heads, mlp_dim) for _ in range(2)])

    def forward(self, features: tuple[torch.Tensor, torch.Tensor], seg: torch.Tensor) -> torch.Tensor:
        n, g = check_inputs(features, seg)
        maps = [layer(f.transpose(1, 2).reshape(n, -1, g, g)) for layer, f in zip(self.necks, features)]
        dtype = maps[0].dtype
        mask0 = self.levels[0](maps[0], self.pe((g, g)).to(dtype), seg[:, 0])  # (N, 2g, 2g)
        feat1 = F.interpolate(maps[1], scale_factor=2, mode="bilinear", align_corners=False)
        feat1 = feat1 * (1 + mask0.sigmoid()[:, None])
        mask1 = self.levels[1](feat1, self.pe((2 * g, 2 * g)).to(dtype), seg[:, 1])  # (N, 4g, 4g)
        up0 = F.interpolate(mask0[:, None], scale_factor=2, mode="bilinear", align_corners=False)[:, 0]
        w0, w1 = self.level_weights
        return w0 * up0 + w1 * mask1
