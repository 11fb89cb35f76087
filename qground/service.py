"""The UI-facing layer between ``QGroundEngine`` and the Gradio app: plain values in, plain values out.

Nothing here imports gradio or loads a model at import. ``load_engine_from_env`` picks the model to serve (with
fallbacks); the rest are per-request functions the app wires to events: a chat ``Thread`` (one photo, its exchanges,
the last result) advanced by the streaming ``chat_turn``; views of a ``GroundingResult`` (annotated image, highlighted
answer, area/score rows, masks zip); multi-image comparison with a ranking parsed from the answer; single-shot API
requests. Problems the person can fix raise ``UserError`` with a message that says what to do.

Frames: photos are read with ``qground.imageio.load_image`` (full resolution, EXIF-upright); every mask is bool (H, W)
in that frame, every image written is a lossless PNG of it. Files handed to Gradio are written under a ``Scratch``
folder (Gradio copies them into its own cache).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from qground.answers import CLEAN_DESCRIPTION, CLEAN_GROUNDING
from qground.builder import REGISTRY
from qground.checkpoint import (
    QUANT_CHOICES,
    CheckpointError,
    dtype_name,
    load_lexicon,
    load_model,
    load_policy,
    parse_dtype,
    resolve,
)
from qground.imageio import ImageLoadError, fit_size, load_image
from qground.inference import MAX_STRICTNESS, GenerationSettings, GroundingResult, QGroundEngine, Stage
from qground.models import DEFAULT_MODEL, resolve_model
from qground.naming import named_images, question_options
from qground.processor import PromptTooLongError, QGroundProcessor
from qground.prompts import Turn
from qground.questions import COMPARE_PRESETS, GROUNDING_QUESTION, QUESTIONS
from qground.sam import AnnotationError, write_atomically
from qground.taxonomy import DISTORTIONS, MAX_PHRASE_WORDS, get, match_class
from qground.visualize import masks_to_annotations, overlay

__all__ = [
    "COMPARE_PRESETS",
    "DEFAULT_MODEL",
    "DISPLAY_MAX_SIDE",
    "GROUNDING_QUESTION",
    "MAX_STRICTNESS",
    "QUESTIONS",
    "RANDOM_MODEL",
    "RANKING_HEADERS",
    "SLOTS",
    "STAGES",
    "TABLE_HEADERS",
    "USER_ERRORS",
    "Exchange",
    "Scratch",
    "ServedModel",
    "Thread",
    "UserError",
    "annotated_image",
    "chat_turn",
    "class_choices",
    "clear_thread",
    "compare_outcome",
    "compare_photos",
    "compare_turn",
    "default_quant",
    "describe_request",
    "drawn_note",
    "same_drawing",
    "generation_settings",
    "ground_each",
    "ground_request",
    "highlight_spans",
    "load_engine",
    "load_engine_from_env",
    "load_photo",
    "mask_note",
    "masks_zip",
    "model_card",
    "new_thread",
    "prepare_photo",
    "served_model",
    "ranking_rows",
    "reading_note",
    "table_rows",
    "thread_messages",
    "undo_turn",
]

log = logging.getLogger(__name__)

RANDOM_MODEL = "qground-tiny"  # the untrained test model: the last fallback (DEFAULT_MODEL: qground.models)
SLOTS = "ABCD"
MIN_COMPARE, MAX_COMPARE = 2, len(SLOTS)
TABLE_HEADERS = ["Distortion", "Area %", "Where", "Score"]
STAGES = {"read": "Reading the photo…", "answer": "Answering…", "masks": "Drawing masks…"}  # shown while pending
DISPLAY_MAX_SIDE = 1600  # longest side of the overlays the app shows (full-size masks stay in the zip and the API)
# The overlays the app shows are JPEGs: a 1,600-px one is written in 15 ms instead of 110 (PNG, fastest level) and is
# about 0.4 MB instead of 2.5 MB to send; the API's full-size overlay stays a lossless PNG
VIEW_JPEG_QUALITY = 92
RANKING_HEADERS = ["Rank", "Image", "Named as", "Choice probability"]
# Preprocessed photos a served engine keeps (each asked about again and again; prepared on upload): about 5 MB each
# for qground-nano at 12 MP (its model input and the 1,280-px photo masks are refined on)
SERVED_IMAGES = 8
_LOAD_ERRORS = (CheckpointError, OSError, ValueError, RuntimeError, ImportError, KeyError)


class UserError(ValueError):
    """A problem the person using the app can fix; the message says what to do."""


USER_ERRORS = (UserError, AnnotationError)


# -- the served model --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServedModel:
    """The model actually served: registry name / folder / Hub id, revision, quantization, device, compute dtype
    (``"bf16"``…), and a ``notice`` when it is not the one requested. ``random``: the untrained test model."""

    name: str
    revision: str | None
    quant: str
    device: str
    dtype: str
    notice: str = ""
    random: bool = False

    def footer(self) -> str:
        """One Markdown line for the app's footer (a loud warning first when the model is random)."""
        line = (
            f"Model **{self.name}** · revision {self.revision or '—'} · {self.quant} quantization · {self.device} · "
            f"{self.dtype}"
        )
        warning = "**WARNING: RANDOM UNTRAINED MODEL — its answers and masks are meaningless.** " if self.random else ""
        notice = f"<br>{self.notice}" if self.notice else ""
        return warning + line + notice


def default_quant() -> str:
    """4-bit on CUDA, none on CPU."""
    return "4bit" if torch.cuda.is_available() else "none"


def load_engine(
    source: str, revision: str | None = None, quant: str = "none", dtype: torch.dtype | None = None
) -> QGroundEngine:
    """An engine for a registry name, checkpoint folder or Hub repo id (``qground.checkpoint.load_model``), run by
    the checkpoint's inference policy (``load_policy``) and lexicon (``load_lexicon``); ``dtype`` None: the device's
    default (``qground.checkpoint.default_device_dtype``)."""
    entry = REGISTRY.get(str(source))
    where = source if entry is not None and entry.checkpoint is None else resolve(source, revision)  # download once
    model, tokenizer = load_model(where, quant=quant, dtype=dtype)
    policy, lexicon = load_policy(where), load_lexicon(where)
    folder = where if isinstance(where, Path) else None
    processor = QGroundProcessor(tokenizer, model.config, cache_images=SERVED_IMAGES)
    return QGroundEngine(model, processor, str(source), policy, folder, lexicon=lexicon)


def served_model(engine: QGroundEngine, revision: str | None = None, quant: str = "none", **extra) -> ServedModel:
    """What ``engine`` serves: its name, device and compute dtype (that of φv, which is never quantized)."""
    param = next(engine.model.projector.parameters())
    return ServedModel(engine.name, revision, quant, str(param.device), dtype_name(param.dtype), **extra)


def load_engine_from_env(
    model: str | None = None,
    revision: str | None = None,
    quant: str | None = None,
    dtype: str | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[QGroundEngine, ServedModel]:
    """The engine to serve and what it is. Arguments win over ``QGROUND_MODEL``, ``QGROUND_REVISION``,
    ``QGROUND_QUANT`` (4bit | 8bit | none; default 4bit on CUDA, none on CPU) and ``QGROUND_DTYPE`` (auto | fp32 |
    bf16 | fp16; auto: ``qground.checkpoint.default_device_dtype``, bf16 on CUDA where supported, else fp16, fp32 on
    CPU; the compute dtype of every part, 4-bit layers included).

    When the requested model cannot be loaded (offline, missing, damaged) the failure is logged and the embedded
    default ``qground-nano`` is served; when that is unavailable too, the random ``qground-tiny``.
    ``ServedModel.notice`` says what happened and what to set. Raises ValueError for an unknown quantization or
    dtype.
    """
    env = os.environ if env is None else env
    requested = resolve_model(model, env)
    revision = revision or env.get("QGROUND_REVISION") or None
    quant = (quant or env.get("QGROUND_QUANT") or default_quant()).lower()
    if quant not in QUANT_CHOICES:
        raise ValueError(f"QGROUND_QUANT must be one of {', '.join(QUANT_CHOICES)}, got {quant!r}")
    try:
        torch_dtype = parse_dtype((dtype or env.get("QGROUND_DTYPE") or "auto").lower())
    except ValueError as err:
        raise ValueError(f"QGROUND_DTYPE: {err}") from None
    candidates = [(requested, revision)]
    candidates += [(name, None) for name in (DEFAULT_MODEL, RANDOM_MODEL) if name != requested]
    failures: list[str] = []
    for name, rev in candidates:
        try:
            engine = load_engine(name, rev, quant, torch_dtype)
        except _LOAD_ERRORS as err:
            if name == RANDOM_MODEL:
                raise
            log.warning("could not load model %s: %s", name, err)
            failures.append(f"{name!r} could not be loaded ({err})")
            continue
        random = name == RANDOM_MODEL
        served = served_model(engine, rev, "none" if random else quant, notice=_notice(failures, name), random=random)
        log.info("serving %s", served)
        return engine, served
    raise AssertionError("unreachable: the random model always loads or raises")


def _notice(failures: list[str], served: str) -> str:
    if not failures:
        return ""
    how = (
        "Set QGROUND_MODEL (registry name, checkpoint folder or Hub repo id), QGROUND_REVISION and QGROUND_QUANT "
        "(4bit | 8bit | none) to serve another model."
    )
    return f"{'; '.join(failures)}. Serving {served} instead. {how}"


# -- requests ----------------------------------------------------------------------------------------------------------
def generation_settings(
    max_new_tokens: float, temperature: float, top_p: float, strictness: float | None = None, readout: bool = True
) -> GenerationSettings:
    """Validated settings from UI values (``readout``: whether the served model has a distortion readout, which
    ``strictness`` needs; None: the policy's default); UserError naming the bad setting."""
    try:
        max_new = int(max_new_tokens)
    except (TypeError, ValueError, OverflowError):  # None, text, NaN, infinity
        raise UserError(f"Generation settings: max new tokens must be a whole number, got {max_new_tokens}.") from None
    try:
        settings = GenerationSettings(
            max_new_tokens=max_new,
            temperature=float(temperature),
            top_p=float(top_p),
            strictness=None if strictness is None else float(strictness),
        )
        settings.check_model(readout)
    except (TypeError, ValueError) as err:
        raise UserError(f"Generation settings: {err}.") from None
    return settings


@contextlib.contextmanager
def _photo_errors(paths: Sequence[str | os.PathLike]) -> Iterator[None]:
    """An unusable photo at one of ``paths`` raised inside as a UserError naming the file (not the server path)."""
    try:
        yield
    except ImageLoadError as err:
        message = str(err)
        for path in paths:
            message = message.replace(str(path), Path(path).name)
        raise UserError(message) from None
    except FileNotFoundError as err:
        if err.filename is None or str(err.filename) not in map(str, paths):
            raise
        raise UserError(f"{Path(err.filename).name} is no longer on the server; upload it again.") from None


def load_photo(path: str | os.PathLike | None, what: str = "photo") -> Image.Image:
    """The upright RGB photo at ``path``; UserError (naming the file, not the server path) when it is unusable."""
    if not path:
        raise UserError(f"Upload a {what} first.")
    with _photo_errors([path]):
        return load_image(path)


def _as_photo(image: str | os.PathLike | Image.Image) -> Image.Image:
    """A path's photo (``load_photo``), or a loaded image in RGB."""
    return load_photo(image) if isinstance(image, (str, os.PathLike)) else image.convert("RGB")


def _display_photo(image: str | os.PathLike | Image.Image, max_side: int | None) -> Image.Image:
    """The photo an overlay of at most ``max_side`` px is drawn on: a JPEG file decoded at the smallest of its 1/2,
    1/4, 1/8 scales that still covers that size (PIL's ``draft``: a 12 MP photo shown at 1,600 px decodes at half
    size), any other photo as ``_as_photo`` reads it. Upright, RGB."""
    if not max_side or not isinstance(image, (str, os.PathLike)):
        return _as_photo(image)
    with _photo_errors([image]), Image.open(image) as opened:
        if opened.format == "JPEG":
            opened.draft("RGB", fit_size(opened.size, max_side))
        return load_image(opened)


def _stream(
    engine: QGroundEngine,
    photos: list[Image.Image | str],
    turns: list[Turn],
    settings: GenerationSettings,
    stages: bool = False,
) -> Iterator[str | Stage | GroundingResult]:
    """``engine.stream`` with a too-long conversation or an unusable photo (``photos`` may be paths: the engine's
    processor reads them, or finds them prepared) turned into a UserError."""
    paths = [p for p in photos if isinstance(p, (str, os.PathLike))]
    try:
        with _photo_errors(paths):
            yield from engine.stream(photos, turns, settings, stages=stages)
    except PromptTooLongError as err:
        raise UserError(str(err)) from None


TEMP_AGE_S = 3600.0  # files handed to or uploaded through Gradio are kept this long (Scratch)
SWEEP_EVERY_S = 60.0  # Gradio's temp folder is swept at most this often


class Scratch:
    """A private folder for files handed to Gradio; sub-folders older than ``max_age_s`` are removed whenever a new
    file is made (Gradio keeps its own copies). ``also``: folders laid out the same way (one sub-folder per file, as
    Gradio's temp folder is: uploads and the copies of our outputs) swept by the same rule, at most every
    ``SWEEP_EVERY_S``: Gradio's own cleanup of it (``Blocks(delete_cache=…)``, Gradio 6.31) stops for good at the
    first request that arrives while it iterates ("Set changed size during iteration", found by ``bench.load --soak``)
    and leaves the folders. Removal tolerates files that another request or Gradio removes meanwhile."""

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        max_age_s: float = TEMP_AGE_S,
        also: Sequence[str | os.PathLike] = (),
    ) -> None:
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="qground-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_age_s = max_age_s
        self.also = [Path(p) for p in also]
        self._swept = 0.0

    def folder(self) -> Path:
        """A fresh, empty sub-folder (old ones are removed first)."""
        now = time.time()
        _remove_older(self.root, now - self.max_age_s)
        if self.also and now - self._swept >= SWEEP_EVERY_S:
            self._swept = now
            for root in self.also:
                _remove_older(root, now - self.max_age_s)
        return Path(tempfile.mkdtemp(dir=self.root))

    def path(self, name: str) -> Path:
        """A fresh path ``<root>/<unique>/<name>`` (the file name is kept for downloads)."""
        return self.folder() / name

    def png(self, rgb: np.ndarray, name: str) -> str:
        """Save a uint8 (H, W, 3) image as a lossless PNG; returns its path."""
        path = self.path(name)
        Image.fromarray(rgb).save(path, format="PNG", compress_level=1)
        return str(path)

    def jpeg(self, rgb: np.ndarray, name: str) -> str:
        """Save a uint8 (H, W, 3) image as a JPEG for the screen (quality ``VIEW_JPEG_QUALITY``, chroma at full
        resolution so thin colored outlines stay crisp); returns its path."""
        path = self.path(name)
        Image.fromarray(rgb).save(path, format="JPEG", quality=VIEW_JPEG_QUALITY, subsampling=0)
        return str(path)


def _remove_older(root: Path, cutoff: float) -> None:
    """Remove the entries of ``root`` last modified before ``cutoff`` (epoch seconds); never raises."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for entry in entries:
        try:
            if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
        except OSError:  # gone meanwhile, or not ours to remove
            continue


_TRIM = {"last": 0.0}
TRIM_EVERY_S = 5.0


def trim_memory(now: float | None = None) -> bool:
    """Hand the heap memory freed since the last call back to the OS (glibc's ``malloc_trim``), at most every
    ``TRIM_EVERY_S``; returns whether it ran (False elsewhere than glibc). A server that decodes photos and runs a
    model per request otherwise keeps its freed pages, and its RSS climbs request after request
    (``docs/experiments/2026-12-05-soak.md``)."""
    now = time.monotonic() if now is None else now
    if now - _TRIM["last"] < TRIM_EVERY_S:
        return False
    _TRIM["last"] = now
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        return False
    return True


def gradio_temp_dir() -> Path:
    """Where Gradio keeps uploads and the copies of files handed to it: ``$GRADIO_TEMP_DIR``, else ``<tmp>/gradio``."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")


# -- chat --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Exchange:
    """One question and the model's answer: ``answer`` is the display text (it grows while streaming), ``raw`` the
    raw text with seg tokens once finished (what the model sees as history), ``note`` what was drawn, ``result`` the
    finished answer's ``GroundingResult`` (None while streaming)."""

    question: str
    answer: str = ""
    raw: str | None = None
    note: str = ""
    result: GroundingResult | None = None


@dataclass(frozen=True, eq=False)
class Thread:
    """A conversation about one photo (``image`` path) with a ``notice`` shown first; ``preview``: the photo shrunk
    to fit ``DISPLAY_MAX_SIDE``, decoded once when the photo arrives, for drawing overlays."""

    image: str | None = None
    exchanges: tuple[Exchange, ...] = ()
    notice: str = ""
    preview: Image.Image | None = None

    @property
    def result(self) -> GroundingResult | None:
        """The last exchange's finished result (None while it streams or before the first answer)."""
        return self.exchanges[-1].result if self.exchanges else None

    @property
    def drawn(self) -> tuple[int, GroundingResult] | None:
        """(turn number from 1, result) of the latest answer that drew masks: the overlay stays on it through answers
        that draw none, until one draws new masks, the turn is undone or the photo changes."""
        for turn in range(len(self.exchanges), 0, -1):
            result = self.exchanges[turn - 1].result
            if result is not None and result.masks:
                return turn, result
        return None


def new_thread(image: str | None, engine: QGroundEngine | None = None) -> Thread:
    """A fresh conversation for a newly uploaded photo (or none). An unusable photo gives a thread without a photo
    whose notice says why. ``engine``: a usable photo is prepared for it (``QGroundEngine.prepare``: preprocessed in
    the background while the person picks a question)."""
    if not image:
        return Thread(notice="Upload a photo to start a conversation about its quality.")
    try:
        photo = load_photo(image)
    except UserError as err:
        return Thread(notice=f"This photo cannot be used: {err}")
    if engine is not None:
        engine.prepare(image, photo)  # decoded once: the preview and the model's preprocessing share it
    return Thread(
        image=image,
        notice=f"New photo {Path(image).name} ({photo.width}×{photo.height} px): started a new conversation.",
        preview=_for_display(photo, {}, DISPLAY_MAX_SIDE)[0],
    )


def thread_messages(thread: Thread) -> list[dict]:
    """The thread as ``gr.Chatbot`` messages: the notice (in italics), then the question and the answer (followed by
    what it drew) per exchange; an answer still empty shows "…"."""
    messages: list[dict] = [{"role": "assistant", "content": f"*{thread.notice}*"}] if thread.notice else []
    for ex in thread.exchanges:
        answer = ex.answer or "…"
        messages.append({"role": "user", "content": ex.question})
        messages.append({"role": "assistant", "content": f"{answer}\n\n*{ex.note}*" if ex.note else answer})
    return messages


def chat_turn(
    engine: QGroundEngine,
    thread: Thread,
    question: str,
    settings: GenerationSettings,
) -> Iterator[tuple[Thread, bool]]:
    """Ask ``question`` about the thread's photo with the conversation so far; yields ``(thread, finished)`` as the
    answer grows, the last one with the new ``result``; until then the new exchange's ``note`` names the stage the
    request is in (``STAGES``). UserError without a photo or question, or when too long."""
    question = (question or "").strip()
    if not question:
        raise UserError("Type a question first (or press “Assess quality” / “Ground distortions”).")
    if not thread.image:
        raise UserError("Upload a photo first.")
    before = thread.exchanges
    yield dataclasses.replace(thread, exchanges=(*before, Exchange(question, note=STAGES["read"]))), False
    turns = [Turn(ex.question, ex.raw or ex.answer) for ex in thread.exchanges] + [Turn(question)]
    text, stage = "", STAGES["read"]
    for item in _stream(engine, [thread.image], turns, settings, stages=True):  # its path: it may be prepared
        if isinstance(item, (str, Stage)):
            text, stage = (item, stage) if isinstance(item, str) else (text, STAGES[item.name])
            yield dataclasses.replace(thread, exchanges=(*before, Exchange(question, text, note=stage))), False
        else:
            note = " ".join(filter(None, (reading_note(engine, question), mask_note(item))))
            done = Exchange(question, item.text, item.raw_text, note, item)
            yield dataclasses.replace(thread, exchanges=(*before, done)), True


def undo_turn(thread: Thread) -> tuple[Thread, str]:
    """The thread without its last exchange (and its result), plus that exchange's question to edit and resend."""
    if not thread.exchanges:
        raise UserError("There is no answer yet to undo or retry.")
    return dataclasses.replace(thread, exchanges=thread.exchanges[:-1]), thread.exchanges[-1].question


def clear_thread(thread: Thread) -> Thread:
    """The same photo with an empty conversation."""
    return Thread(
        thread.image, notice="Conversation cleared; ask a new question about the same photo.", preview=thread.preview
    )


def reading_note(engine: QGroundEngine, question: str) -> str:
    """How the model read ``question`` when its lexicon replaced words it never trained on (``qground.lexicon``):
    "Read as “Is it dark?”." ("" when it reads the question as typed), so a person sees what was answered."""
    read = engine.read_question(question)
    return "" if read == question else f"Read as “{read}”."


def mask_note(result: GroundingResult) -> str:
    """What the answer drew, in words ("No distortion masks in this answer." when nothing). A clean verdict made at a
    detection strictness above 0 says so, and that a lower one also shows weaker evidence: the slider sits in the
    closed Generation settings, and a higher strictness trades finds for fewer false alarms."""
    warnings = "".join(f" ({w})" for w in result.warnings)
    if not result.masks:
        if result.strictness > 0 and any(clean in result.text for clean in (CLEAN_DESCRIPTION, CLEAN_GROUNDING)):
            return (
                f"No distortion found at detection strictness {result.strictness:g}; a lower one (Generation "
                "settings) also shows weaker evidence." + warnings
            )
        return "No distortion masks in this answer." + warnings
    parts = [
        f"{get(name).display.lower()} — {r.area_percent:.1f} % of the image, {r.where}"
        for name, r in result.regions.items()
    ]
    return f"Drew {len(parts)} mask{'s' if len(parts) > 1 else ''}: " + "; ".join(parts) + "." + warnings


def same_drawing(before: Thread, after: Thread) -> bool:
    """Whether ``after`` shows the very masks ``before`` showed (an answer that drew none, on the same photo): the
    overlay, class choices, table and masks archive on screen stay as they are (the user's class selection too)."""
    a, b = before.drawn, after.drawn
    return a is not None and b is not None and a[1] is b[1] and before.image == after.image


def drawn_note(thread: Thread) -> str:
    """What the overlay shows, in words: the latest answer's ``mask_note``, or, when it drew none, that answer's note
    followed by which earlier turn the masks on screen come from ("" before the first answer)."""
    result, drawn = thread.result, thread.drawn
    if result is None:
        return ""
    if drawn is None or drawn[1] is result:
        return mask_note(result)
    turn, earlier = drawn
    question = thread.exchanges[turn - 1].question
    return f"{mask_note(result)} Shown: the masks of turn {turn} (“{question}”). {mask_note(earlier)}"


# -- result views ------------------------------------------------------------------------------------------------------
def _for_display(
    photo: Image.Image, masks: Mapping[str, np.ndarray], max_side: int | None
) -> tuple[Image.Image, dict[str, np.ndarray]]:
    """The photo shrunk to fit ``max_side`` (``imageio.fit_size``) and its bool masks (of any size: the photo's own,
    or the full photo's when ``photo`` is already a preview) brought to the same size (box filter: a display pixel is
    in a mask when at least half of the pixels it covers are)."""
    size = fit_size(photo.size, max_side)
    if size != photo.size:
        photo = photo.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    w, h = size
    shrunk = {
        name: m
        if m.shape == (h, w)
        else np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(size, Image.Resampling.BOX)) >= 128
        for name, m in masks.items()
    }
    return photo, shrunk


def annotated_image(
    image: str | Image.Image,
    result: GroundingResult | None,
    scratch: Scratch,
    classes: Sequence[str] | None = None,
    opacity: float = 0.5,
    max_side: int | None = None,
) -> tuple[str, list[tuple[np.ndarray, str]]]:
    """``gr.AnnotatedImage`` value for a photo (path or loaded; a loaded one may be a smaller preview of the photo the
    masks were made on): (path of the photo with the shown classes' outlines drawn by ``visualize.overlay``, [(float32
    alpha = ``opacity`` inside the mask, class name)]), at the image's size in a PNG or, with ``max_side``, shrunk to
    fit it in a JPEG (``imageio.fit_size``: a screen needs no 12 MP overlay; the zip and the API keep full-size masks,
    ``VIEW_JPEG_QUALITY``). The fill
    comes from the annotations, so hovering the legend highlights one class. ``classes`` None shows all."""
    name = Path(image).stem if isinstance(image, (str, os.PathLike)) else "photo"
    photo = _as_photo(image)
    masks = result.masks if result is not None else {}
    shown = {cls: m for cls, m in masks.items() if classes is None or cls in classes}
    photo, shown = _for_display(photo, shown, max_side)
    rgb = np.asarray(photo)
    base = overlay(rgb, shown, alpha=0.0, outline=True, outline_width=max(2, min(rgb.shape[:2]) // 300))
    path = scratch.jpeg(base, f"{name}-overlay.jpg") if max_side else scratch.png(base, f"{name}-overlay.png")
    return path, masks_to_annotations(shown, opacity=opacity)


def class_choices(result: GroundingResult | None) -> list[tuple[str, str]]:
    """(display name, class name) of the result's classes in taxonomy order, for the per-class toggles."""
    masks = result.masks if result is not None else {}
    return [(d.display, d.name) for d in DISTORTIONS if d.name in masks]


def highlight_spans(text: str) -> list[tuple[str, str | None]]:
    """The answer as ``gr.HighlightedText`` spans: distortion words and phrases (``taxonomy.match_class`` of up to
    ``MAX_PHRASE_WORDS`` words, longest first: "motion blur" → jitter, "out of focus" → blur) labelled with their class
    name, the rest unlabelled."""
    words = list(re.finditer(r"[A-Za-z]+", text))
    spans: list[tuple[str, str | None]] = []
    pos = i = 0
    while i < len(words):
        for n in range(MAX_PHRASE_WORDS, 0, -1):
            if i + n > len(words):
                continue
            start, end = words[i].start(), words[i + n - 1].end()
            phrase = text[start:end]
            if n > 1 and not re.fullmatch(r"[A-Za-z]+(?:[ \-][A-Za-z]+)*", phrase):
                continue
            name = match_class(phrase)
            if name is not None:
                if start > pos:
                    spans.append((text[pos:start], None))
                spans.append((phrase, name))
                pos, i = end, i + n
                break
        else:
            i += 1
    if pos < len(text):
        spans.append((text[pos:], None))
    return spans


def table_rows(result: GroundingResult | None) -> list[list]:
    """[[class display name, area % (2 decimals), where (``region_location`` of the mask), score (3 decimals)]] in
    taxonomy order."""
    if result is None:
        return []
    return [
        [get(name).display, round(r.area_percent, 2), r.where, round(result.scores.get(name, 0.0), 3)]
        for name, r in result.regions.items()
    ]


def masks_zip(result: GroundingResult, path: str | os.PathLike, image_name: str = "", model: str = "") -> Path:
    """Write the masks as a zip, atomically: ``<class key>.png`` (8-bit, 0 / 255, lossless) per class and
    ``result.json`` (answer, raw text, image size, per-class file/color/area %/where/score, strictness, timings,
    warnings)."""
    classes = [
        {
            "name": name,
            "key": get(name).key,
            "file": f"{get(name).key}.png",
            "color": get(name).color,
            "area_percent": r.area_percent,
            "where": r.where,
            "score": result.scores.get(name),
        }
        for name, r in result.regions.items()
    ]
    summary = {
        "image": image_name,
        "image_size": list(result.image_size) if result.image_size else None,
        "model": model,
        "answer": result.text,
        "raw_text": result.raw_text,
        "classes": classes,
        "strictness": result.strictness,
        "timings": result.timings,
        "warnings": result.warnings,
    }

    def write(f) -> None:
        with zipfile.ZipFile(f, "w") as zf:  # PNGs are stored as they are (already compressed)
            for entry in classes:
                mask = Image.fromarray(result.masks[entry["name"]].astype(np.uint8) * 255)
                zf.writestr(entry["file"], _png_bytes(mask))
            zf.writestr("result.json", json.dumps(summary, indent=1), compress_type=zipfile.ZIP_DEFLATED)

    return write_atomically(path, write)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def model_card(engine: QGroundEngine) -> str:
    """The served model's card (``README.md`` beside its weights, YAML front matter removed), "" when it has none."""
    card = engine.folder / "README.md" if engine.folder is not None else None
    if card is None or not card.is_file():
        return ""
    text = card.read_text(encoding="utf-8")
    if text.startswith("---\n"):
        end = text.find("\n---\n", 4)
        text = text[end + 5 :] if end != -1 else text
    return text.strip()


# -- comparison --------------------------------------------------------------------------------------------------------
def compare_photos(paths: Sequence[str | None]) -> tuple[list[str], list[str]]:
    """Slots A, B, C, D (empty ones None) → (labels, paths) of the filled ones; UserError unless 2 to 4 are filled.
    The paths go to the engine as they are (a slot's photo may be prepared since its upload, ``prepare_photo``); an
    unreadable one is named when the engine reads it (``_stream``)."""
    filled = [(SLOTS[i] if i < len(SLOTS) else str(i + 1), path) for i, path in enumerate(paths) if path]
    if not MIN_COMPARE <= len(filled) <= MAX_COMPARE:
        raise UserError(f"Compare needs {MIN_COMPARE} to {MAX_COMPARE} images (slots A–D); got {len(filled)}.")
    return [label for label, _ in filled], [str(path) for _, path in filled]


def prepare_photo(engine: QGroundEngine, path: str | None) -> None:
    """A photo put into a comparison slot, prepared for the engine in the background (``QGroundEngine.prepare``)."""
    if path:
        engine.prepare(path)


def compare_turn(
    engine: QGroundEngine,
    photos: list[Image.Image | str],
    question: str,
    settings: GenerationSettings,
) -> Iterator[tuple[str, list[float] | None]]:
    """The answer to a question about 2–4 photos (the processor builds the Co-Instruct "The first image: …" prompt),
    as it grows: ``(text, None)``, and last ``(text, choice)`` where ``choice`` is the choice head's probability of
    each photo for the answer's first pick (None for models without a choice head, or answers that pick none)."""
    question = (question or "").strip()
    if not question:
        raise UserError("Pick a preset or type a question about the images.")
    for item in _stream(engine, photos, [Turn(question)], settings):
        yield (item, None) if isinstance(item, str) else (item.text, item.choices[0] if item.choices else None)


def ranking_rows(
    answer: str, labels: Sequence[str], choice: Sequence[float] | None = None, question: str = ""
) -> tuple[list[list], str]:
    """Ranking table rows [rank, image label, phrase, probability] and a sentence saying how to read them. With the
    choice head's ``choice`` (one probability per image) every image is ranked by it; otherwise the images are in the
    order the answer names them (its pick first), or there is no ranking when it names none. A letter in the answer
    is an option of ``question`` when it lists options ("A. The second image"), else an image's slot label."""
    letters = question_options(question, len(labels)) or {label: k for k, label in enumerate(labels)}
    named = named_images(answer, len(labels), letters)
    if choice is not None:
        if len(choice) != len(labels):
            raise ValueError(f"{len(choice)} choice probabilities for {len(labels)} images")
        order = sorted(range(len(labels)), key=lambda k: -choice[k])
        phrases = dict(named)
        rows = [[rank, labels[k], phrases.get(k, ""), f"{choice[k]:.0%}"] for rank, k in enumerate(order, 1)]
        return rows, (
            "Ranked by the choice head's probability that each image answers the question; the answer names rank 1."
        )
    if not named:
        return [], (
            "The answer does not say which image it means (looked for “the first/second… image”, “image A–D”, "
            "“image 1–4” or a lone letter), so there is no ranking."
        )
    rows = [[rank, labels[index], phrase, ""] for rank, (index, phrase) in enumerate(named, 1)]
    rest = [label for k, label in enumerate(labels) if k not in dict(named)]
    note = f"Rank 1 is the image the answer picks. Not named: {', '.join(rest)}." if rest else ""
    return rows, note or "Rank 1 is the image the answer picks; the others follow in the order the answer names them."


def compare_outcome(
    engine: QGroundEngine, answer: str, labels: Sequence[str], choice: Sequence[float] | None, question: str
) -> tuple[list[list], str]:
    """The ranking table of a finished comparison (``ranking_rows``) and its note, led by how the question was read
    (``reading_note``) when the lexicon changed it."""
    rows, how = ranking_rows(answer, labels, choice, question)
    return rows, " ".join(filter(None, (reading_note(engine, (question or "").strip()), how)))


def ground_each(
    engine: QGroundEngine,
    labels: list[str],
    photos: list[Image.Image | str],
    settings: GenerationSettings,
    scratch: Scratch,
    opacity: float = 0.45,
    max_side: int | None = None,
) -> Iterator[list[tuple[str, str]]]:
    """Ground every photo (loaded, or a path) separately; yields the gallery so far: [(overlay PNG path, "A — noise
    12.3 %")], each overlay shrunk to fit ``max_side`` (None: full size)."""
    gallery: list[tuple[str, str]] = []
    for label, photo in zip(labels, photos):
        *_, result = _stream(engine, [photo], [Turn(GROUNDING_QUESTION)], settings)
        drawn = overlay(*_for_display(_display_photo(photo, max_side), result.masks, max_side), alpha=opacity)
        areas = ", ".join(f"{get(n).display.lower()} {r.area_percent:.1f} %" for n, r in result.regions.items())
        gallery.append((scratch.png(drawn, f"overlay-{label}.png"), f"{label} — {areas or 'no distortion masks'}"))
        yield list(gallery)


# -- single-shot API requests ------------------------------------------------------------------------------------------
def describe_request(
    engine: QGroundEngine, image: str | None, question: str, settings: GenerationSettings
) -> Iterator[str]:
    """One photo, one question (``QUESTIONS["describe"]`` when blank); yields the answer as it grows."""
    photo = load_photo(image)
    for item in _stream(engine, [photo], [Turn((question or "").strip() or QUESTIONS["describe"])], settings):
        yield item if isinstance(item, str) else item.text


def ground_request(
    engine: QGroundEngine,
    image: str | None,
    question: str,
    settings: GenerationSettings,
    scratch: Scratch,
    every_s: float = 0.1,
) -> Iterator[tuple[tuple | None, str, list[list], str | None]]:
    """One photo, one grounding question (``GROUNDING_QUESTION`` when blank); yields ``(None, answer so far, [], None)``
    while streaming (the first partial answer, then at most one every ``every_s`` seconds: each update costs a round
    of output processing), then ``(annotated image value, answer, table rows, masks zip path or None)``."""
    photo = load_photo(image)
    last = -float("inf")
    for item in _stream(engine, [photo], [Turn((question or "").strip() or GROUNDING_QUESTION)], settings):
        if isinstance(item, str):
            if time.perf_counter() - last >= every_s:
                last = time.perf_counter()
                yield None, item, [], None
            continue
        annotated = annotated_image(photo, item, scratch)
        archive = None
        if item.masks:
            archive = str(masks_zip(item, scratch.path(f"{Path(image).stem}-masks.zip"), Path(image).name, engine.name))
        yield annotated, item.text, table_rows(item), archive
