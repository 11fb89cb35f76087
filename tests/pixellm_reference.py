"""An independent reference of PixelLM inference (``docs/pixellm.md``), for tests.

Written from §3's equations (checked against the PixelLM source, github.com/MaverickRen/PixelLM; nothing copied) with
plain torch, ``transformers.LlamaForCausalLM`` and pip ``segment_anything``'s ``TwoWayTransformer`` / ``MLP`` /
``LayerNorm2d``. It reads a PixelLM-layout state dict (``pixellm_layout.pixellm_shapes`` keys) and the CLIP source state
dict (``pixellm_layout.clip_shapes`` keys) directly and imports nothing from ``qground``.

Notation: S = image_size, g = S/patch (PixelLM-7B: 448, 32), t = (g/2)² LLM image tokens, D = llm_hidden,
Dv = vision_hidden, C = dec_dim, (h, w) = the resized content size inside the S×S input, (H, W) = the original size.

Deliberate choices, each equal to PixelLM's behaviour:

- The ViT is a manual transformers-4.31 CLIP encoder (q scaled before q·kᵀ, softmax in the run dtype, quick-GELU,
  additive ``finfo(dtype).min`` key-padding mask in every layer).
- The ViT runs once per ``generate`` call; PixelLM re-runs it every step (no KV cache), which gives identical values.
- In bf16 everything runs in bf16 like ``model.bfloat16()``, except: the quirk position table is built in fp32 and then
  cast; the 2× pooling, the level-1 dense-embedding resize and the mask resizes are done in fp32 and cast back; the
  rotary ``inv_freq`` stays fp32; the seg-fusion (1/6) and level (1/2) weights are fp32 0-dim tensors, as PixelLM's
  unregistered ``nn.Parameter`` lists are (a 0-dim fp32 tensor times a bf16 tensor gives bf16, so the seg fusion
  accumulates in bf16; each level term is rounded to bf16 before the bf16 sum).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from segment_anything.modeling import TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MLP
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from pixellm_layout import IMAGE_TOKEN_INDEX, LEVELS, Sizes, is_llm_key

PIXEL_MEAN = (123.675, 116.28, 103.53)  # ImageNet mean/std on 0..255 (PixelLM's SAM-style preprocess)
PIXEL_STD = (58.395, 57.12, 57.375)
SEGS_PER_LEVEL = 3  # [SEG0..2] → level 0, [SEG3..5] → level 1
SEGS_PER_GROUP = LEVELS * SEGS_PER_LEVEL
# PixelLM's multiseg_scalar: 1/len(seg_token_idx) = 1/6 per token (PixelLM.py:282-287; seg_token_idx lists all six ids,
# chat.py:90-93), of which the 3 of each level are summed (PixelLM.py:714-717) — not 1/3.
SEG_WEIGHT = 1 / SEGS_PER_GROUP
CLIP_LN_EPS = 1e-5


def resize_longest_side(h: int, w: int, size: int) -> tuple[int, int]:
    """SAM's ``ResizeLongestSide.get_preprocess_shape``: (h, w) scaled so the longest side is ``size``, each side
    rounded half up (``int(x·scale + 0.5)``)."""
    scale = size * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def quirk_position_table(native: torch.Tensor, grid: int) -> torch.Tensor:
    """PixelLM's resized CLIP position table, in fp32.

    ``native`` (1 + n², Dv), row 0 = CLS. Its first n² rows (CLS and patches 0..n²−2) are viewed as an n×n grid,
    resized bilinearly (``align_corners=False``) to ``grid``×``grid`` → G (grid², Dv); the table is ``cat(G,
    native[-1:])`` (1 + grid², Dv): CLS ← G[0], patch p ← G[p+1] for p < grid²−1, the last patch ← native[-1].
    """
    w = native.float()
    n = math.isqrt(w.shape[0] - 1)
    cells = w[:-1].T.reshape(1, w.shape[1], n, n)
    g = F.interpolate(cells, size=(grid, grid), mode="bilinear", align_corners=False)[0]
    return torch.cat([g.flatten(1).T, w[-1:]], dim=0)


def dense_pe(gaussian: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """SAM's random-Fourier PE of an h×w grid (C, h, w), computed in ``gaussian.dtype`` (grid included) as
    PixelLM's copy of ``PositionEmbeddingRandom`` does. ``gaussian``: (2, C/2)."""
    ones = torch.ones((h, w), dtype=gaussian.dtype)
    y = (ones.cumsum(dim=0) - 0.5) / h
    x = (ones.cumsum(dim=1) - 0.5) / w
    coords = 2 * torch.stack([x, y], dim=-1) - 1
    coords = 2 * math.pi * (coords @ gaussian)
    return torch.cat([coords.sin(), coords.cos()], dim=-1).permute(2, 0, 1)


def vit_valid(s: Sizes, hw: tuple[int, int]) -> torch.Tensor:
    """(g, g) bool: patch (r, c) is valid iff patch·r < h and patch·c < w (PixelLM: nearest resize of the pixel
    mask to g×g)."""
    rows = torch.arange(s.grid) * s.patch
    return (rows[:, None] < hw[0]) & (rows[None, :] < hw[1])


def llm_valid(s: Sizes, hw: tuple[int, int]) -> torch.Tensor:
    """(g/2, g/2) bool: LLM image token (i, j) is valid iff 2·patch·i < h and 2·patch·j < w."""
    rows = torch.arange(s.grid // 2) * (2 * s.patch)
    return (rows[:, None] < hw[0]) & (rows[None, :] < hw[1])


def _sub(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


class PixelLMReference:
    """PixelLM inference from PixelLM-layout weights ``state`` + CLIP weights ``clip_state``, in ``dtype``;
    ``seg_weight`` is the weight of each seg-token embedding in its level's sum (PixelLM: 1/6).

    Pipeline: ``preprocess`` → ``vision`` (all ViT hidden states) → ``image_tokens`` → ``generate`` (greedy, full
    re-run per step) → ``seg_states`` → ``masks``.
    """

    def __init__(
        self,
        state: dict[str, torch.Tensor],
        clip_state: dict[str, torch.Tensor],
        s: Sizes,
        dtype: torch.dtype = torch.float32,
        seg_weight: float = SEG_WEIGHT,
    ) -> None:
        self.s, self.dtype = s, dtype
        d, dv, c, h2 = s.llm_hidden, s.vision_hidden, s.dec_dim, s.proj_hidden
        state = {k: v.float() for k, v in state.items()}

        vision = {k: v.float() for k, v in _sub(clip_state, "vision_model.").items()}
        native = vision.pop("embeddings.position_embedding.weight")
        self.position_table = quirk_position_table(native, s.grid).to(dtype)  # (1 + g², Dv)
        self.vit = {k: v.to(dtype) for k, v in vision.items()}

        config = LlamaConfig(
            vocab_size=s.vocab,
            hidden_size=d,
            intermediate_size=s.llm_intermediate,
            num_hidden_layers=s.llm_layers,
            num_attention_heads=s.llm_heads,
            num_key_value_heads=s.llm_heads,
            rms_norm_eps=s.rms_eps,
            max_position_embeddings=s.max_positions,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            attn_implementation="eager",
        )
        self.llm = LlamaForCausalLM(config).eval()
        llm_state = {k: v for k, v in state.items() if is_llm_key(k) and not k.endswith("rotary_emb.inv_freq")}
        self.llm.load_state_dict(llm_state, strict=True)
        rotary = self.llm.model.rotary_emb
        inv_freq = rotary.inv_freq.clone()
        self.llm.to(dtype)
        rotary.inv_freq = inv_freq  # fp32, as transformers 4.31 builds its cos/sin caches from an fp32 inv_freq

        def load(module: nn.Module, prefix: str) -> nn.Module:
            module.load_state_dict(_sub(state, prefix), strict=True)
            return module.to(dtype).eval()

        def projector() -> nn.Module:
            return nn.Sequential(nn.Linear(dv, h2), nn.GELU(), nn.Linear(h2, d))

        self.mm_projector = load(projector(), "model.mm_projector.")
        self.out_mm_projector = load(projector(), "model.out_mm_projector.")
        self.text_hidden_fcs = load(
            nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, c), nn.Dropout(0.0)), "model.text_hidden_fcs.0."
        )
        neck = nn.Sequential(
            nn.Conv2d(d, c, 1, bias=False), LayerNorm2d(c), nn.Conv2d(c, c, 3, padding=1, bias=False), LayerNorm2d(c)
        )
        self.neck = load(neck, "model.image_feature_neck.")
        md = "model.mask_decoder."
        self.transformers = load(
            nn.ModuleList(
                TwoWayTransformer(depth=2, embedding_dim=c, num_heads=s.dec_heads, mlp_dim=s.dec_mlp)
                for _ in range(LEVELS)
            ),
            md + "transformer.",
        )
        self.output_upscaling = load(
            nn.Sequential(nn.ConvTranspose2d(c, c // 8, 2, stride=2), LayerNorm2d(c // 8), nn.GELU()),
            md + "output_upscaling.",
        )
        self.upsample_2x = load(
            nn.Sequential(nn.ConvTranspose2d(c, c, 2, stride=2), LayerNorm2d(c), nn.GELU()), md + "upsample_2x."
        )
        self.hyper = load(MLP(c, c, c // 8, 3), md + "output_hypernetworks_mlps.0.")
        self.prefix_tokens = torch.cat([state[md + "iou_token.weight"], state[md + "mask_tokens.weight"]]).to(dtype)
        self.level_embed = state[md + "level_embed.weight"].to(dtype)  # (2, C)
        self.no_mask_embed = state["model.prompt_encoder.no_mask_embed.weight"].to(dtype)  # (1, C)
        self.pe = [
            state["model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"].to(dtype),
            state[md + "pe1.positional_encoding_gaussian_matrix"].to(dtype),
        ]
        self.seg_scalar = torch.ones([]) * seg_weight  # fp32 0-dim, like PixelLM's multiseg_scalar
        self.level_scalar = torch.ones([]) * (1 / LEVELS)  # fp32 0-dim, like PixelLM's multiscale_scalar

    # ---- image ---------------------------------------------------------------------------------------------------

    def preprocess(self, img: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
        """RGB image → (pixels (1, 3, S, S) float32, (h, w)): longest side to S (half-up rounding, PIL bilinear),
        ``(x − mean)/std`` on 0..255 with ImageNet values, zero-padded bottom-right."""
        size = self.s.image_size
        h, w = resize_longest_side(img.height, img.width, size)
        arr = np.asarray(img.convert("RGB").resize((w, h), Image.Resampling.BILINEAR))
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float()
        x = (x - torch.tensor(PIXEL_MEAN).view(3, 1, 1)) / torch.tensor(PIXEL_STD).view(3, 1, 1)
        return F.pad(x, (0, size - w, 0, size - h))[None], (h, w)

    def _vit_layer(self, x: torch.Tensor, i: int, bias: torch.Tensor | None) -> torch.Tensor:
        p = _sub(self.vit, f"encoder.layers.{i}.")
        b, n, dim = x.shape
        heads = self.s.vision_heads
        hd = dim // heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, heads, hd).transpose(1, 2).reshape(b * heads, n, hd)

        y = F.layer_norm(x, (dim,), p["layer_norm1.weight"], p["layer_norm1.bias"], CLIP_LN_EPS)
        q = F.linear(y, p["self_attn.q_proj.weight"], p["self_attn.q_proj.bias"]) * hd**-0.5
        k = F.linear(y, p["self_attn.k_proj.weight"], p["self_attn.k_proj.bias"])
        v = F.linear(y, p["self_attn.v_proj.weight"], p["self_attn.v_proj.bias"])
        att = torch.bmm(split(q), split(k).transpose(1, 2))
        if bias is not None:
            att = (att.view(b, heads, n, n) + bias).view(b * heads, n, n)
        out = torch.bmm(att.softmax(dim=-1), split(v))
        out = out.view(b, heads, n, hd).transpose(1, 2).reshape(b, n, dim)
        x = x + F.linear(out, p["self_attn.out_proj.weight"], p["self_attn.out_proj.bias"])
        y = F.layer_norm(x, (dim,), p["layer_norm2.weight"], p["layer_norm2.bias"], CLIP_LN_EPS)
        y = F.linear(y, p["mlp.fc1.weight"], p["mlp.fc1.bias"])
        y = y * torch.sigmoid(1.702 * y)
        return x + F.linear(y, p["mlp.fc2.weight"], p["mlp.fc2.bias"])

    @torch.no_grad()
    def vision(self, pixels: torch.Tensor, hw: tuple[int, int], key_padding: bool = True) -> list[torch.Tensor]:
        """The CLIP tower at S with the quirk table and (``key_padding``) the patch key-padding mask.

        Returns all hidden states, ``vision_layers + 1`` tensors (1, 1 + g², Dv): [0] = embeddings after
        ``pre_layrnorm``, [i] = output of layer i.
        """
        p, dt = self.vit, self.dtype
        x = F.conv2d(pixels.to(dt), p["embeddings.patch_embedding.weight"], stride=self.s.patch)
        x = torch.cat([p["embeddings.class_embedding"].view(1, 1, -1), x.flatten(2).transpose(1, 2)], dim=1)
        x = x + self.position_table[None]
        x = F.layer_norm(x, (x.shape[-1],), p["pre_layrnorm.weight"], p["pre_layrnorm.bias"], CLIP_LN_EPS)
        bias = None
        if key_padding:
            valid = torch.cat([torch.ones(1, dtype=torch.bool), vit_valid(self.s, hw).flatten()])
            bias = torch.zeros(valid.shape, dtype=dt).masked_fill(~valid, torch.finfo(dt).min).view(1, 1, 1, -1)
        hidden = [x]
        for i in range(self.s.vision_layers):
            x = self._vit_layer(x, i, bias)
            hidden.append(x)
        return hidden

    @torch.no_grad()
    def image_tokens(self, hidden: list[torch.Tensor]) -> torch.Tensor:
        """φv: ``hidden[proj_layer]`` patches → bilinear g → g/2 in fp32 (= 2×2 mean) → cast → mm_projector.
        Returns (1, t, D)."""
        f = hidden[self.s.proj_layer][:, 1:]
        n, _, ch = f.shape
        g = self.s.grid
        grid = f.transpose(1, 2).reshape(n, ch, g, g).float()
        pooled = F.interpolate(grid, size=(g // 2, g // 2), mode="bilinear", align_corners=False).to(f.dtype)
        return self.mm_projector(pooled.flatten(2).transpose(1, 2))

    # ---- LLM -----------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def embed(
        self, input_ids: list[int], image_tokens: torch.Tensor, hw: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Splice the t image tokens at the single ``IMAGE_TOKEN_INDEX`` placeholder.

        Returns (inputs_embeds (1, L, D), attention_mask (1, L) long: 1 for text, ``llm_valid`` for image tokens),
        L = len(input_ids) − 1 + t.
        """
        ids = list(input_ids)
        if ids.count(IMAGE_TOKEN_INDEX) != 1:
            raise ValueError("input_ids must hold exactly one image placeholder")
        at = ids.index(IMAGE_TOKEN_INDEX)
        table = self.llm.model.embed_tokens
        before = table(torch.tensor(ids[:at], dtype=torch.long))
        after = table(torch.tensor(ids[at + 1 :], dtype=torch.long))
        embeds = torch.cat([before, image_tokens[0].to(self.dtype), after])[None]
        valid = llm_valid(self.s, hw).flatten().long()
        mask = torch.cat([torch.ones(at, dtype=torch.long), valid, torch.ones(len(after), dtype=torch.long)])[None]
        return embeds, mask

    @torch.no_grad()
    def llm_forward(self, embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One full, uncached pass with positions ``arange(L)``. Returns (logits (1, L, V), last hidden (1, L, D),
        the post-final-norm states)."""
        positions = torch.arange(embeds.shape[1])[None]
        out = self.llm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False)
        hidden = out.last_hidden_state
        return self.llm.lm_head(hidden), hidden

    @torch.no_grad()
    def generate(
        self,
        input_ids: list[int],
        pixels: torch.Tensor,
        hw: tuple[int, int],
        max_new_tokens: int,
        eos: int = 2,
        forced: list[int] | None = None,
    ) -> tuple[list[int], torch.Tensor]:
        """Greedy decoding as PixelLM's ``evaluate`` runs it (no cache: every step re-runs the whole expanded
        sequence with the image mask); argmax over all vocab rows, stop after ``eos`` or ``max_new_tokens``. With
        ``forced``, step k takes ``forced[k]`` (while k < len(forced)) instead of the argmax.

        Returns (new ids, last hidden (L, D)): the post-final-norm states of the last step's input, i.e. of
        ``input_ids + new_ids[:-1]`` expanded (L = len(input_ids) + len(new_ids) − 2 + t).
        """
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be ≥ 1")
        tokens = self.image_tokens(self.vision(pixels, hw))
        new: list[int] = []
        last = None
        for step in range(max_new_tokens):
            logits, hidden = self.llm_forward(*self.embed(list(input_ids) + new, tokens, hw))
            if forced is not None and step < len(forced):
                nxt = int(forced[step])
            else:
                nxt = int(logits[0, -1].argmax())
            new.append(nxt)
            last = hidden[0]
            if nxt == eos:
                break
        return new, last

    def seg_states(self, ids: list[int], last_hidden: torch.Tensor, seg_ids: list[int]) -> torch.Tensor:
        """PixelLM's seg-state rule: ``isin(ids[1:], seg_ids)`` with t − 1 ``False`` prepended when ``ids`` holds the
        image placeholder (unexpanded ids; none when ``ids`` is already expanded), applied to ``last_hidden``
        (L, D): it picks the state *before* each seg token. ``ids``: the whole sequence (prompt + new ids).

        Returns (n_groups, 6, D) in occurrence order; (0, 6, D) when the seg count is not a multiple of 6.
        """
        ids_t = torch.tensor(list(ids), dtype=torch.long)
        offset = self.s.tokens - 1 if bool((ids_t == IMAGE_TOKEN_INDEX).any()) else 0
        sel = torch.isin(ids_t[1:], torch.tensor(list(seg_ids), dtype=torch.long))
        sel = torch.cat([torch.zeros(offset, dtype=torch.bool), sel])
        if sel.shape[0] != last_hidden.shape[0]:
            raise ValueError(f"{sel.shape[0]} selectable positions but {last_hidden.shape[0]} hidden states")
        states = last_hidden[sel]
        if states.shape[0] % SEGS_PER_GROUP:
            states = states[:0]
        return states.reshape(-1, SEGS_PER_GROUP, last_hidden.shape[-1])

    # ---- pixel decoder -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def seg_embeddings(self, seg_states: torch.Tensor) -> torch.Tensor:
        """text_hidden_fcs on (n, 6, D) → view (n, 2, 3, C) → Σ_k w·e_k (w = ``seg_weight``, PixelLM: 1/6) with
        PixelLM's fp32 0-dim weights, starting from ``e_0·0``. Returns (n, 2, C)."""
        e = self.text_hidden_fcs(seg_states.to(self.dtype))
        e = e.view(e.shape[0], LEVELS, SEGS_PER_LEVEL, e.shape[-1])
        fused = e[:, :, 0] * 0
        for k in range(SEGS_PER_LEVEL):
            fused = fused + self.seg_scalar * e[:, :, k]
        return fused

    @torch.no_grad()
    def decoder_features(self, hidden: list[torch.Tensor]) -> torch.Tensor:
        """out_mm_projector on all g² patches of ``hidden[dec_layers[0]]`` and ``hidden[dec_layers[1]]`` → (2, D, g, g)
        → the shared neck. Returns (2, C, g, g)."""
        g = self.s.grid
        feats = torch.stack([self.out_mm_projector(hidden[i][:, 1:]) for i in self.s.dec_layers]).flatten(1, 2)
        grid = feats.transpose(1, 2).reshape(LEVELS, feats.shape[-1], g, g)
        return self.neck(grid)

    @torch.no_grad()
    def decode(self, seg: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """The two-level decoder. ``seg`` (n, 2, C), ``feats`` (2, C, g, g).

        Level l: tokens ``[iou, mask×4, seg_l] + level_embed[l]``; src = feats[0] (level 0) or ``upsample_2x(feats[1])
        · (sigmoid(M0) + 1)`` (level 1); ``+ no_mask_embed`` (bilinearly resized at level 1); PE ``pe_layer`` /
        ``pe1``; ``TwoWayTransformer[l]``; ``M_l = hyper[0](q[:, 1]) · output_upscaling(keys)`` (2g, then 4g).
        Returns ``Σ_l ½·bilinear(M_l → 4g)`` (n, 1, 4g, 4g).
        """
        n, c, g = seg.shape[0], self.s.dec_dim, self.s.grid
        dense0 = self.no_mask_embed.reshape(1, c, 1, 1).expand(n, c, g, g)
        out = torch.zeros((n, 1, 4 * g, 4 * g), dtype=feats.dtype)
        prev = None
        for level in range(LEVELS):
            tokens = torch.cat([self.prefix_tokens[None].expand(n, -1, -1), seg[:, level : level + 1]], dim=1)
            tokens = tokens + self.level_embed[level].view(1, 1, c)
            src = feats[level : level + 1].repeat_interleave(n, dim=0)
            dense = dense0
            if level > 0:
                src = self.upsample_2x(src)
                src = (prev.mean(dim=1, keepdim=True).sigmoid() + 1) * src
                size = tuple(src.shape[-2:])
                dense = F.interpolate(dense0.float(), size=size, mode="bilinear", align_corners=False).to(dense0.dtype)
            _, _, h, w = src.shape
            src = src + dense
            pos = dense_pe(self.pe[level], h, w)[None].repeat_interleave(n, dim=0)
            queries, keys = self.transformers[level](src, pos, tokens)
            up = self.output_upscaling(keys.transpose(1, 2).reshape(n, c, h, w))
            m = (self.hyper(queries[:, 1])[:, None] @ up.flatten(2)).view(n, 1, *up.shape[-2:])
            resized = F.interpolate(m.float(), size=(4 * g, 4 * g), mode="bilinear", align_corners=False)
            out = out + (self.level_scalar * resized).to(m.dtype)
            prev = m
        return out

    @torch.no_grad()
    def masks(
        self,
        seg_states: torch.Tensor,
        hidden: list[torch.Tensor],
        hw: tuple[int, int],
        original_size: tuple[int, int],
    ) -> dict[str, torch.Tensor]:
        """Masks for (n, 6, D) seg states, given the ViT ``hidden`` states of the same image.

        Returns ``logits_input`` (n, S, S) float32 (before the crop), ``logits`` (n, H, W) float32 (PixelLM casts the
        final logits to the run dtype; these are those values) and ``masks`` (n, H, W) bool = logits > 0.
        """
        if seg_states.shape[0] == 0:
            return _empty(max(hw), original_size)
        low = self.decode(self.seg_embeddings(seg_states), self.decoder_features(hidden))
        target = max(hw)
        full = F.interpolate(low.float(), size=(target, target), mode="bilinear", align_corners=False)
        crop = full[..., : hw[0], : hw[1]]
        logits = F.interpolate(crop, size=tuple(original_size), mode="bilinear", align_corners=False)
        logits = logits.to(low.dtype).float()[:, 0]
        return {"logits_input": full[:, 0], "logits": logits, "masks": logits > 0}


def _empty(size: int, original_size: tuple[int, int]) -> dict[str, torch.Tensor]:
    return {
        "logits_input": torch.zeros((0, size, size)),
        "logits": torch.zeros((0, *original_size)),
        "masks": torch.zeros((0, *original_size), dtype=torch.bool),
    }
