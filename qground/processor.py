"""The processor owns the image frame and the prompt/token layout.

Image frame: a photo of original size (H, W) (after EXIF orientation) is resized so its longest side is ``S =
config.image_size`` → content (h, w), normalized, and padded bottom-right with zeros (the mean color) to S×S. The
content size is x·s (s = S / max(H, W)) rounded as ``config.size_rounding`` says (``round``, or PixelLM's half up
``int(x·s + 0.5)``); the filter is ``config.resample`` (bicubic, or PixelLM's bilinear). With
``config.detail_channels`` the eight channels of ``qground.detail``, computed at the photo's native resolution (or
shrunk to ``config.detail_max_side`` when larger; the noise channel to ``config.noise_max_side``), follow RGB, and
with ``config.chroma_noise_channel`` the chroma noise channel (read as the noise channel) follows them.
The photo masks are refined on (``keep_photo``) is the detail channels' photo (or the photo shrunk to
``config.evidence_max_side`` when that is smaller) and travels in each image's ``ImageMeta``. Masks go through
the same mapping (nearest) and come back by ``ImageMeta`` (``qground.masks``): crop [:h, :w] of the S×S frame,
resize to (H, W).

Token layout: ``<s>`` + the template's pieces (``qground.prompts``); each image slot becomes
``config.tokens_per_image(num_images)`` image-token ids inserted by id (``num_image_tokens``, or 1 per image of a
several-image prompt with ``multi_image_global_only``), between ``<im_start>`` and ``<im_end>`` with
``config.image_wrap`` (labels -100); each answer is tokenized on its own (its special tokens, such as
``[SEG0]``, recognized) and followed by ``</s>``; answers and their ``</s>`` are the only labelled tokens (prompt and
padding are -100). Prompt text is tokenized with special tokens split, so neither the template nor user text can
inject them (typed "[SEG0]" or "<image>" stays text). ``config.prompt_tokenization`` says where tokenizer calls
begin, none adding ``<s>``/``</s>`` itself:

- ``"pieces"``: one call per template piece (system, role, image header, newline, question, …) and per answer.
- ``"llava"``: one call per run of prompt text between images and answers, as LLaVA-1.5's ``tokenizer_image_token``
  splits the prompt at ``<image>``, and per answer without its leading space. With a LLaMA sentencepiece tokenizer
  (which prepends ``▁`` to each call) this gives LLaVA-1.5 / Q-Ground's ids: ``… questions . ▁US ER : ▁ <image>…
  ▁ \\n Please … ▁A SS IST ANT :`` and answers starting ``▁The …``, where "pieces" has an extra ``▁`` before ``▁US``,
  ``▁Please`` after the newline and, with the legacy llama normalizer (it prepends ``▁`` even to a leading space),
  one more ``▁`` at an answer's start (``tests/test_llava_tokens.py``).
- ``"llava"`` with ``image_wrap``: PixelLM-7B's ids, as transformers 4.31 (which strips the whitespace around added
  tokens) tokenized ``… USER: <im_start><image><im_end>\\n{question} ASSISTANT:``: a run's whitespace next to an
  image goes, and a run after an image is split as text that follows an added token, its first piece with ``▁``
  only for a legacy tokenizer (``qground.tokenizer.is_legacy``): ``… ▁US ER : <im_start> <image>… <im_end> ▁Please
  …`` (legacy) or ``… <im_end> Please …`` (``legacy: false``); no ``▁`` before ``<im_start>``, no newline token
  (``tests/test_processor_variants.py``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from qground.config import QGroundConfig
from qground.detail import detail_channels
from qground.imageio import fit_size, load_image
from qground.prompts import VICUNA_V1, ImageSlot, PromptStyle, Turn
from qground.tokenizer import is_legacy

IGNORE_INDEX = -100
RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}  # by config.resample


@dataclass(frozen=True)
class ImageMeta:
    """One image's record: ``original_size`` (H, W) of the loaded photo; ``resized_size`` (h, w) of its content in the
    padded S×S input; ``photo``: when asked for, the photo masks are refined on (uint8 (H', W', 3): the detail
    channels' source, shrunk to ``evidence_max_side`` if larger), else None."""

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    photo: np.ndarray | None = field(default=None, repr=False, compare=False)


class PromptTooLongError(ValueError):
    """The conversation does not fit the model's context."""


# Preprocessed images, least recently used first: (path, size, mtime, image settings, photo) → a future of
# (pixels, meta), set by the thread that computes it (others asking meanwhile wait for it instead of computing again).
_IMAGE_CACHE: OrderedDict[tuple, Future] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def _shrunk(img: Image.Image, max_side: int) -> Image.Image:
    """``img`` itself, or shrunk (Lanczos, as the training photos were) so its longest side is ``max_side`` when it is
    larger (0: never)."""
    size = fit_size(img.size, max_side)
    if size == img.size:
        return img
    # reducing_gap 1.5: box-reduce by an integer ⌊f / 1.5⌋ first (f: the shrink factor), then Lanczos; 12 MP → 1280 px:
    # 2.6× faster than Lanczos alone, mean difference 0.2 of an 8-bit step
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=1.5)


class QGroundProcessor:
    """Images + conversation → model inputs, and model masks → original image frames."""

    def __init__(
        self,
        tokenizer,
        config: QGroundConfig,
        style: PromptStyle = VICUNA_V1,
        max_length: int | None = None,
        cache_images: int = 0,
    ) -> None:
        """``cache_images``: keep up to that many preprocessed images from file paths in memory, shared by every
        processor whose image settings match (training reads every photo many times, in stage after stage, and a
        calibration in sweep after sweep; a server a few: each upload is asked about again and again). An entry is
        keyed by the path, the file's size and modification time, those settings and whether the photo is kept;
        it is shared, never modified. Thread-safe: a photo asked for while another thread preprocesses it is waited
        for, not computed twice (a server prepares an upload before its first question,
        ``QGroundEngine.prepare``)."""
        self.tokenizer = tokenizer
        self.config = config
        self.style = style
        self.max_length = max_length or config.llm.max_position_embeddings
        self._mean = torch.tensor(config.image_mean).view(-1, 1, 1)
        self._std = torch.tensor(config.image_std).view(-1, 1, 1)
        self.cache_images = cache_images
        self._image_key = (
            config.image_size,
            tuple(config.image_mean),
            tuple(config.image_std),
            config.detail_channels,
            config.detail_max_side,
            config.noise_max_side,
            config.chroma_noise_channel,
            config.evidence_max_side,
            config.resample,
            config.size_rounding,
        )

    # -- images ------------------------------------------------------------------------------------------------------
    def content_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of an (H, W) photo resized so its longest side is ``image_size`` (each side ≥ 1), x·s rounded as
        ``config.size_rounding`` says (s = image_size / max(H, W))."""
        h, w = original_size
        s = self.config.image_size / max(h, w)
        return max(1, self._round(h * s)), max(1, self._round(w * s))

    def _round(self, x: float) -> int:
        """``round`` (half to even), or half up as PixelLM's ResizeLongestSide: ``int(x + 0.5)``."""
        return round(x) if self.config.size_rounding == "round" else int(x + 0.5)

    def preprocess_image(
        self,
        image,
        keep_photo: bool = False,
        decoded: Image.Image | None = None,
    ) -> tuple[torch.Tensor, ImageMeta]:
        """A path, bytes or PIL image → ``(C, S, S)`` float tensor (the tower's channels) and its ``ImageMeta``, with
        ``keep_photo`` holding the photo masks are refined on. ``decoded``: the path's photo as ``load_image`` reads
        it, already in hand (an upload shown to the person), so it is not decoded again."""
        if self.cache_images and isinstance(image, str | Path):
            stat = Path(image).stat()
            key = (str(image), stat.st_size, stat.st_mtime_ns, self._image_key, keep_photo)
            with _CACHE_LOCK:
                entry = _IMAGE_CACHE.get(key)
                mine = entry is None
                if mine:
                    entry = _IMAGE_CACHE[key] = Future()
                    while len(_IMAGE_CACHE) > self.cache_images:
                        _IMAGE_CACHE.popitem(last=False)
                else:
                    _IMAGE_CACHE.move_to_end(key)
            if mine:
                try:
                    entry.set_result(self._preprocess(image, keep_photo, decoded))
                except BaseException as err:  # not kept: the next request tries again and gets its own error
                    with _CACHE_LOCK:
                        if _IMAGE_CACHE.get(key) is entry:
                            del _IMAGE_CACHE[key]
                    entry.set_exception(err)
                    raise
            return entry.result()
        return self._preprocess(image, keep_photo, decoded)

    def _preprocess(
        self, image, keep_photo: bool = False, decoded: Image.Image | None = None
    ) -> tuple[torch.Tensor, ImageMeta]:
        img = load_image(image) if decoded is None else decoded
        original = (img.height, img.width)
        h, w = self.content_size(original)
        # reducing_gap 3: box-reduce by ⌊f / 3⌋ first (f = max(H, W) / image_size); 12 MP → 128 px: 12× faster than one
        # bicubic pass, mean difference 0.2 of an 8-bit step (none for photos under 6 × image_size)
        small = img.resize((w, h), RESAMPLE[self.config.resample], reducing_gap=3.0)
        resized = np.asarray(small, dtype=np.float32) / 255.0
        content = torch.from_numpy(resized).permute(2, 0, 1)
        if self.config.detail_channels or keep_photo:
            native = np.asarray(_shrunk(img, self.config.detail_max_side))  # the detail channels' photo
        if self.config.detail_channels:
            noise = self._noise_source(img, native)
            chroma = self.config.chroma_noise_channel
            content = torch.cat([content, detail_channels(native, (h, w), noise, chroma=chroma)])
        content = (content - self._mean) / self._std
        s = self.config.image_size
        out = torch.zeros(content.shape[0], s, s)
        out[:, :h, :w] = content
        photo = self._refine_source(img, native) if keep_photo else None
        return out, ImageMeta(original_size=original, resized_size=(h, w), photo=photo)

    def _noise_source(self, img: Image.Image, native: np.ndarray) -> np.ndarray | None:
        """The photo the noise channel is read on when it is larger than the detail channels' ``native`` source:
        ``img`` itself, or shrunk to ``config.noise_max_side``; None: ``native`` serves."""
        side = self.config.noise_max_side
        if not side or fit_size(img.size, side)[0] <= native.shape[1]:
            return None
        return np.asarray(_shrunk(img, side))

    def _refine_source(self, img: Image.Image, native: np.ndarray) -> np.ndarray:
        """The photo masks are refined on: ``native`` (the detail channels' photo), or ``img`` shrunk to
        ``config.evidence_max_side`` when that is smaller."""
        side = self.config.evidence_max_side
        if not side or fit_size(img.size, side)[0] >= native.shape[1]:
            return native
        return np.asarray(_shrunk(img, side))

    def preprocess_mask(self, mask: np.ndarray, meta: ImageMeta) -> torch.Tensor:
        """A bool/0-1 mask (H, W) in the original frame → (S, S) float {0, 1} in the padded input frame."""
        if tuple(mask.shape) != meta.original_size:
            raise ValueError(f"mask shape {tuple(mask.shape)} ≠ image size {meta.original_size}")
        h, w = meta.resized_size
        small = Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255).resize(
            (w, h), Image.Resampling.NEAREST
        )
        s = self.config.image_size
        out = torch.zeros(s, s)
        out[:h, :w] = torch.from_numpy(np.asarray(small) > 127).float()
        return out

    # -- text --------------------------------------------------------------------------------------------------------
    def encode(self, turns: list[Turn], num_images: int) -> tuple[list[int], list[int]]:
        """Token ids and labels for a conversation (the last turn may be unanswered: a generation prompt); the layout
        and ``config.prompt_tokenization`` are described in the module docstring."""
        ids = self.config.token_ids
        image_ids = self._image_ids(self.config.tokens_per_image(num_images))
        llava = self.config.prompt_tokenization == "llava"
        input_ids, labels = [ids.bos], [IGNORE_INDEX]
        run: list[str] = []  # prompt text not tokenized yet
        after_image = False  # whether the run follows an image's ids

        def flush(before_image: bool = False) -> None:
            nonlocal after_image
            text = "".join(run)
            run.clear()
            tokens = self._prompt_ids(text, after_image, before_image) if text else []
            after_image = False
            input_ids.extend(tokens)
            labels.extend([IGNORE_INDEX] * len(tokens))

        for piece in self.style.pieces(turns, num_images):
            if isinstance(piece, ImageSlot):
                flush(before_image=True)
                input_ids.extend(image_ids)
                labels.extend([IGNORE_INDEX] * len(image_ids))
                after_image = True
            elif piece.trainable:
                flush()
                text = piece.text.removeprefix(" ") if llava else piece.text
                tokens = self.tokenizer(text, add_special_tokens=False, split_special_tokens=False).input_ids
                tokens.append(ids.eos)
                input_ids.extend(tokens)
                labels.extend(tokens)
            else:
                run.append(piece.text)
                if not llava:
                    flush()
        flush()
        if len(input_ids) > self.max_length:
            raise PromptTooLongError(
                f"the conversation is {len(input_ids)} tokens long; this model reads at most {self.max_length}. "
                "Shorten the question or clear the chat history."
            )
        return input_ids, labels

    def _image_ids(self, count: int) -> list[int]:
        """One image's ids: ``count`` image tokens, between ``<im_start>`` and ``<im_end>`` with ``image_wrap``."""
        ids = self.config.token_ids
        tokens = [ids.image] * count
        return [ids.image_start, *tokens, ids.image_end] if self.config.image_wrap else tokens

    def _prompt_ids(self, text: str, after_image: bool, before_image: bool) -> list[int]:
        """Ids of a run of prompt text (special tokens split); ``after_image`` / ``before_image``: it follows /
        precedes an image's ids, which only PixelLM's rule (``image_wrap`` with "llava", module docstring) heeds."""
        if not (self.config.image_wrap and self.config.prompt_tokenization == "llava"):
            return self._text_ids(text)
        if before_image:
            text = text.rstrip()
        if after_image:
            text = text.lstrip()
            if not is_legacy(self.tokenizer):
                return self._ids_without_prefix_space(text)
        return self._text_ids(text)

    def _text_ids(self, text: str) -> list[int]:
        """Ids of prompt text, special tokens split (a typed special token such as ``<image>`` stays text)."""
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids

    def _ids_without_prefix_space(self, text: str) -> list[int]:
        """Ids of ``text`` with no "▁" prepended, as a sentencepiece model splits text that follows an added token
        without the legacy prefix: those of "\\n" + ``text`` after the ids of "\\n" (no LLaMA piece spans a newline, so
        the newline takes only the prefix)."""
        newline = self._text_ids("\n")
        tokens = self._text_ids("\n" + text)
        if tokens[: len(newline)] != newline:
            raise ValueError(f"the tokenizer merges a newline with {text!r}: its pieces without a prefix are unknown")
        return tokens[len(newline) :]

    def __call__(
        self,
        images: list,
        turns: list[Turn],
        masks: list[np.ndarray] | None = None,
        choices: list[int] | None = None,
        keep_photo: bool = False,
    ) -> dict:
        """One sample: ``images`` (paths, bytes or PIL), ``turns``, optional target masks (original frame of the
        first image, one per seg group of the answers, in order) and choices (the image index 0 … M − 1 each
        ``[CHOICE]`` of the answers picks, in order); ``keep_photo`` as in ``preprocess_image``.
        Returns ``input_ids``/``labels`` (L,), ``pixel_values`` (M, C, S, S), ``image_sizes`` (M, 2) content sizes,
        ``metas``, ``masks`` (n, S, S), ``choices`` (k,)."""
        loaded = [self.preprocess_image(im, keep_photo) for im in images]
        tensors, metas = zip(*loaded) if loaded else ((), ())
        input_ids, labels = self.encode(turns, len(images))
        sample = {
            "input_ids": torch.tensor(input_ids),
            "labels": torch.tensor(labels),
            "pixel_values": torch.stack(tensors) if tensors else None,
            "image_sizes": torch.tensor([m.resized_size for m in metas], dtype=torch.long).view(-1, 2),
            "metas": list(metas),
            "masks": torch.zeros(0, self.config.image_size, self.config.image_size),
            "choices": torch.tensor(choices or [], dtype=torch.long),
        }
        if masks:
            sample["masks"] = torch.stack([self.preprocess_mask(m, metas[0]) for m in masks])
        return sample

    def collate(self, samples: list[dict]) -> dict:
        """Right-pad a list of samples into a batch: (B, L) ids/labels/attention_mask, images concatenated in order."""
        length = max(len(s["input_ids"]) for s in samples)
        pad = self.config.token_ids.pad
        batch_ids = torch.full((len(samples), length), pad, dtype=torch.long)
        batch_labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(samples), length), dtype=torch.long)
        for i, s in enumerate(samples):
            n = len(s["input_ids"])
            batch_ids[i, :n], batch_labels[i, :n], attention[i, :n] = s["input_ids"], s["labels"], 1
        pixels = [s["pixel_values"] for s in samples if s["pixel_values"] is not None]
        return {
            "input_ids": batch_ids,
            "labels": batch_labels,
            "attention_mask": attention,
            "pixel_values": torch.cat(pixels) if pixels else None,
            "image_sizes": torch.cat([s["image_sizes"] for s in samples]),
            "masks": [s["masks"] for s in samples],
            "choices": [s["choices"] for s in samples],
        }
