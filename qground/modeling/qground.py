"""The top model: a LLaVA (vision tower + φv + Llama) whose seg-token hidden states drive a pixel decoder.

Token contract (the processor builds it, this module checks it):
- every image contributes ``config.tokens_per_image(n)`` consecutive image-token ids (n images in its sample), in
  ``pixel_values`` order;
- a grounding target is a group of ``config.seg_count`` ids ``[SEG0] … [SEG{n-1}]`` in order; its embedding comes
  from the hidden states at the positions that *predict* those tokens (position ``p - 1`` for a token at ``p``);
- a sample's targets are segmented in that sample's first image;
- with a choice head, each ``[CHOICE]`` id of a sample picks one of that sample's images: the state predicting it is
  the query; the keys are the states at each image's last image token, or with ``config.choice_keys`` "readout" each
  image's whole-image readout scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlavaForConditionalGeneration

from qground.config import QGroundConfig
from qground.modeling.choice_head import ChoiceHead
from qground.modeling.losses import dice_loss, sigmoid_bce
from qground.modeling.pixel_decoder import PixelDecoder
from qground.modeling.pixellm_decoder import PixelLMDecoder
from qground.modeling.readout import DistortionReadout
from qground.modeling.seg_head import SegHead


def mirror(maps: torch.Tensor, content_sizes: Sequence[tuple[int, int]]) -> torch.Tensor:
    """``maps`` (M, …, S, S) over padded input frames, ``content_sizes`` M (h, w) content windows (at the frame's top
    left) → a copy with each image's window mirrored left-right and its padding untouched. Its own inverse."""
    if len(content_sizes) != len(maps):
        raise ValueError(f"{len(content_sizes)} content sizes for {len(maps)} images")
    out = maps.clone()
    for i, (h, w) in enumerate(content_sizes):
        out[i, ..., :h, :w] = maps[i, ..., :h, :w].flip(-1)
    return out


def patch_validity(sizes: Sequence[tuple[int, int]], grid: int, cell: int) -> torch.Tensor:
    """Content sizes M (h, w) of padded inputs → (M, grid, grid) bool: cell (r, c) of a ``grid × grid`` map of
    ``cell``-pixel cells holds content iff r·cell < h and c·cell < w (PixelLM's padding masks)."""
    starts = torch.arange(grid) * cell
    hw = torch.tensor(list(sizes), dtype=torch.long).view(-1, 2)
    return (starts[None, :, None] < hw[:, :1, None]) & (starts[None, None, :] < hw[:, 1:, None])


def mix_probabilities(logits: torch.Tensor, other: torch.Tensor, weight: float) -> torch.Tensor:
    """Mask ``logits`` (n, S, S) and ``other`` (n, S, S), a probability map of the same masks from another predictor →
    float logits of (1 − ``weight``) · σ(logits) + ``weight`` · other: two predictors averaged in probability space."""
    return torch.logit((1 - weight) * logits.float().sigmoid() + weight * other, eps=1e-6)


@dataclass
class ImageFeatures:
    """Vision outputs for M images: ``tokens`` (M, T, D) for the LLM, ``decoder`` two (M, g², Dv) patch maps; when
    asked for (``keep_coverage``) the readout's ``coverage`` (M, classes, g·sub, g·sub) of the padded input frame, and
    when the choice head compares readouts (``choice_keys`` "readout") the ``evidence`` (M, 3·classes): each image's
    whole-image readout scores as trained (``DistortionReadout``). With two views (``mirrored``, and the
    ``content_sizes`` M (h, w)) ``mirrored`` holds the decoder's patch maps of the mirrored views, the coverage is
    (M, classes, S, S), and coverage and evidence are averages of both views. Models with a readout: ``present`` (M,
    classes) bool, the classes whose whole-image presence logit reaches its threshold (0 as trained). With
    ``config.llm_image_padding_mask``: ``token_mask`` (M, T) bool, the image tokens the LLM attends to (those pooled
    from cells that hold content)."""

    tokens: torch.Tensor
    decoder: tuple[torch.Tensor, torch.Tensor]
    coverage: torch.Tensor | None = None
    evidence: torch.Tensor | None = None
    mirrored: tuple[torch.Tensor, torch.Tensor] | None = None
    content_sizes: Sequence[tuple[int, int]] | None = None
    present: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None


@dataclass
class SegGroup:
    """One grounding target: ``sample`` index in the batch and the ``positions`` (length seg_count) of its tokens."""

    sample: int
    positions: list[int]


class QGroundModel(nn.Module):
    """Receives its parts: ``llava`` (whose ``model.multi_modal_projector`` is φv), ``seg_head``, ``pixel_decoder``,
    with ``config.readout`` the frozen ``readout`` that feeds φv, and with ``config.choice_head`` the ``choice_head``.
    """

    def __init__(
        self,
        config: QGroundConfig,
        llava: LlavaForConditionalGeneration,
        seg_head: SegHead,
        pixel_decoder: PixelDecoder | PixelLMDecoder,
        readout: DistortionReadout | None = None,
        choice_head: ChoiceHead | None = None,
    ) -> None:
        super().__init__()
        if config.token_ids.image < 0:
            raise ValueError("config.token_ids is not bound to a tokenizer; build the model with qground.builder")
        if config.readout != (readout is not None):
            raise ValueError(f"config.readout is {config.readout} but a readout was {'not ' * (readout is None)}given")
        if config.choice_head != (choice_head is not None):
            given = "a choice head was given" if choice_head is not None else "no choice head was given"
            raise ValueError(f"config.choice_head is {config.choice_head} but {given}")
        self.config = config
        self.llava = llava
        self.seg_head = seg_head
        self.pixel_decoder = pixel_decoder
        self.readout = readout
        self.choice_head = choice_head

    # -- parts -------------------------------------------------------------------------------------------------------
    @property
    def vision_tower(self) -> nn.Module:
        return self.llava.model.vision_tower

    @property
    def projector(self) -> nn.Module:
        return self.llava.model.multi_modal_projector

    @property
    def language_model(self) -> nn.Module:
        return self.llava.model.language_model

    @property
    def device(self) -> torch.device:
        return self.llava.lm_head.weight.device

    # -- stages ------------------------------------------------------------------------------------------------------
    def encode_images(
        self,
        pixel_values: torch.Tensor,
        content_sizes: Sequence[tuple[int, int]] | None = None,
        thresholds: torch.Tensor | None = None,
        keep_coverage: bool = False,
        image_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> ImageFeatures:
        """``pixel_values`` (M, C, S, S) normalized, padded model inputs → ``ImageFeatures``. The tower and the readout
        are frozen.

        ``content_sizes`` (M (h, w), the processor's ``resized_size``; inference only): the tower also reads each image
        mirrored inside its window (``mirror``), and the readout's whole-image logits and coverage are averaged over
        both views, aligned. ``thresholds`` (models with a readout): the presence logit (M, K) each class needs before
        φv hears of it, or None (as trained); see ``qground.policy.readout_thresholds``. ``keep_coverage``:
        ``ImageFeatures.coverage`` is filled (the readout's mask blend).
        """
        cfg = self.config
        if (thresholds is not None or keep_coverage) and self.readout is None:
            raise ValueError("readout gates and coverage need a model with a distortion readout (config.readout)")
        if pixel_values.shape[1] != cfg.vision.num_channels:
            raise ValueError(
                f"image tensors have {pixel_values.shape[1]} channels; this model's tower takes "
                f"{cfg.vision.num_channels}"
            )
        m = len(pixel_values)
        two_views = content_sizes is not None
        image_sizes = image_sizes if image_sizes is not None else content_sizes
        if (cfg.vision_padding_mask or cfg.llm_image_padding_mask) and image_sizes is None:
            raise ValueError("this model's padding masks need the images' content sizes (image_sizes)")
        if two_views:
            pixel_values = torch.cat([pixel_values, mirror(pixel_values, content_sizes)])
        tower_param = next(self.vision_tower.parameters())
        extra = {}
        if cfg.vision_padding_mask:  # padded patches are no key of any attention; CLS always is
            valid = patch_validity(image_sizes, cfg.grid, cfg.vision.patch_size).flatten(1).repeat(1 + two_views, 1)
            keys = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1).to(tower_param.device)
            blocked = torch.zeros(keys.shape, dtype=tower_param.dtype, device=tower_param.device)
            extra["attention_mask"] = blocked.masked_fill(~keys, torch.finfo(blocked.dtype).min)[:, None, None, :]
        with torch.no_grad():
            out = self.vision_tower(
                pixel_values.to(device=tower_param.device, dtype=tower_param.dtype),
                output_hidden_states=True,
                interpolate_pos_encoding=cfg.image_size != cfg.vision.native_image_size,
                **extra,
            )
        hs = out.hidden_states
        coverage = evidence = None
        if self.readout is not None:  # frozen like the tower
            with torch.no_grad():
                dense, whole = self.readout.logits(hs[-1].to(next(self.readout.parameters()).dtype))
                whole = whole.view(1 + two_views, m, -1).mean(0)  # (M, 3·K), averaged over the views
                stacked = self.readout.scores(dense[:m], whole, thresholds)  # CLS + patches
                k = self.readout.num_classes
                present = whole[:, :k] >= (0.0 if thresholds is None else thresholds.to(whole))
                coverage = self._coverage(dense, m, content_sizes) if keep_coverage else None
                if cfg.choice_keys == "readout":  # ungated: comparisons read the evidence as trained
                    evidence = whole.sigmoid()
        else:
            present = None
            stacked = torch.cat([hs[i][:m] for i in cfg.feature_layers], dim=-1)  # CLS + patches
        proj_dtype = next(self.projector.parameters()).dtype
        tokens = self.projector(stacked.to(proj_dtype))
        token_mask = None
        if cfg.llm_image_padding_mask:
            cell = cfg.vision.patch_size * cfg.projector_pool
            token_mask = patch_validity(image_sizes, cfg.token_grid, cell).flatten(1).to(tokens.device)
            if cfg.global_token:
                token_mask = torch.cat([token_mask, torch.ones_like(token_mask[:, :1])], dim=1)
        return ImageFeatures(
            tokens=tokens,
            decoder=tuple(hs[i][:m, 1:] for i in cfg.decoder.layers),
            coverage=coverage,
            evidence=evidence,
            mirrored=tuple(hs[i][m:, 1:] for i in cfg.decoder.layers) if two_views else None,
            content_sizes=content_sizes,
            present=present,
            token_mask=token_mask,
        )

    def _coverage(self, dense: torch.Tensor, m: int, content_sizes: Sequence[tuple[int, int]] | None) -> torch.Tensor:
        """The readout's coverage (M, K, g·sub, g·sub) of ``dense`` logits of M images, or with two views (``dense``
        of 2M) the mean of both views' coverage, the mirrored view's mirrored back, at S × S where the windows are
        whole pixels."""
        coverage = self.readout.coverage(dense)
        if content_sizes is None:
            return coverage
        size = (self.config.image_size, self.config.image_size)
        coverage = F.interpolate(coverage, size=size, mode="bilinear", align_corners=False)
        return (coverage[:m] + mirror(coverage[m:], content_sizes)) / 2

    def embed(self, input_ids: torch.Tensor, image_tokens: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings (B, L, D) with image-token positions replaced by ``image_tokens`` (M, T, D) in order: all T
        tokens of an image, or only its last (whole-image) token in a several-image prompt when the config has
        ``multi_image_global_only``; plus φv's ordinal embedding of each image's place in its sample, when the config
        has ``image_ordinals``."""
        embeds = self.llava.get_input_embeddings()(input_ids)
        is_image = input_ids == self.config.token_ids.image
        per_sample = self._images_per_sample(input_ids)
        n_img = 0 if image_tokens is None else image_tokens.shape[0]
        if sum(per_sample) != n_img:
            raise ValueError(
                f"image features and image tokens disagree: input_ids hold image tokens of {sum(per_sample)} "
                f"image(s) but features of {n_img} image(s) were given"
            )
        if image_tokens is None:
            return embeds
        ordinal = self.projector.ordinal
        if ordinal is not None:
            if max(per_sample) > ordinal.num_embeddings:
                raise ValueError(
                    f"a sample holds {max(per_sample)} images; this model numbers at most {ordinal.num_embeddings}"
                )
            places = torch.cat([torch.arange(n) for n in per_sample]).to(ordinal.weight.device)
            image_tokens = image_tokens + ordinal(places)[:, None, :].to(image_tokens.dtype)
        rows, start = [], 0
        for n in per_sample:
            block = image_tokens[start : start + n]
            rows.append(block[:, -1:] if n > 1 and self.config.multi_image_global_only else block)
            start += n
        flat = torch.cat([r.reshape(-1, r.shape[-1]) for r in rows])
        return embeds.masked_scatter(is_image[..., None], flat.to(embeds.dtype))

    def attention_mask(
        self, input_ids: torch.Tensor, features: ImageFeatures | None, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """(B, L) ``attention_mask`` (None: all ones) with the image tokens that ``features.token_mask`` leaves out
        set to 0 (``config.llm_image_padding_mask``); unchanged (None stays None) otherwise. Positions are not
        derived from it: they stay 0, 1, 2, … as PixelLM's are."""
        if features is None or features.token_mask is None:
            return attention_mask
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.clone()
        is_image = input_ids == self.config.token_ids.image
        valid = features.token_mask.flatten().to(mask.device)
        if int(is_image.sum()) != len(valid):
            raise ValueError(f"{int(is_image.sum())} image tokens in input_ids but token masks for {len(valid)}")
        mask[is_image] = mask[is_image] * valid.to(mask.dtype)
        return mask

    def seg_groups(self, input_ids: torch.Tensor, strict: bool = True) -> list[SegGroup]:
        """Find ``[SEG0] … [SEGn-1]`` groups in (B, L) ids (other tokens, e.g. spaces, may sit between them).

        ``strict`` raises on a stray or out-of-order seg token; otherwise broken groups are skipped (generated text).
        """
        seg = self.config.token_ids.seg
        order = {tok: k for k, tok in enumerate(seg)}
        groups = []
        for b, row in enumerate(input_ids.tolist()):
            current: list[int] = []
            for p, tok in enumerate(row):
                k = order.get(tok)
                if k is None:
                    continue
                if k == len(current):
                    current.append(p)
                elif strict:
                    raise ValueError(
                        f"sample {b}: seg tokens must come in complete ordered groups "
                        f"{' '.join(f'[SEG{i}]' for i in range(len(seg)))}; got [SEG{k}] at position {p} "
                        f"after {len(current)} token(s) of a group"
                    )
                else:
                    current = [p] if k == 0 else []
                if len(current) == len(seg):
                    groups.append(SegGroup(sample=b, positions=current))
                    current = []
            if strict and current:
                raise ValueError(f"sample {b}: an incomplete seg-token group ({len(current)} of {len(seg)} tokens)")
        return groups

    def decode_masks(
        self, seg_states: torch.Tensor, features: ImageFeatures, image_index: torch.Tensor
    ) -> torch.Tensor:
        """``seg_states`` (N, seg_count, D) predicting states, ``image_index`` (N,) → mask logits (N, S, S) over the
        padded model input frame; with ``features.mirrored`` the logits of the mean probability of both views' masks
        (the mirrored view's mirrored back)."""
        seg = self.seg_head(seg_states.to(next(self.seg_head.parameters()).dtype))
        dec_dtype = next(self.pixel_decoder.parameters()).dtype
        size = self.config.image_size

        def masks(maps: tuple[torch.Tensor, ...]) -> torch.Tensor:
            logits = self.pixel_decoder(tuple(f[image_index].to(dec_dtype) for f in maps), seg.to(dec_dtype))
            return F.interpolate(logits[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]

        logits = masks(features.decoder)
        if features.mirrored is None:
            return logits
        back = mirror(masks(features.mirrored), [features.content_sizes[i] for i in image_index.tolist()])
        return mix_probabilities(logits, back.sigmoid(), 0.5)

    # -- training forward --------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        masks: list[torch.Tensor] | None = None,
        image_sizes: torch.Tensor | None = None,
        choices: list[torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Teacher-forced pass.

        ``input_ids``/``attention_mask``/``labels``: (B, L), labels -100 on prompt and padding. ``pixel_values``:
        (M, C, S, S). ``masks``: per sample a (n_b, S, S) {0,1} tensor in the padded input frame, one per seg group of
        that sample's answer, in order. ``image_sizes``: (M, 2) content (h, w) of each padded image; the mask loss only
        sees that region. ``choices``: per sample a (k_b,) long tensor, the image (0 … n_b − 1 within the sample) each
        of its k_b ``[CHOICE]`` tokens picks. Returns ``logits`` and, with labels, ``ce``, ``bce``, ``dice``, ``choice``
        (0 without a choice head), ``loss``.
        """
        sizes = image_sizes.tolist() if image_sizes is not None else None
        features = self.encode_images(pixel_values, image_sizes=sizes) if pixel_values is not None else None
        embeds = self.embed(input_ids, features.tokens if features is not None else None)
        attention_mask = self.attention_mask(input_ids, features, attention_mask)
        hidden = self.language_model(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
        logits = self.llava.lm_head(hidden)
        if labels is None:
            return {"logits": logits}
        w = self.config.loss
        ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        bce, dice = self._mask_losses(input_ids, hidden, features, masks, image_sizes)
        choice = self._choice_loss(input_ids, hidden, features, choices)
        loss = w.ce * ce + w.mask * (w.bce * bce + w.dice * dice) + w.choice * choice
        return {"logits": logits, "ce": ce, "bce": bce, "dice": dice, "choice": choice, "loss": loss}

    # -- choices -----------------------------------------------------------------------------------------------------
    def image_keys(
        self, input_ids: torch.Tensor, hidden: torch.Tensor, features: ImageFeatures | None, first_image: int
    ) -> torch.Tensor:
        """One sample's (L,) ids and (L, D) LLM states, the ``features`` of its batch's images and the index of
        the sample's first image among them → the choice head's keys for its n images, in prompt order: (n, D) LLM
        states at each image's last image token (the whole-image token with ``global_token``), or with
        ``config.choice_keys`` "readout" (n, 3·classes) rows of ``features.evidence``."""
        positions = (input_ids == self.config.token_ids.image).nonzero()[:, 0]
        n = self.config.images_in(len(positions))
        if self.config.choice_keys == "readout":
            if n and (features is None or features.evidence is None):
                raise ValueError("choice_keys 'readout' needs the images' readout evidence (encode_images)")
            return features.evidence[first_image : first_image + n] if n else hidden.new_zeros(0, 0)
        return hidden[positions.view(n, -1)[:, -1]] if n else hidden[:0]

    def choice_logits(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """``query`` (D,) state predicting a ``[CHOICE]``, ``keys`` (n, key_dim) from ``image_keys`` → (n,) logits."""
        if self.choice_head is None:
            raise ValueError("this model has no choice head (config.choice_head)")
        dtype = next(self.choice_head.parameters()).dtype
        return self.choice_head(query.to(dtype), keys.to(dtype)).float()

    def _choice_loss(
        self,
        input_ids: torch.Tensor,
        hidden: torch.Tensor,
        features: ImageFeatures | None,
        choices: list[torch.Tensor] | None,
    ) -> torch.Tensor:
        zero = hidden.sum() * 0.0
        if self.choice_head is None:
            if choices is not None and any(len(c) for c in choices):
                raise ValueError("choice targets were given but this model has no choice head (config.choice_head)")
            return zero.float()
        losses = []
        first_image = self._first_image_per_sample(input_ids).tolist()
        for b, row in enumerate(input_ids):
            positions = (row == self.config.token_ids.choice).nonzero()[:, 0].tolist()
            targets = [] if choices is None else choices[b].tolist()
            if len(positions) != len(targets):
                raise ValueError(f"sample {b}: {len(positions)} [CHOICE] token(s) but {len(targets)} choice target(s)")
            if not positions:
                continue
            keys = self.image_keys(row, hidden[b], features, first_image[b])
            for p, target in zip(positions, targets):
                if not 0 <= target < len(keys):
                    raise ValueError(f"sample {b}: choice target {target} but the prompt holds {len(keys)} image(s)")
                logits = self.choice_logits(hidden[b, p - 1], keys)
                losses.append(F.cross_entropy(logits[None], torch.tensor([target], device=logits.device)))
        return torch.stack(losses).mean() if losses else zero.float()

    def _mask_losses(
        self,
        input_ids: torch.Tensor,
        hidden: torch.Tensor,
        features: ImageFeatures | None,
        masks: list[torch.Tensor] | None,
        image_sizes: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        groups = self.seg_groups(input_ids)
        per_sample = [sum(g.sample == b for g in groups) for b in range(input_ids.shape[0])]
        given = [0 if masks is None else len(m) for m in (masks or [[]] * len(per_sample))]
        if per_sample != given:
            raise ValueError(f"seg-token groups per sample {per_sample} ≠ target masks per sample {given}")
        zero = hidden.sum() * 0.0
        if not groups:
            return zero.float(), zero.float()
        if features is None or image_sizes is None:
            raise ValueError("grounding targets need pixel_values and image_sizes")
        first_image = self._first_image_per_sample(input_ids)
        pos = torch.tensor([g.positions for g in groups], device=hidden.device)
        rows = torch.tensor([g.sample for g in groups], device=hidden.device)
        states = hidden[rows[:, None], pos - 1]  # (N, seg_count, D): states predicting each seg token
        image_index = first_image[rows]
        if (image_index < 0).any():
            raise ValueError("a sample with seg-token groups has no image to segment")
        logits = self.decode_masks(states, features, image_index)
        targets = torch.cat([m.to(logits.device, torch.float32) for m in masks if len(m)], dim=0)
        bce, dice = [], []
        for logit, target, img in zip(logits, targets, image_index.tolist()):
            h, w = (int(v) for v in image_sizes[img])
            bce.append(sigmoid_bce(logit[:h, :w], target[:h, :w]))
            dice.append(
                dice_loss(logit[:h, :w], target[:h, :w], self.config.loss.dice_scale, self.config.loss.dice_eps)
            )
        return torch.stack(bce).mean(), torch.stack(dice).mean()

    def _images_per_sample(self, input_ids: torch.Tensor) -> list[int]:
        """Number of images of each sample of (B, L) ids, from its image-token count (``config.images_in``)."""
        return [self.config.images_in(int(n)) for n in (input_ids == self.config.token_ids.image).sum(dim=1)]

    def _first_image_per_sample(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B,) index into ``pixel_values`` of each sample's first image (-1 for samples without images)."""
        counts = torch.tensor(self._images_per_sample(input_ids), device=input_ids.device)
        first = torch.cumsum(counts, 0) - counts
        return torch.where(counts > 0, first, torch.full_like(first, -1))
