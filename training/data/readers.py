"""Readers for the real training data formats, their problem report and the mixture sampler (the QGround-100K record
format and its COCO RLE masks are defined in ``qground.records``).

Every reader is ``read_xxx(json_path, image_root, ..., max_bad_fraction=0.01) -> ReadResult`` and never drops a record
silently. Two kinds of trouble are told apart:

- an *unknown layout* (the file is not what the reader expects: the top level is not a list, a record is not a dict,
  a field has the wrong type, ...) raises ``DataFormatError`` at once, naming the JSON file, the record (index and id)
  and the field — it means the wrong reader or a format change, and no threshold applies;
- a *problem* (a record of the right layout that cannot be trained on: its image file is missing, its conversation is
  empty, a role is unknown, the turns do not alternate, a label matches no class, ...) is counted per kind in a
  ``ReadReport`` with the offending record and file. When more than ``max_bad_fraction`` of the records (for
  QGround-100K's released layout: of the annotator entries) have a problem the reader raises ``DataFormatError`` with
  the counts, the first few examples and advice for a dominant kind; otherwise it returns the good samples with the
  report, for the caller to log.

Paths: ``image`` fields are relative to ``image_root`` and come back as ``image_root / image``; QGround-100K masks
are relative to ``mask_root``: PNG masks come back as ``mask_root / mask``, the released JPEG color masks as lazy
``training.data.palette.ColorMask`` objects. Files are checked to exist, never opened, except QGround-100K's released
layout, whose image headers are read (the mask frame) and whose color masks are decoded once (the classes present).

Ids: a record's ``"id"`` (string or integer) names its sample and picks its question wording; it is required except
in Q-/Co-Instruct (``read_coinstruct``), where a missing one is derived from the file name and the record index.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import numpy as np

from qground.palette import DEFAULT_PALETTE, MaskAspectError, MaskFileError, Palette, PaletteError
from qground.prompts import Turn, grounding_answer
from qground.records import decode_rle, is_no_distortion
from qground.taxonomy import CLASS_NAMES, match_class
from qground.tokens import SegTokens
from training.data.palette import ColorMask, fused_label_map, image_size, label_map
from training.data.sample import DataFormatError, Sample

__all__ = [
    "DESCRIBE_QUESTIONS",
    "GROUNDING_QUESTIONS",
    "MixtureSampler",
    "ReadReport",
    "ReadResult",
    "describe_first",
    "describe_question",
    "grounding_question",
    "label_to_class",
    "read_coinstruct",
    "read_llava_instruct",
    "read_llava_pretrain",
    "read_qground100k",
]

MAX_COMPARISON_IMAGES = 4
HUMAN_ROLES = ("human", "user")
GPT_ROLES = ("gpt", "assistant")
LABEL_KEYS = ("label", "distortion", "category")
RELEASED_TEXT_KEY = "quality_description"  # QGround-100K as released: one annotator's paragraph …
RELEASED_MASK_KEY = "segmentation_mask"  # … and their whole-image color mask (JPEG)

GROUNDING_QUESTIONS = (
    "Please segment out distorted regions in the image.",
    "Which regions of this image are distorted? Please segment them.",
    "Find and segment every region of the image that suffers from a quality distortion.",
    "Segment the low-quality regions of this photo and name the distortion of each.",
)

DESCRIBE_QUESTIONS = (
    "Describe the quality of this image.",
    "How is the quality of this image? Please describe it in detail.",
    "Evaluate the quality of this image and explain your reasoning.",
    "What do you think of the quality of this image? Describe its distortions.",
)

_ORDINAL_WORDS = "first|second|third|fourth|fifth|sixth|seventh|eighth"
# An image placeholder (LLaVA's "<image>", mPLUG-Owl2/Co-Instruct's "<|image|>"), with Co-Instruct's optional
# "The first image: " header and the whitespace around it: our processor inserts image tokens and headers itself.
_PLACEHOLDER = re.compile(rf"\s*(?:The (?:{_ORDINAL_WORDS}) image:\s*)?(?:<image>|<\|image\|>)\s*", re.IGNORECASE)


# --------------------------------------------------------------------------------------------------------------------
# Problem report


@dataclass
class ReadReport:
    """What one reader saw in one file: ``total`` units (records, or for QGround-100K's released layout annotator
    entries: ``unit`` says which), and per problem kind the units that had it.

    ``problems[kind]`` lists one line per bad unit, e.g. ``"record 7 (id '0042'): image 'a/b.jpg' not found under
    /data/images"``. A unit is counted once, under its first problem. ``hints[kind]`` is advice added to the error of
    ``check`` when that kind of problem hit more than half of the units (e.g. "the palette is likely wrong").
    """

    json_path: Path
    total: int = 0
    problems: dict[str, list[str]] = field(default_factory=dict)
    unit: str = "records"
    hints: dict[str, str] = field(default_factory=dict)

    def add(self, kind: str, example: str) -> None:
        self.problems.setdefault(kind, []).append(example)

    @property
    def bad(self) -> int:
        return sum(len(examples) for examples in self.problems.values())

    @property
    def good(self) -> int:
        return self.total - self.bad

    def counts(self) -> dict[str, int]:
        """Problem kind -> number of records, most frequent first."""
        return dict(sorted(((k, len(v)) for k, v in self.problems.items()), key=lambda kv: -kv[1]))

    def summary(self, examples: int = 3) -> str:
        """A few lines for a log: totals, then each kind with its count and first ``examples`` offenders."""
        lines = [f"{self.json_path}: {self.good} of {self.total} {self.unit} usable, {self.bad} with problems"]
        for kind, count in self.counts().items():
            lines.append(f"  {kind}: {count}")
            lines += [f"    {example}" for example in self.problems[kind][:examples]]
        return "\n".join(lines)

    def check(self, max_bad_fraction: float) -> None:
        """Raise DataFormatError when the file has no records or more than ``max_bad_fraction`` of them are bad."""
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        if self.total == 0:
            raise DataFormatError(f"{self.json_path}: the file holds no records")
        if self.bad > max_bad_fraction * self.total:
            hints = [hint for kind, hint in self.hints.items() if len(self.problems.get(kind, ())) > self.total / 2]
            raise DataFormatError(
                f"{self.json_path}: {self.bad / self.total:.1%} of the {self.unit} are bad, more than max_bad_fraction="
                f"{max_bad_fraction:.1%}:\n{self.summary()}" + "".join(f"\n{hint}" for hint in hints)
            )


class ReadResult(NamedTuple):
    """A reader's answer: the good samples, in file order, and the report on the rest."""

    samples: list[Sample]
    report: ReadReport


class _BadRecord(Exception):
    """A record of the expected layout that cannot be used; ``kind`` is the report's problem kind."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind


@dataclass(frozen=True)
class _Where:
    """A record's place, for messages: the file, its index in the top-level list and its id (when it has one)."""

    json_path: Path
    index: int
    id: str = ""

    def __str__(self) -> str:
        return f"record {self.index}" + (f" (id {self.id!r})" if self.id else "")

    def layout_error(self, field_name: str, problem: str) -> DataFormatError:
        return DataFormatError(f"{self.json_path}: {self}: field {field_name!r} {problem}")


def _load_records(json_path: Path) -> list[Any]:
    """The file's top-level JSON list."""
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{json_path}: not valid JSON ({err})") from None
    if not isinstance(data, list):
        raise DataFormatError(f"{json_path}: the top level must be a list of records, got {type(data).__name__}")
    return data


def _read(
    json_path: str | Path,
    parse: Callable[[_Where, dict[str, Any]], Sample | list[Sample | _BadRecord]],
    max_bad_fraction: float,
    *,
    derive_ids: bool = False,
    records: list[Any] | None = None,
    report: ReadReport | None = None,
) -> ReadResult:
    """Parse every record with ``parse``, which raises DataFormatError (layout) or _BadRecord (problem), and returns
    one Sample, or a list with one Sample or _BadRecord per unit (a record of several units). ``derive_ids``: a
    record without ``"id"`` gets ``"<file stem>#<index>"``."""
    json_path = Path(json_path)
    records = _load_records(json_path) if records is None else records
    report = ReadReport(json_path) if report is None else report
    samples = []
    for index, record in enumerate(records):
        where = _Where(json_path, index)
        if not isinstance(record, dict):
            raise DataFormatError(f"{json_path}: {where}: expected a JSON object, got {type(record).__name__}")
        where = _Where(json_path, index, _record_id(where, record, derive_ids))
        try:
            outcome = parse(where, record)
        except _BadRecord as bad:
            outcome = bad
        for unit in outcome if isinstance(outcome, list) else [outcome]:
            report.total += 1
            if isinstance(unit, _BadRecord):
                report.add(unit.kind, f"{where}: {unit}")
            else:
                samples.append(unit)
    report.check(max_bad_fraction)
    return ReadResult(samples, report)


def _record_id(where: _Where, record: dict[str, Any], derive: bool = False) -> str:
    value = record.get("id")
    if derive and value is None:
        return f"{where.json_path.stem}#{where.index}"
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise where.layout_error("id", f"must be a string or an integer, got {value!r}")
    return str(value)


# --------------------------------------------------------------------------------------------------------------------
# LLaVA conversations (LLaVA-Pretrain, LLaVA-Instruct-150K, Q-Instruct / Co-Instruct)


def read_llava_pretrain(json_path: str | Path, image_root: str | Path, max_bad_fraction: float = 0.01) -> ReadResult:
    """LLaVA-Pretrain (``blip_laion_cc_sbu_558k.json``): ``[{"id", "image", "conversations": [{"from": "human",
    "value": "<image>\\nRender a clear and concise summary of the photo."}, {"from": "gpt", "value": caption}]}]``.

    Same schema and rules as ``read_llava_instruct``; ``source="llava_pretrain"``.
    """
    parse = partial(_conversation_sample, image_root=Path(image_root), source="llava_pretrain", max_images=1)
    return _read(json_path, parse, max_bad_fraction)


def read_llava_instruct(json_path: str | Path, image_root: str | Path, max_bad_fraction: float = 0.01) -> ReadResult:
    """LLaVA-Instruct-150K: the LLaVA schema, multi-turn; ``"image"`` (one path) is optional (text-only samples).

    Roles alternate human/gpt ("user"/"assistant" accepted), starting with human and ending with gpt. The ``<image>``
    placeholder (once, before or after the first question's text, newline-separated) is removed from the question:
    the processor inserts image tokens itself. ``source="llava_instruct"``.
    """
    parse = partial(_conversation_sample, image_root=Path(image_root), source="llava_instruct", max_images=1)
    return _read(json_path, parse, max_bad_fraction)


def read_coinstruct(json_path: str | Path, image_root: str | Path, max_bad_fraction: float = 0.01) -> ReadResult:
    """Q-Instruct / Co-Instruct: the LLaVA schema where ``"image"`` is one path or a list of up to 4 paths (multi-image
    comparison); image order is kept. Placeholders may be ``<image>`` or ``<|image|>`` and may carry Co-Instruct's
    ``"The first image: "`` headers; both are removed (the prompt template adds the headers). ``source="coinstruct"``.

    ``"id"`` is optional here (LLaVA's and Q-Align's loaders never read it, so a release may lack it): a record
    without one (or with ``null``) gets ``"<json file stem>#<record index>"``, e.g. ``"cleaned_labels#41"``.
    """
    parse = partial(
        _conversation_sample, image_root=Path(image_root), source="coinstruct", max_images=MAX_COMPARISON_IMAGES
    )
    return _read(json_path, parse, max_bad_fraction, derive_ids=True)


def _conversation_sample(
    where: _Where, record: dict[str, Any], image_root: Path, source: str, max_images: int
) -> Sample:
    """One LLaVA-schema record -> Sample. Layout is checked for the whole record before any problem is reported."""
    relative = _image_field(where, record, allow_list=max_images > 1)
    messages = _messages_field(where, record)
    if len(relative) > max_images:
        raise _BadRecord("too many images", f"{len(relative)} images, at most {max_images} supported")
    images = [
        _existing(image_root / rel, "missing image", f"image {rel!r} not found under {image_root}") for rel in relative
    ]
    return Sample(id=where.id, images=images, turns=_turns(messages, len(images)), source=source)


def _image_field(where: _Where, record: dict[str, Any], allow_list: bool) -> list[str]:
    """The record's image paths (relative to the image root): [] without "image", else one or (``allow_list``) more."""
    value = record.get("image")
    if value is None:
        return []
    if isinstance(value, str) and value:
        return [value]
    if allow_list and isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return list(value)
    expected = "a path or a non-empty list of paths" if allow_list else "one path (a non-empty string)"
    raise where.layout_error("image", f"must be {expected}, got {value!r}")


def _messages_field(where: _Where, record: dict[str, Any]) -> list[tuple[str, str]]:
    """The "conversations" list as (role, text) pairs; roles are lower-cased but not yet validated."""
    conversation = record.get("conversations")
    if not isinstance(conversation, list):
        raise where.layout_error("conversations", f"must be a list of turns, got {conversation!r:.80}")
    messages = []
    for k, message in enumerate(conversation):
        if not isinstance(message, dict):
            raise where.layout_error(f"conversations[{k}]", f"must be an object, got {message!r:.80}")
        for key in ("from", "value"):
            if not isinstance(message.get(key), str):
                raise where.layout_error(f"conversations[{k}].{key}", f"must be a string, got {message.get(key)!r:.80}")
        messages.append((message["from"].strip().lower(), message["value"]))
    return messages


def _turns(messages: list[tuple[str, str]], num_images: int) -> list[Turn]:
    """Alternating (human, gpt) messages -> Turns with image placeholders removed from the questions."""
    if not messages:
        raise _BadRecord("empty conversation", "no turns")
    for k, (role, _) in enumerate(messages):
        if role not in HUMAN_ROLES + GPT_ROLES:
            raise _BadRecord("unknown role", f"conversations[{k}].from is {role!r}")
    roles = ["human" if role in HUMAN_ROLES else "gpt" for role, _ in messages]
    if len(roles) % 2 or any(role != ("human", "gpt")[k % 2] for k, role in enumerate(roles)):
        raise _BadRecord("mismatched turns", f"roles {roles} do not alternate human, gpt, ... ending with gpt")
    placeholders = sum(len(_PLACEHOLDER.findall(text)) for _, text in messages[0::2])
    if placeholders not in (0, num_images):
        raise _BadRecord("placeholder mismatch", f"{placeholders} image placeholders for {num_images} images")
    questions = [_PLACEHOLDER.sub("\n", text).strip() for _, text in messages[0::2]]
    return [Turn(q, a) for q, (_, a) in zip(questions, messages[1::2])]


def _existing(path: Path, kind: str, detail: str) -> Path:
    if not path.is_file():
        raise _BadRecord(kind, detail)
    return path


# --------------------------------------------------------------------------------------------------------------------
# QGround-100K


def read_qground100k(
    json_path: str | Path,
    image_root: str | Path,
    mask_root: str | Path | None = None,
    max_bad_fraction: float = 0.01,
    *,
    palette: Palette | str | Path | None = None,
    fuse_annotators: bool = False,
) -> ReadResult:
    """QGround-100K in two layouts, told apart per record by the keys of its ``ann_list`` entries (the only function
    that knows them). Both are a JSON list of ``{"id", "image", "ann_list": [ann, ...]}`` with ``image`` relative to
    ``image_root`` and mask paths relative to ``mask_root`` (default: the JSON file's folder + ``masks/``, which fits
    the release: ``qground_dataset/{qground_train.json, images/, masks/}``). ``source="qground100k"``.

    **Released layout** (``qground.tar``, DATA-FORMATS.md §1): each ann is one annotator's ``{"quality_description":
    paragraph, "segmentation_mask": "spaq_koniq/<stem>_<annotator>_<stem>.jpg"}``, a whole-image JPEG whose pixel
    colors say the class. Masks are decoded with ``qground.palette.decode_label_map`` and ``palette`` (a ``Palette``,
    a palette JSON path, or None for ``Palette.load()``, the documented guess); the image's size comes from its header.

    - Samples: by default one per annotator entry (id ``"<stem>_<annotator>"`` from the mask file name, else
      ``"<record id>#<k>"``); with ``fuse_annotators=True`` one per record (the record's id) whose masks are the
      per-class strict majority vote of its annotators' decoded masks (``qground.palette.vote``: 2 of 3, 2 of 2).
    - Supervision: the grounding turn ``Turn(grounding_question(id), grounding_answer(classes, seg groups))`` for the
      classes present (taxonomy order; "There is no obvious distortion" when the mask is empty) AND a describe turn
      ``Turn(describe_question(id), paragraph)`` with the annotator's quality paragraph, in one two-turn conversation,
      so the model learns to describe and to ground from the same triplet, as the paper's (image, text, mask)
      triplets intend. The order of the two turns is chosen per sample by a stable hash of its id
      (``describe_first``): half the samples ground first, as the app asks, and half ground after describing. A
      blank paragraph leaves the grounding turn alone. A fused sample describes with the paragraph of the annotator
      whose classes agree best (Jaccard) with the voted ones (the first on ties).
    - Masks stay lazy: ``ColorMask`` objects (``training.data.palette``) that decode on ``load()`` into bool (H, W)
      arrays in the upright image frame; they also work as mask files (``PIL.Image.open``, ``np.asarray``). The reader
      decodes every mask once to learn which classes it holds (about 0.06 s for a 1024×768 mask, 1 s for 12 MP).
    - Mask size ≠ image size: a mask with the image's aspect ratio (within 1 %) is resized nearest-neighbour to the
      image's size (labels, after decoding at the mask's own resolution); another aspect ratio (a different or
      rotated image) is a "mask size mismatch" problem.
    - Units: the report counts annotator entries (``report.unit == "annotations"``; a record of the other layout
      counts as one), or records when fused, where one bad annotator makes the record bad. Problems: missing
      image, bad image (unreadable header), missing mask, bad mask (unreadable), mask size mismatch, palette
      mismatch (colors the palette does not explain: the message names them with their shares), no annotations (an
      empty ``ann_list`` in a file of this layout). When most units fail on the palette, the ``DataFormatError`` says
      the palette is likely wrong and how to check it (``python -m training.data.palette MASK_DIR``).

    **Earlier layout** (our exports, ``qground.records``): each ann names its distortion under the first present key
    of ``"label"``, ``"distortion"``, ``"category"`` (a free word, mapped with ``label_to_class``) and holds
    ``"mask"``: a PNG path (non-zero = region) or COCO RLE ``{"size": [h, w], "counts": [int, ...] | str}``
    (column-major runs starting with background; a string is COCO's compressed form). Other ann keys are ignored.
    Each record becomes one Sample: ``turns = [Turn(grounding_question(id), grounding_answer(classes, seg groups))]``
    with one class per ann, and ``masks`` in ann order (PNG paths as Path, RLE decoded to bool (h, w) arrays). An empty
    ``ann_list`` is a "no distortion" sample without masks. Problems: missing image, missing mask (PNG not found),
    bad mask (RLE counts that do not fill the size), unknown label (no class within edit distance 3, or a
    no-distortion word given to a region). PNG files are checked to exist, never opened.
    """
    json_path, image_root = Path(json_path), Path(image_root)
    mask_root = json_path.parent / "masks" if mask_root is None else Path(mask_root)
    records = _load_records(json_path)
    report = ReadReport(json_path)
    released_file = _file_is_released(records)
    loaded: dict[str, Palette] = {}

    def get_palette() -> Palette:
        if "palette" not in loaded:
            loaded["palette"] = palette if isinstance(palette, Palette) else Palette.load(palette or DEFAULT_PALETTE)
            source = loaded["palette"].source
            report.hints["palette mismatch"] = (
                f"Most masks hold colors the palette {source or '(given)'} does not explain: the palette is likely "
                f"wrong for these masks. List the colors they hold with `python -m training.data.palette {mask_root}"
                f"{f' --palette {source}' if source else ''} --out palette.json`, fix the class names in it and pass "
                "it as palette=."
            )
        return loaded["palette"]

    def parse(where: _Where, record: dict[str, Any]) -> Sample | list[Sample | _BadRecord]:
        image = record.get("image")
        if not isinstance(image, str) or not image:
            raise where.layout_error("image", f"must be one path (a non-empty string), got {image!r}")
        anns = record.get("ann_list")
        if not isinstance(anns, list):
            raise where.layout_error("ann_list", f"must be a list, got {anns!r:.80}")
        if _is_released(where, anns) or (released_file and not anns):
            if not fuse_annotators:
                report.unit = "annotations"
            released = _released_fields(where, anns)
            return _released_samples(where, image, released, image_root, mask_root, get_palette(), fuse_annotators)
        fields = [_ann_fields(where, k, ann) for k, ann in enumerate(anns)]
        image_path = _existing(image_root / image, "missing image", f"image {image!r} not found under {image_root}")
        classes = [_ann_class(k, label) for k, (label, _) in enumerate(fields)]
        masks = [_ann_mask(k, mask, mask_root) for k, (_, mask) in enumerate(fields)]
        answer = grounding_answer(classes, SegTokens().group_text())
        turns = [Turn(grounding_question(where.id), answer)]
        return Sample(
            id=where.id, images=[image_path], turns=turns, masks=masks, mask_labels=classes, source="qground100k"
        )

    return _read(json_path, parse, max_bad_fraction, records=records, report=report)


def grounding_question(sample_id: str) -> str:
    """One of ``GROUNDING_QUESTIONS``, chosen by a stable hash (CRC-32) of the sample id: same id, same question."""
    return GROUNDING_QUESTIONS[zlib.crc32(sample_id.encode("utf-8")) % len(GROUNDING_QUESTIONS)]


def describe_question(sample_id: str) -> str:
    """One of ``DESCRIBE_QUESTIONS``, chosen by a stable hash of the sample id (not the grounding question's)."""
    return DESCRIBE_QUESTIONS[zlib.crc32(f"describe:{sample_id}".encode()) % len(DESCRIBE_QUESTIONS)]


def describe_first(sample_id: str) -> bool:
    """Whether a released-layout sample asks for the description before the grounding (a stable hash of its id:
    about half the samples)."""
    return zlib.crc32(f"order:{sample_id}".encode()) % 2 == 0


# --------------------------------------------------------------------------------------------------------------------
# QGround-100K, released layout


@dataclass(frozen=True)
class _ReleasedAnn:
    """One annotator's entry: ``ann_list[k]`` = its paragraph and mask path (relative to the mask root)."""

    k: int
    description: str
    mask: str


def _is_released(where: _Where, anns: list[Any]) -> bool:
    """Whether ``ann_list`` is in the released layout (its entries hold ``segmentation_mask``); a list mixing both
    layouts is a layout error."""
    released = [isinstance(ann, dict) and RELEASED_MASK_KEY in ann for ann in anns]
    if any(released) and not all(released):
        k = released.index(False)
        raise where.layout_error(
            f"ann_list[{k}]", f"has no {RELEASED_MASK_KEY!r} while other entries do (one layout per record)"
        )
    return bool(anns) and all(released)


def _file_is_released(records: list[Any]) -> bool:
    """Whether the file's first record with a non-empty ``ann_list`` is in the released layout (then an empty
    ``ann_list`` means "not annotated", not "no distortion")."""
    for record in records:
        anns = record.get("ann_list") if isinstance(record, dict) else None
        if isinstance(anns, list) and anns:
            return isinstance(anns[0], dict) and RELEASED_MASK_KEY in anns[0]
    return False


def _released_fields(where: _Where, anns: list[Any]) -> list[_ReleasedAnn]:
    """Layout check of a released ``ann_list``: both keys, a string paragraph and a non-empty mask path."""
    out = []
    for k, ann in enumerate(anns):
        text, mask = ann.get(RELEASED_TEXT_KEY), ann.get(RELEASED_MASK_KEY)
        if not isinstance(text, str):
            raise where.layout_error(f"ann_list[{k}].{RELEASED_TEXT_KEY}", f"must be a string, got {text!r:.80}")
        if not isinstance(mask, str) or not mask:
            raise where.layout_error(f"ann_list[{k}].{RELEASED_MASK_KEY}", f"must be a path, got {mask!r:.80}")
        out.append(_ReleasedAnn(k, text.strip(), mask))
    return out


def _released_samples(
    where: _Where,
    image: str,
    anns: list[_ReleasedAnn],
    image_root: Path,
    mask_root: Path,
    palette: Palette,
    fuse: bool,
) -> list[Sample | _BadRecord]:
    """One released record → one Sample or _BadRecord per annotator (or one for the record when ``fuse``)."""
    if not anns:
        return [_BadRecord("no annotations", "ann_list is empty")]
    units = 1 if fuse else len(anns)
    image_path = image_root / image
    try:
        if not image_path.is_file():
            raise _BadRecord("missing image", f"image {image!r} not found under {image_root}")
        try:
            size = image_size(image_path)
        except MaskFileError as err:
            raise _BadRecord("bad image", str(err)) from None
    except _BadRecord as bad:
        return [bad] * units
    decoded = [_decode_released(ann, mask_root, palette, size) for ann in anns]
    if fuse:
        bad = next((d for d in decoded if isinstance(d, _BadRecord)), None)
        if bad is not None:
            return [bad]
        paths = tuple(mask_root / ann.mask for ann in anns)
        classes = _present(fused_label_map(paths, palette, size), palette)
        agreement = [_jaccard(set(classes), set(d[1])) for d in decoded]
        text = anns[agreement.index(max(agreement))].description
        return [_released_sample(where.id, image_path, text, classes, paths, palette, size)]
    ids = _annotator_ids(where, image, anns)
    return [
        d
        if isinstance(d, _BadRecord)
        else _released_sample(sid, image_path, ann.description, d[1], (d[0],), palette, size)
        for sid, ann, d in zip(ids, anns, decoded)
    ]


def _decode_released(
    ann: _ReleasedAnn, mask_root: Path, palette: Palette, size: tuple[int, int]
) -> tuple[Path, list[str]] | _BadRecord:
    """Decode one annotator's mask file → (path, classes present), or the problem."""
    path = mask_root / ann.mask
    if not path.is_file():
        return _BadRecord("missing mask", f"ann_list[{ann.k}] mask {ann.mask!r} not found under {mask_root}")
    try:
        return path, _present(label_map(path, palette, size), palette)
    except MaskAspectError as err:
        return _BadRecord("mask size mismatch", f"ann_list[{ann.k}]: {err}")
    except MaskFileError as err:
        return _BadRecord("bad mask", f"ann_list[{ann.k}]: {err}")
    except PaletteError as err:
        return _BadRecord("palette mismatch", f"ann_list[{ann.k}]: {err}")


def _present(labels: np.ndarray, palette: Palette) -> list[str]:
    """The classes a label map holds, in taxonomy order (the answer's and the masks' order)."""
    found = {palette.names[k - 1] for k in np.flatnonzero(np.bincount(labels.ravel())) if k > 0}
    return [name for name in CLASS_NAMES if name in found]


def _jaccard(a: set[str], b: set[str]) -> float:
    return 1.0 if not a | b else len(a & b) / len(a | b)


def _annotator_ids(where: _Where, image: str, anns: list[_ReleasedAnn]) -> list[str]:
    """Per-annotator sample ids ``"<stem>_<annotator>"`` from mask names ``<stem>_<annotator>_<stem>.<ext>`` (the
    dataset's own id convention); ``"<record id>#<k>"`` when a name does not follow it or repeats."""
    stem = PurePosixPath(image).stem
    ids: list[str] = []
    for ann in anns:
        name = PurePosixPath(ann.mask).stem
        middle = name[len(stem) + 1 : -(len(stem) + 1)] if len(name) > 2 * len(stem) + 2 else ""
        ok = middle and name.startswith(f"{stem}_") and name.endswith(f"_{stem}")
        candidate = f"{stem}_{middle}" if ok else f"{where.id}#{ann.k}"
        ids.append(candidate if candidate not in ids else f"{where.id}#{ann.k}")
    return ids


def _released_sample(
    sample_id: str,
    image_path: Path,
    description: str,
    classes: list[str],
    paths: tuple[Path, ...],
    palette: Palette,
    size: tuple[int, int],
) -> Sample:
    ground = Turn(grounding_question(sample_id), grounding_answer(classes, SegTokens().group_text()))
    turns = [ground]
    if description:
        describe = Turn(describe_question(sample_id), description)
        turns = [describe, ground] if describe_first(sample_id) else [ground, describe]
    masks = [ColorMask(paths, name, palette, size) for name in classes]
    return Sample(
        id=sample_id, images=[image_path], turns=turns, masks=masks, mask_labels=list(classes), source="qground100k"
    )


# --------------------------------------------------------------------------------------------------------------------
# QGround-100K, earlier layout


def _ann_fields(where: _Where, k: int, ann: Any) -> tuple[str, str | dict[str, Any]]:
    """Layout check of ``ann_list[k]``: (label word, mask path or RLE dict with a valid size)."""
    if not isinstance(ann, dict):
        raise where.layout_error(f"ann_list[{k}]", f"must be an object, got {ann!r:.80}")
    key = next((key for key in LABEL_KEYS if key in ann), None)
    if key is None:
        raise where.layout_error(f"ann_list[{k}]", f"has no label: expected one of {list(LABEL_KEYS)}, got {list(ann)}")
    if not isinstance(ann[key], str):
        raise where.layout_error(f"ann_list[{k}].{key}", f"must be a string, got {ann[key]!r:.80}")
    mask = ann.get("mask")
    if isinstance(mask, str) and mask:
        return ann[key], mask
    if isinstance(mask, dict) and {"size", "counts"} <= mask.keys():
        size, counts = mask["size"], mask["counts"]
        if not (isinstance(size, list) and len(size) == 2 and all(_is_count(v) for v in size)):
            raise where.layout_error(f"ann_list[{k}].mask.size", f"must be [height, width], got {size!r:.80}")
        if not (isinstance(counts, str) or (isinstance(counts, list) and all(_is_count(v) for v in counts))):
            raise where.layout_error(f"ann_list[{k}].mask.counts", "must be a string or a list of non-negative ints")
        return ann[key], mask
    raise where.layout_error(
        f"ann_list[{k}].mask", f"must be a PNG path or an RLE object with 'size' and 'counts', got {mask!r:.80}"
    )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _ann_class(k: int, label: str) -> str:
    name = label_to_class(label)
    if name is None:
        raise _BadRecord("unknown label", f"ann_list[{k}] label {label!r} matches no distortion class")
    return name


def _ann_mask(k: int, mask: str | dict[str, Any], mask_root: Path) -> Path | np.ndarray:
    if isinstance(mask, str):
        return _existing(mask_root / mask, "missing mask", f"ann_list[{k}] mask {mask!r} not found under {mask_root}")
    try:
        return decode_rle(mask)
    except ValueError as err:
        raise _BadRecord("bad mask", f"ann_list[{k}]: {err}") from None


def label_to_class(word: str) -> str | None:
    """A free distortion word -> canonical class name by ``qground.taxonomy.match_class`` (names, aliases,
    inflections, one-edit typos: "Blurry" -> "blur", "motion blur" -> "jitter", "nosie" -> "noise"), or None for
    no-distortion words, empty text and words that name no class ("haze", "spaceship").

    No-distortion words are checked first: "none" is only 2 edits from "noise".
    """
    if is_no_distortion(word):
        return None
    return match_class(word)


# --------------------------------------------------------------------------------------------------------------------
# Mixture sampling


class MixtureSampler:
    """Draws ``num_samples`` ``(dataset_name, index)`` pairs from several datasets in fixed proportions.

    Dataset ``name`` gets ``num_samples * weights[name] / sum(weights)`` draws, rounded by largest remainder so the
    total is exact; the draws are interleaved in a random order. A dataset's indices are its shuffled epochs laid end to
    end (each epoch a fresh permutation), cut at its quota: small datasets are over-sampled evenly, large ones
    sub-sampled without repeats. Everything is determined by ``seed`` and the epoch set with ``set_epoch``.

    Usable as a ``torch.utils.data.DataLoader`` sampler for a dataset whose ``__getitem__`` takes the pair.
    """

    def __init__(
        self, datasets: Mapping[str, Sequence[Any]], weights: Mapping[str, float], num_samples: int, seed: int = 0
    ):
        if set(datasets) != set(weights):
            missing, extra = sorted(set(datasets) - set(weights)), sorted(set(weights) - set(datasets))
            raise ValueError(f"weights must name exactly the datasets: missing {missing}, unknown {extra}")
        for name, weight in weights.items():
            if not (isinstance(weight, int | float) and math.isfinite(weight) and weight > 0):
                raise ValueError(f"weight of {name!r} must be a positive number, got {weight!r}")
        empty = sorted(name for name, data in datasets.items() if len(data) == 0)
        if empty:
            raise ValueError(f"datasets {empty} are empty and cannot be sampled")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples <= 0:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        self.names = sorted(datasets)
        self.sizes = {name: len(datasets[name]) for name in self.names}
        self.quotas = _quotas({name: float(weights[name]) for name in self.names}, num_samples)
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for a new pass (call before each epoch, like DistributedSampler)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[str, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = np.repeat(np.arange(len(self.names)), [self.quotas[name] for name in self.names])
        rng.shuffle(order)
        indices = {name: iter(_epochs(rng, self.sizes[name], self.quotas[name])) for name in self.names}
        for k in order:
            name = self.names[k]
            yield name, int(next(indices[name]))


def _quotas(weights: dict[str, float], total: int) -> dict[str, int]:
    """Split ``total`` in proportion to ``weights`` with integer parts; leftovers go to the largest remainders."""
    scale = total / sum(weights.values())
    exact = {name: w * scale for name, w in weights.items()}
    quotas = {name: math.floor(x) for name, x in exact.items()}
    by_remainder = sorted(exact, key=lambda name: (quotas[name] - exact[name], name))
    for name in by_remainder[: total - sum(quotas.values())]:
        quotas[name] += 1
    return quotas


def _epochs(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    """``count`` indices into range(size): fresh permutations end to end, cut at ``count``."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    passes = -(-count // size)
    return np.concatenate([rng.permutation(size) for _ in range(passes)])[:count]
