"""Evaluation: grounding metrics, description and comparison scores, and a runner over a synthetic evaluation folder.

Grounding metrics (`GroundingMetrics`, one ``add(pred, gt)`` per image; masks are bool (H, W) in the image's frame,
keyed by class name, key or display name). Per class c, over the whole set: I_c = Σ |pred ∩ gt|, U_c = Σ |pred ∪ gt|,
G_c = Σ |gt| (pixels).
- IoU_c = I_c / U_c, None when U_c = 0 (the class is in no ground truth and no prediction);
- Acc_c = I_c / G_c, None when G_c = 0 (recall of the class's pixels; undefined without ground truth);
- mIoU, mAcc: means over the classes that are not None (the paper's metrics; a class only ever predicted, never true,
  counts with IoU 0 in mIoU);
- gIoU: mean of the per-image IoU over the (image, class) pairs where pred ∪ gt is not empty;
- cIoU: Σ_c I_c / Σ_c U_c (cumulative IoU over all classes);
- clean rate: share of the images without any ground-truth class that receive no predicted mask, a predicted mask
  covering less than ``EMPTY_MASK_FRACTION`` of the image counting as none (None when no image is clean); per class,
  the number of those clean images that receive a mask of the class by the same rule (its clean-image false alarms).

Descriptions: `named_classes(text)` finds the distortion classes a sentence names (negated mentions excluded) and
`description_f1` is the micro-F1 of the classes named by predicted vs reference descriptions over (item, class) pairs.
Comparisons: `comparison_accuracy` scores answers against truths, reading the image each one picks with
`qground.naming.parse_choice`; the compare task also scores them per question type (`qground.mcq.question_type`, the
kinds the multiple-choice benchmarks of `qground.mcq` are broken down by).

Evaluation folder (``evaluate``): ``images/STEM.png`` (any image extension), ``gt/STEM/<class key>.png`` (8-bit, image
size, non-zero = the class; only present classes; a clean image has none), optional ``describe.json`` and
``compare.json`` in the LLaVA conversation schema with image paths relative to the folder (a comparison entry's
optional ``"kind"``, which the synthetic data writes, adds an accuracy per kind).

QGround-Test (``read_qground_test``, ``evaluate_qground_test``): the released test split of QGround-100K,
``qground_dataset/qground_test.json`` (1,000 images) with ``images/`` and ``masks/`` beside it. Every ``ann_list``
entry is one annotator's ``{"quality_description", "segmentation_mask"}``, the mask a JPEG whose pixel colors are the
classes (decoded with ``qground.palette``). The model grounds each image once; its masks are scored with
``GroundingMetrics`` (the definitions above; DESIGN.md §2 gives only the paper's numbers, mIoU 0.271 and mAcc 0.539 for
Q-Ground) against the annotators' masks, used as ``ANNOTATOR_USES`` says:
- ``each`` (default): every annotator's mask is a reference of its own: an image with three annotators adds its
  prediction three times, once against each, so the pixel counts are pooled over all (image, annotator) pairs;
- ``majority``: one fused reference per image, a pixel in class c when more than half of the image's annotators
  marked it c (regions under the palette's ``min_region`` dropped, as the training reader's fused samples).
Reference masks are read in their image's upright frame by the training reader's function
(``qground.palette.read_label_map``: one of another size but the same aspect ratio is resized nearest-neighbour) and
fused by its vote (``qground.palette.vote``).
The paper does not say which it used (as far as our sources show). The report also gives the background (the pixels
of no class) as a sixth class and the means over all six, for comparison with definitions that count it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from qground.baseline import baseline_masks
from qground.imageio import load_image, load_image_after_jpeg
from qground.inference import GenerationSettings, QGroundEngine
from qground.mcq import question_type
from qground.naming import parse_choice, question_options
from qground.palette import Palette, class_masks, read_label_map, vote
from qground.prompts import Turn
from qground.questions import QUESTIONS
from qground.taxonomy import CLASS_NAMES, MAX_PHRASE_WORDS, get, match_class, normalize

__all__ = [
    "ANNOTATOR_USES",
    "EMPTY_MASK_FRACTION",
    "IMAGE_EXTENSIONS",
    "TASKS",
    "GroundingMetrics",
    "TestImage",
    "TestReference",
    "answer_quality",
    "comparison_accuracy",
    "description_f1",
    "evaluate",
    "evaluate_qground_test",
    "grounding_table",
    "is_finished_sentence",
    "load_gt",
    "named_classes",
    "qground_test_table",
    "read_qground_test",
    "report_table",
    "side_by_side_table",
]

EMPTY_MASK_FRACTION = 0.001
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif")
TASKS = ("ground", "describe", "compare")
ANNOTATOR_USES = ("each", "majority")


# -- grounding metrics -------------------------------------------------------------------------------------------------
def _canonical(masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Masks keyed by canonical class name, as bool arrays."""
    return {get(name).name: np.asarray(mask, dtype=bool) for name, mask in masks.items()}


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


@dataclass
class GroundingMetrics:
    """Accumulates pixel counts over a set of images; see the module docstring for the definitions."""

    classes: tuple[str, ...] = CLASS_NAMES
    intersection: dict[str, int] = field(default_factory=dict)
    union: dict[str, int] = field(default_factory=dict)
    gt_pixels: dict[str, int] = field(default_factory=dict)
    clean_false_alarms: dict[str, int] = field(default_factory=dict)
    pair_ious: list[float] = field(default_factory=list)
    images: int = 0
    clean_images: int = 0
    clean_correct: int = 0

    def __post_init__(self) -> None:
        for counts in (self.intersection, self.union, self.gt_pixels, self.clean_false_alarms):
            for name in self.classes:
                counts.setdefault(name, 0)

    def add(self, pred: Mapping[str, np.ndarray], gt: Mapping[str, np.ndarray]) -> None:
        """One image: ``pred`` and ``gt`` map class names to bool (H, W) masks of the same image (absent = empty)."""
        pred, gt = _canonical(pred), _canonical(gt)
        shapes = {m.shape for m in (*pred.values(), *gt.values())}
        if len(shapes) > 1:
            raise ValueError(f"masks of one image must share a shape, got {sorted(shapes)}")
        for name in self.classes:
            p, g = pred.get(name), gt.get(name)
            if p is None and g is None:
                continue
            p = p if p is not None else np.zeros_like(g)
            g = g if g is not None else np.zeros_like(p)
            inter, union = int(np.count_nonzero(p & g)), int(np.count_nonzero(p | g))
            self.intersection[name] += inter
            self.union[name] += union
            self.gt_pixels[name] += int(np.count_nonzero(g))
            if union:
                self.pair_ious.append(inter / union)
        self.images += 1
        if not any(m.any() for m in gt.values()):
            found = [name for name in self.classes if name in pred and pred[name].mean() >= EMPTY_MASK_FRACTION]
            self.clean_images += 1
            self.clean_correct += not found
            for name in found:
                self.clean_false_alarms[name] += 1

    def summary(self) -> dict:
        """``{"images", "clean_images", "per_class": {name: {"iou", "acc", "gt_pixels", "clean_false_alarms"}},
        "mIoU", "mAcc", "gIoU", "cIoU", "clean_rate"}``; undefined values are None."""
        per_class = {
            name: {
                "iou": _ratio(self.intersection[name], self.union[name]),
                "acc": _ratio(self.intersection[name], self.gt_pixels[name]),
                "gt_pixels": self.gt_pixels[name],
                "clean_false_alarms": self.clean_false_alarms[name],
            }
            for name in self.classes
        }
        return {
            "images": self.images,
            "clean_images": self.clean_images,
            "per_class": per_class,
            "mIoU": _mean(c["iou"] for c in per_class.values()),
            "mAcc": _mean(c["acc"] for c in per_class.values()),
            "gIoU": _mean(self.pair_ious),
            "cIoU": _ratio(sum(self.intersection.values()), sum(self.union.values())),
            "clean_rate": _ratio(self.clean_correct, self.clean_images),
        }

    def table(self, name: str = "prediction") -> str:
        """The summary as a fixed-width text table with one column ``name``."""
        return grounding_table({name: self.summary()})


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def grounding_table(
    columns: Mapping[str, dict], seconds: Mapping[str, float | None] | None = None, unit: str = "images"
) -> str:
    """Fixed-width table of ``GroundingMetrics.summary()`` dicts side by side (one column per method), with an
    optional seconds-per-image row; ``unit`` names what the summaries counted (QGround-Test: references)."""
    names = list(columns)
    width = max(10, *(len(n) + 2 for n in names))
    first = next(iter(columns.values()))
    classes = list(first["per_class"])

    alarm_labels = {c: f"  false alarms {c}" for c in classes}
    label_width = max(22, *(len(label) + 1 for label in alarm_labels.values()))

    def row(label: str, values: Iterable[float | None | str]) -> str:
        return f"{label:<{label_width}}" + "".join(f"{v if isinstance(v, str) else _cell(v):>{width}}" for v in values)

    lines = [row(f"{first['images']} {unit} ({first['clean_images']} clean)", names)]
    for metric, label in (("iou", "IoU"), ("acc", "Acc")):
        lines += [row(f"  {label} {c}", (columns[n]["per_class"][c][metric] for n in names)) for c in classes]
    for key, label in (("mIoU", "mIoU"), ("mAcc", "mAcc"), ("gIoU", "gIoU"), ("cIoU", "cIoU")):
        lines.append(row(label, (columns[n][key] for n in names)))
    lines.append(row("clean-image rate", (columns[n]["clean_rate"] for n in names)))
    lines += [
        row(label, (str(columns[n]["per_class"][c]["clean_false_alarms"]) for n in names))
        for c, label in alarm_labels.items()
    ]
    if seconds is not None:
        lines.append(row("seconds / image", (seconds.get(n) for n in names)))
    return "\n".join(lines)


# -- descriptions ------------------------------------------------------------------------------------------------------
_NEGATORS = frozenset(
    "no not without never neither nor none non lack lacks lacking absence isnt arent wasnt werent doesnt dont didnt "
    "hasnt havent cannot cant hardly barely".split()
)
_LIST_WORDS = frozenset([",", "or", "nor", "and"])
_FILLER = _LIST_WORDS | frozenset(
    "any obvious obviously visible noticeable noticeably significant significantly apparent evident major serious "
    "severe strong heavy much signs sign trace traces hint hints of the a an other kind type form degree level amount "
    "issue issues problem problems distortion distortions artifact artifacts such as like including suffer suffers "
    "suffering from show shows showing exhibit exhibits have has having contain contains is are be been was were seem "
    "seems appear appears look looks affected by in with too very so that overly excessive excessively particularly "
    "clear clearly real perceptible discernible detectable distracting extreme large substantial considerable notable "
    "there it image photo picture".split()
)
_POSTFIX_NEGATION = (("free",), ("absent",), ("is", "not"), ("are", "not"), ("was", "not"), ("isnt",), ("arent",))
_CLAUSE_BREAK = re.compile(r"[.;:!?()\[\]\n]+|\b(?:but|however|although|though|while|whereas|yet|except)\b", re.I)


def _words(clause: str) -> list[str]:
    """Normalized words of a clause, commas kept as their own token."""
    out: list[str] = []
    for i, piece in enumerate(clause.split(",")):
        if i:
            out.append(",")
        out += normalize(piece).split()
    return out


def _mentions(words: list[str]) -> list[tuple[int, int, str]]:
    """(start, end, class) of every class mention in a clause's words (``taxonomy.match_class`` of spans of up to
    ``MAX_PHRASE_WORDS`` words without a comma), longest match first, left to right."""
    found, i = [], 0
    while i < len(words):
        hit = None
        for n in range(MAX_PHRASE_WORDS, 0, -1):
            span = words[i : i + n]
            if len(span) == n and "," not in span:
                name = match_class(" ".join(span))
                if name is not None:
                    hit = (n, name)
                    break
        if hit is None:
            i += 1
            continue
        found.append((i, i + hit[0], hit[1]))
        i += hit[0]
    return found


def _is_negator(words: list[str], i: int) -> bool:
    """A negating word at ``i`` ("not only" and an interjected "No," do not negate; "free of"/"free from" do)."""
    word, following = words[i], words[i + 1] if i + 1 < len(words) else None
    if word == "free":
        return following in ("of", "from")
    return word in _NEGATORS and following not in ("only", ",")


def _positive_classes(words: list[str]) -> set[str]:
    """Classes mentioned in one clause and not negated.

    A negator covers the following mentions while only filler words ("any obvious signs of") lead to the first one and
    only list words ("," "or" "nor" "and") join the next ones; "X free", "X is not" negate X."""
    starts = {start: (end, name) for start, end, name in _mentions(words)}
    positive: set[str] = set()
    negating, seen, i = False, False, 0
    while i < len(words):
        if i in starts:
            end, name = starts[i]
            after = tuple(words[end : end + 2])
            postfix = any(after[: len(p)] == p for p in _POSTFIX_NEGATION)
            if not (negating or postfix):
                positive.add(name)
            seen, i = True, end
            continue
        if _is_negator(words, i):
            negating, seen = True, False
        elif negating and words[i] not in (_LIST_WORDS if seen else _FILLER):
            negating = False
        i += 1
    return positive


def named_classes(text: str) -> set[str]:
    """Canonical names of the distortion classes ``text`` names, e.g. "Heavy motion blur, but no noise." →
    {"jitter"}.

    Spans of whole words are read by ``taxonomy.match_class`` (names, keys and aliases, inflections such as
    "blurriness" and "darker", one-edit typos such as "bluryy" and "over exposed"), longest span first ("motion blur"
    is jitter, not blur).
    Negated mentions ("no noise", "without blur or noise", "not blurry", "noise-free") do not count; negation stops at
    clause boundaries (. ; : ! ? and but/however/although/while/except)."""
    found: set[str] = set()
    for clause in _CLAUSE_BREAK.split(text):
        found |= _positive_classes(_words(clause))
    return found


_FINISHED = re.compile(r"^(?:[A-D]\. )?[A-Z][^.!?]*\w[^.!?]*[.!?](?: [A-Z][^.!?]*\w[^.!?]*[.!?])*$")


def is_finished_sentence(text: str) -> bool:
    """Whether ``text`` is one or more finished sentences: each starts with a capital, holds a word and ends with
    . ! or ? (an option letter "B. " may lead). "There is", "The." and "." are not."""
    text = text.strip()
    return bool(_FINISHED.match(text)) and len(text.split()) >= 2


def answer_quality(preds: Sequence[str], refs: Sequence[str]) -> dict:
    """Over aligned answers and references: ``well_formed`` (share of ``is_finished_sentence`` answers) and
    ``names_truth`` (share of answers that name exactly the classes the reference names, none for a clean image),
    with ``items``."""
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions for {len(refs)} references")
    formed = sum(is_finished_sentence(p) for p in preds)
    truth = sum(named_classes(p) == named_classes(r) for p, r in zip(preds, refs))
    return {"well_formed": _ratio(formed, len(preds)), "names_truth": _ratio(truth, len(preds)), "items": len(preds)}


def description_f1(preds: Sequence[str], refs: Sequence[str]) -> dict:
    """Micro precision/recall/F1 of the classes named by ``preds`` vs ``refs`` (texts, aligned) over (item, class)
    pairs: ``{"precision", "recall", "f1", "tp", "fp", "fn", "items"}``, None where a ratio is 0/0."""
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions for {len(refs)} references")
    tp = fp = fn = 0
    for pred, ref in zip(preds, refs):
        p, r = named_classes(pred), named_classes(ref)
        tp, fp, fn = tp + len(p & r), fp + len(p - r), fn + len(r - p)
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "items": len(preds),
    }


# -- comparisons -------------------------------------------------------------------------------------------------------
def comparison_accuracy(
    answers: Sequence[str], truths: Sequence[str], num_images: Sequence[int], questions: Sequence[str] | None = None
) -> dict:
    """Share of ``answers`` that pick the image ``truths`` pick (option letters read through each question's options):
    ``{"accuracy", "correct", "unparsed", "items", "by_images", "by_form"}``; ``by_images`` maps the group size ("2",
    "3", "4") and ``by_form`` "free-form" / "multiple choice" to ``{"accuracy", "items"}``. A truth that names no
    image raises ValueError."""
    questions = questions if questions is not None else [""] * len(answers)
    if not len(answers) == len(truths) == len(num_images) == len(questions):
        raise ValueError("answers, truths, num_images and questions must be aligned")
    correct = unparsed = 0
    groups: dict[str, dict[str, list[bool]]] = {"by_images": {}, "by_form": {}}
    for answer, truth, n, question in zip(answers, truths, num_images, questions):
        options = question_options(question, n)
        expected = parse_choice(truth, n, options)
        if expected is None:
            raise ValueError(f"the reference answer {truth!r} names none of the {n} images")
        picked = parse_choice(answer, n, options)
        unparsed += picked is None
        correct += picked == expected
        groups["by_images"].setdefault(str(n), []).append(picked == expected)
        groups["by_form"].setdefault("multiple choice" if options else "free-form", []).append(picked == expected)
    summary = {
        key: {name: {"accuracy": _ratio(sum(hits), len(hits)), "items": len(hits)} for name, hits in sorted(g.items())}
        for key, g in groups.items()
    }
    return {
        "accuracy": _ratio(correct, len(answers)),
        "correct": correct,
        "unparsed": unparsed,
        "items": len(answers),
        **summary,
    }


# -- the evaluation folder ---------------------------------------------------------------------------------------------
def load_gt(data_dir: Path, stem: str, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Canonical class name → bool (H, W) mask from ``gt/STEM/<class key>.png`` (non-zero = the class); ``size`` is
    the image's (H, W). A clean image (no folder or no files) gives {}."""
    masks = {}
    folder = data_dir / "gt" / stem
    for path in sorted(folder.glob("*.png")) if folder.is_dir() else []:
        try:
            name = get(path.stem).name
        except KeyError as e:
            raise ValueError(f"{path}: {e.args[0]}") from None
        with Image.open(path) as img:
            array = np.asarray(img)
        mask = array.any(axis=-1) if array.ndim == 3 else array != 0
        if mask.shape != size:
            raise ValueError(f"{path}: mask is {mask.shape[1]}×{mask.shape[0]}, its image {size[1]}×{size[0]}")
        masks[name] = mask
    return masks


def _image_paths(data_dir: Path) -> list[Path]:
    folder = data_dir / "images"
    if not folder.is_dir():
        raise FileNotFoundError(f"{data_dir} has no images/ folder")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def _conversations(path: Path) -> list[tuple[list[Path], str, str]]:
    """(image paths, question, reference answer) of each entry of a LLaVA-schema JSON file."""
    out = []
    for i, entry in enumerate(json.loads(path.read_text())):
        try:
            images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
            human, gpt = entry["conversations"][:2]
            if (human["from"], gpt["from"]) != ("human", "gpt"):
                raise ValueError("it does not start with a human turn then a gpt turn")
            question = re.sub(r"(?:The \w+ image:\s*)?<image>\s*", "", human["value"]).strip()
            out.append(([path.parent / p for p in images], question, gpt["value"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: entry {i} is not a LLaVA conversation ({e!r})") from None
    return out


def _run_grounding(
    engine: QGroundEngine,
    data_dir: Path,
    limit: int | None,
    progress: bool,
    settings: GenerationSettings,
    jpeg: int | None = None,
    baseline: bool = True,
) -> dict:
    """Model, classical baseline (unless ``baseline`` is False) and all-empty predictions over ``images/`` vs
    ``gt/``."""
    names = ("model", "baseline", "all-empty") if baseline else ("model", "all-empty")
    methods = {name: GroundingMetrics() for name in names}
    timed = [name for name in names if name != "all-empty"]
    seconds: dict[str, list[float]] = {name: [] for name in timed}
    meta = _meta(data_dir)
    families = {m["id"]: m["families"] for m in meta.get("images", []) if "families" in m}  # stem → class → family
    by_family: dict[str, dict[str, GroundingMetrics]] = {}
    per_image = []
    for path in tqdm(_image_paths(data_dir)[:limit], desc="ground", disable=not progress, dynamic_ncols=True):
        # a path lets a caching processor keep its work (a calibration's sweeps, without the baseline); with the
        # baseline, one decoded image serves both
        image = path if jpeg is None and not baseline else load_image_after_jpeg(path, jpeg)
        t0 = time.perf_counter()
        result = engine.ground(image, QUESTIONS["ground"], settings)
        t1 = time.perf_counter()
        gt = load_gt(data_dir, path.stem, result.image_size)
        classical = baseline_masks(image) if baseline else {}
        t2 = time.perf_counter()
        took = {"model": t1 - t0, "baseline": t2 - t1}
        for name in timed:
            seconds[name].append(took[name])
        predictions = {"model": result.masks, "baseline": classical, "all-empty": {}}
        for name, metrics in methods.items():
            pred = predictions[name]
            metrics.add(pred, gt)
            for cls, family in families.get(path.stem, {}).items():
                per_family = by_family.setdefault(family, {}).setdefault(name, GroundingMetrics(classes=(cls,)))
                per_family.add({k: m for k, m in pred.items() if match_class(k) == cls}, {cls: gt[cls]})
        record = {"image": path.name, "gt": sorted(gt)}
        record["model"] = {name: r.area_percent for name, r in result.regions.items()}
        if baseline:
            record["baseline"] = {k: 100.0 * float(m.mean()) for k, m in classical.items()}
        per_image.append(record | {"answer": result.text, "seconds": {name: took[name] for name in timed}})
    return {
        "methods": {name: m.summary() for name, m in methods.items()},
        "seconds_per_image": {name: _mean(times) for name, times in seconds.items()},
        "by_family": {
            family: {"images": m["model"].images} | {name: m[name].summary()["mIoU"] for name in timed}
            for family, m in sorted(by_family.items())
        },
        "held_out_families": meta.get("held_out_families", []),
        "per_image": per_image,
    }


def _meta(data_dir: Path) -> dict:
    """A synthetic folder's ``meta.json`` (per image the distortion family of each class, the held-out families), or
    {} without one."""
    path = data_dir / "meta.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _chat_answers(
    engine: QGroundEngine,
    path: Path,
    limit: int | None,
    progress: bool,
    settings: GenerationSettings,
    jpeg: int | None,
) -> tuple[list[tuple[list[Path], str, str]], list[str], list[float]]:
    """Each entry of the LLaVA-schema file ``path`` (up to ``limit``) asked of ``engine`` with its images (after one
    JPEG save at quality ``jpeg`` when given): the entries, the answers and the seconds each took."""
    items, answers, seconds = _conversations(path)[:limit], [], []
    for images, question, _ in tqdm(items, desc=path.stem, disable=not progress, dynamic_ncols=True):
        seen = images if jpeg is None else [load_image_after_jpeg(p, jpeg) for p in images]
        t0 = time.perf_counter()
        answers.append(engine.chat(seen, [Turn(question)], settings).text)
        seconds.append(time.perf_counter() - t0)
    return items, answers, seconds


def _score_describe(items: list[tuple[list[Path], str, str]], answers: list[str], seconds: list[float]) -> dict:
    """describe.json's entries and the answers (``_chat_answers``) → class F1 and answer quality."""
    refs = [reference for _, _, reference in items]
    quality = answer_quality(answers, refs)
    return (
        description_f1(answers, refs)
        | {"well_formed": quality["well_formed"], "names_truth": quality["names_truth"]}
        | {"seconds_per_item": _mean(seconds), "answers": answers}
    )


def _score_compare(
    items: list[tuple[list[Path], str, str]], answers: list[str], seconds: list[float], kinds: list[str | None]
) -> dict:
    """compare.json's entries, the answers (``_chat_answers``) and each entry's ``kind`` (what it compares, as the
    synthetic data records it; None when not recorded) → accuracy, by image count and question type, and
    ``by_kind`` when every entry records its kind."""
    truths = [truth for _, _, truth in items]
    counts = [len(images) for images, _, _ in items]
    questions = [question for _, question, _ in items]
    result = comparison_accuracy(answers, truths, counts, questions)

    def split(labels: list[str]) -> dict:
        out = {}
        for label in sorted(set(labels)):
            keep = [i for i, t in enumerate(labels) if t == label]
            part = comparison_accuracy(*([seq[i] for i in keep] for seq in (answers, truths, counts, questions)))
            out[label] = {"accuracy": part["accuracy"], "items": part["items"]}
        return out

    result |= {"by_type": split([question_type(q) for q in questions])}
    if items and None not in kinds:
        result |= {"by_kind": split(kinds)}
    return result | {"seconds_per_item": _mean(seconds), "answers": answers}


def evaluate(
    engine: QGroundEngine,
    data_dir: str | Path,
    tasks: Sequence[str] = TASKS,
    limit: int | None = None,
    progress: bool = True,
    settings: GenerationSettings | None = None,
    jpeg: int | None = None,
    baseline: bool = True,
) -> dict:
    """Run ``engine`` over an evaluation folder (module docstring); JSON-ready report.

    ``ground``: the grounding question on every image, scored with `GroundingMetrics` next to the classical baseline
    (`qground.baseline`) and the all-empty prediction; ``describe``/``compare``: each entry's question (with its
    images) from describe.json / compare.json. ``limit`` caps the items of each task. A task whose JSON file is
    missing is listed under ``"skipped"`` with the reason. ``settings``: the engine's generation settings (default:
    greedy, strictness 0), recorded in the report. ``jpeg``: every image goes through one JPEG save at this quality
    (4:2:0) before the model and the baseline see it, as a camera's or the web's photos have (recorded too).
    ``baseline``: False leaves the classical baseline out of ``ground`` (a calibration's sweeps read only the model's
    numbers)."""
    data_dir = Path(data_dir)
    settings = settings or GenerationSettings()
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)}; choose from {list(TASKS)}")
    if jpeg is not None and not 1 <= jpeg <= 95:
        raise ValueError(f"JPEG quality must be 1–95, got {jpeg}")
    report: dict = {"model": engine.name, "data": str(data_dir), "strictness": settings.strictness, "skipped": {}}
    if jpeg is not None:
        report["jpeg"] = jpeg
    if "ground" in tasks:
        report["ground"] = _run_grounding(engine, data_dir, limit, progress, settings, jpeg, baseline)
    for task in ("describe", "compare"):
        if task not in tasks:
            continue
        path = data_dir / f"{task}.json"
        if not path.exists():
            report["skipped"][task] = f"no {path.name} in {data_dir}"
        elif task == "describe":
            report[task] = _score_describe(*_chat_answers(engine, path, limit, progress, settings, jpeg))
        else:
            kinds = [entry.get("kind") for entry in json.loads(path.read_text())][:limit]
            report[task] = _score_compare(*_chat_answers(engine, path, limit, progress, settings, jpeg), kinds)
    return report


# -- QGround-Test ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TestReference:
    """One annotator's reference for a test image: ``annotator`` (from the mask's file name
    ``<stem>_<annotator>_<stem>.jpg``, else ``"#k"`` by position), the color ``mask`` file and the annotator's
    ``description``."""

    annotator: str
    mask: Path
    description: str


@dataclass(frozen=True)
class TestImage:
    """A QGround-Test image: its ``id`` (the first record's), ``image`` file and its annotators' ``references``."""

    id: str
    image: Path
    references: tuple[TestReference, ...]


def read_qground_test(
    json_path: str | Path, images: str | Path | None = None, masks: str | Path | None = None
) -> list[TestImage]:
    """The test split's images in file order, records of one image merged (a mask listed twice counts once).

    ``json_path``: ``qground_test.json``, a list of ``{"id", "image", "ann_list": [{"quality_description",
    "segmentation_mask"}, ...]}``; ``image`` is relative to ``images`` and ``segmentation_mask`` to ``masks`` (defaults:
    ``images/`` and ``masks/`` beside the JSON file). Files are not opened. ValueError (one line naming the file, the
    record and the field) for any other layout or an image without a mask."""
    json_path = Path(json_path)
    images = json_path.parent / "images" if images is None else Path(images)
    masks = json_path.parent / "masks" if masks is None else Path(masks)
    try:
        records = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{json_path}: not valid JSON ({e})") from None
    if not isinstance(records, list) or not records:
        raise ValueError(f"{json_path}: expected a non-empty list of records, got {type(records).__name__}")
    merged: dict[str, tuple[str, list[TestReference]]] = {}
    for index, record in enumerate(records):
        record_id, image, references = _test_record(json_path, index, record, masks)
        _, listed = merged.setdefault(image, (record_id, []))
        for ref in references:
            if all(ref.mask != other.mask for other in listed):
                listed.append(_unique_annotator(ref, {other.annotator for other in listed}))
    return [TestImage(rid, images / image, tuple(refs)) for image, (rid, refs) in merged.items()]


def _test_record(json_path: Path, index: int, record: Any, masks: Path) -> tuple[str, str, list[TestReference]]:
    """(id, image path relative to the image folder, references) of record ``index``; ValueError naming the field."""
    where = f"{json_path}: record {index}"
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected an object, got {type(record).__name__}")
    record_id, image, anns = record.get("id"), record.get("image"), record.get("ann_list")
    where += f" (id {record_id!r})"
    if not isinstance(image, str) or not image:
        raise ValueError(f"{where}: field 'image' must be a path, got {image!r:.80}")
    if not isinstance(anns, list) or not anns:
        raise ValueError(f"{where}: field 'ann_list' must be a non-empty list, got {anns!r:.80}")
    references = []
    for k, ann in enumerate(anns):
        mask = ann.get("segmentation_mask") if isinstance(ann, dict) else None
        text = ann.get("quality_description", "") if isinstance(ann, dict) else None
        if not isinstance(mask, str) or not mask or not isinstance(text, str):
            raise ValueError(
                f"{where}: field 'ann_list[{k}]' must be {{'quality_description': str, 'segmentation_mask': path}}, "
                f"got {ann!r:.80}"
            )
        references.append(TestReference(annotator_name(mask, image, k), masks / mask, text))
    return str(record_id), image, references


def _unique_annotator(ref: TestReference, taken: set[str]) -> TestReference:
    """``ref``, its annotator renamed ``name-2``, ``name-3``… when an earlier reference of the image has the name."""
    name, k = ref.annotator, 1
    while name in taken:
        k += 1
        name = f"{ref.annotator}-{k}"
    return dataclasses.replace(ref, annotator=name)


def annotator_name(mask: str, image: str, position: int) -> str:
    """The annotator a released mask file names: ``spaq_koniq/07454_zhizheng_07454.jpg`` for image
    ``spaq_koniq/07454.jpg`` → ``"zhizheng"``; ``"#<position + 1>"`` for a name of another shape."""
    stem, name = Path(image).stem, Path(mask).stem
    middle = name[len(stem) + 1 : -(len(stem) + 1)]
    if name.startswith(f"{stem}_") and name.endswith(f"_{stem}") and middle:
        return middle
    return f"#{position + 1}"


def reference_labels(ref: TestReference, palette: Palette, size: tuple[int, int]) -> np.ndarray:
    """One annotator's color mask → (H, W) uint8 labels (0 background, k ``palette.names[k - 1]``) in the frame of its
    image of (H, W) ``size``, read as the training reader reads masks (``qground.palette.read_label_map``): a mask of
    another size but the image's aspect ratio is resized nearest-neighbour; another aspect ratio, a missing or
    unreadable file, or a palette that does not fit is a ValueError naming the file."""
    try:
        return read_label_map(ref.mask, palette, size)
    except FileNotFoundError:
        raise ValueError(f"{ref.mask}: no such mask file") from None


@dataclass
class BackgroundTally:
    """The background (pixels in no class) as a class: I, U and ground-truth pixel counts over the set."""

    intersection: int = 0
    union: int = 0
    gt_pixels: int = 0

    def add(self, pred: Mapping[str, np.ndarray], gt: Mapping[str, np.ndarray], size: tuple[int, int]) -> None:
        """One (prediction, reference) pair of an image of (H, W) ``size``."""
        p, g = ~_any_class(pred, size), ~_any_class(gt, size)
        self.intersection += int(np.count_nonzero(p & g))
        self.union += int(np.count_nonzero(p | g))
        self.gt_pixels += int(np.count_nonzero(g))

    def summary(self) -> dict[str, float | None]:
        return {"iou": _ratio(self.intersection, self.union), "acc": _ratio(self.intersection, self.gt_pixels)}


def _any_class(masks: Mapping[str, np.ndarray], size: tuple[int, int]) -> np.ndarray:
    out = np.zeros(size, dtype=bool)
    for mask in masks.values():
        out |= np.asarray(mask, dtype=bool)
    return out


def evaluate_qground_test(
    engine: QGroundEngine,
    items: Sequence[TestImage],
    palette: Palette,
    annotators: str = "each",
    limit: int | None = None,
    progress: bool = True,
    settings: GenerationSettings | None = None,
    data: str = "",
) -> dict:
    """Ground the first ``limit`` of ``items`` (``read_qground_test``) with ``engine`` and score the masks against the
    annotators' (module docstring; ``annotators`` one of ``ANNOTATOR_USES``). JSON-ready report: ``{"model", "data",
    "strictness", "annotators", "palette", "images", "references", "metrics"`` (``GroundingMetrics.summary()``),
    ``"background"`` ({"iou", "acc"}), ``"mIoU_with_background"``, ``"mAcc_with_background"``,
    ``"seconds_per_image"``, ``"per_image"}``."""
    if annotators not in ANNOTATOR_USES:
        raise ValueError(f"annotators must be one of {ANNOTATOR_USES}, got {annotators!r}")
    settings = settings or GenerationSettings()
    metrics, background = GroundingMetrics(), BackgroundTally()
    per_image, seconds, references = [], [], 0
    for item in tqdm(items[:limit], desc="QGround-Test", disable=not progress, dynamic_ncols=True):
        image = load_image(item.image)
        size = (image.height, image.width)
        labels = [reference_labels(ref, palette, size) for ref in item.references]
        refs = {ref.annotator: class_masks(lab, palette) for ref, lab in zip(item.references, labels)}
        t0 = time.perf_counter()
        result = engine.ground(image, QUESTIONS["ground"], settings)
        seconds.append(time.perf_counter() - t0)
        each = list(refs.values())
        scored = each if annotators == "each" else [class_masks(vote(labels, palette), palette)]
        for gt in scored:
            metrics.add(result.masks, gt)
            background.add(result.masks, gt, size)
        references += len(scored)
        per_image.append(_test_image_entry(item, refs, result, seconds[-1]))
    summary = metrics.summary()
    bg = background.summary()
    return {
        "model": engine.name,
        "data": data,
        "strictness": settings.strictness,
        "annotators": annotators,
        "palette": palette.source,
        "images": len(per_image),
        "references": references,
        "metrics": summary,
        "background": bg,
        "mIoU_with_background": _mean([*(c["iou"] for c in summary["per_class"].values()), bg["iou"]]),
        "mAcc_with_background": _mean([*(c["acc"] for c in summary["per_class"].values()), bg["acc"]]),
        "seconds_per_image": _mean(seconds),
        "per_image": per_image,
    }


def _test_image_entry(item: TestImage, refs: Mapping[str, Mapping[str, np.ndarray]], result, seconds: float) -> dict:
    """One image's line of the report: the classes each annotator marked and the model's areas (percent)."""
    return {
        "id": item.id,
        "image": item.image.name,
        "annotators": {name: [c for c, m in masks.items() if m.any()] for name, masks in refs.items()},
        "model": {name: r.area_percent for name, r in result.regions.items()},
        "answer": result.text,
        "seconds": seconds,
    }


def qground_test_table(report: dict) -> str:
    """The ``evaluate_qground_test`` report as text: a header line, the grounding table (IoU and Acc per class, mIoU,
    mAcc, …) and the background line."""
    head = (
        f"model {report['model']} on {report['data']} (QGround-Test), {report['images']} images, "
        f"{report['references']} references ({report['annotators']} annotator), strictness "
        + ("the model's default" if report["strictness"] is None else f"{report['strictness']:g}")
    )
    bg = report["background"]
    tail = (
        f"background IoU {_cell(bg['iou'])}, Acc {_cell(bg['acc'])}; with it as a sixth class: "
        f"mIoU {_cell(report['mIoU_with_background'])}, mAcc {_cell(report['mAcc_with_background'])}"
    )
    seconds = {"model": report["seconds_per_image"]}
    table = grounding_table({"model": report["metrics"]}, seconds, unit="references")
    return "\n".join([head, "", table, "", tail])


def side_by_side_table(reports: Mapping[str, dict]) -> str:
    """The headline numbers of several ``evaluate`` reports on the same folder, one column per model plus the classical
    baseline (from the first report): IoU per class and per distortion family (held-out families marked *), mIoU, the
    share of clean photos given a mask, finished sentences and answers naming exactly the true classes (description
    questions), description F1 and comparison accuracy (all groups; pairs; by kind when the data records it)."""
    first = next(iter(reports.values()))
    names = list(reports)
    ground = {n: r["ground"] for n, r in reports.items() if "ground" in r}
    columns = names + (["classical baseline"] if "ground" in first else [])
    width = max(12, *(len(n) + 2 for n in columns))

    def row(label: str, values: Iterable[float | None]) -> str:
        return f"{label:<48}" + "".join(f"{_cell(v):>{width}}" for v in values)

    def grounding(pick) -> list[float | None]:
        return [pick(ground[n]["methods"]["model"]) if n in ground else None for n in names] + (
            [pick(first["ground"]["methods"]["baseline"])] if "ground" in first else []
        )

    lines = [f"{'':<48}" + "".join(f"{n:>{width}}" for n in columns)]
    if "ground" in first:
        lines += [row(f"IoU {c}", grounding(lambda m, c=c: m["per_class"][c]["iou"])) for c in CLASS_NAMES]
        lines.append(row("mIoU", grounding(lambda m: m["mIoU"])))
        lines.append(row("clean photos given a mask", grounding(lambda m: _complement(m["clean_rate"]))))
        held = set(first["ground"].get("held_out_families", []))
        for family in first["ground"].get("by_family", {}):
            values = [ground[n].get("by_family", {}).get(family, {}).get("model") for n in names]
            label = f"IoU {family}{' *' if family in held else ''} ({first['ground']['by_family'][family]['images']})"
            lines.append(row(label, [*values, first["ground"]["by_family"][family]["baseline"]]))
    if "describe" in first:
        for key, label in (("well_formed", "finished sentences"), ("names_truth", "answers naming the true classes")):
            lines.append(row(label, [r.get("describe", {}).get(key) for r in reports.values()]))
        lines.append(row("description class F1", [r.get("describe", {}).get("f1") for r in reports.values()]))
    if "compare" in first:
        lines.append(row("comparison accuracy", [r.get("compare", {}).get("accuracy") for r in reports.values()]))
        pairs = [r.get("compare", {}).get("by_images", {}).get("2", {}).get("accuracy") for r in reports.values()]
        lines.append(row("… of pairs", pairs))
        for kind, part in first["compare"].get("by_kind", {}).items():
            values = [r.get("compare", {}).get("by_kind", {}).get(kind, {}).get("accuracy") for r in reports.values()]
            lines.append(row(f"… {kind} ({part['items']})", values))
    return "\n".join(lines)


def _complement(value: float | None) -> float | None:
    return None if value is None else 1.0 - value


def report_table(report: dict) -> str:
    """The ``evaluate`` report as text: the grounding table (model vs classical baseline vs all-empty), description
    F1 and comparison accuracy."""
    lines = [f"model {report['model']} on {report['data']}, strictness {report['strictness']:g}"]
    if "ground" in report:
        g = report["ground"]
        lines += ["", grounding_table(g["methods"], g["seconds_per_image"])]
        if g.get("by_family"):
            held = set(g.get("held_out_families", []))
            lines += [
                "",
                f"{'IoU by distortion family (* held out of training)':<52}{'images':>8}{'model':>8}{'baseline':>10}",
            ]
            lines += [
                f"  {family + (' *' if family in held else ''):<50}{f['images']:>8}{_cell(f['model']):>8}"
                f"{_cell(f['baseline']):>10}"
                for family, f in g["by_family"].items()
            ]
    if "describe" in report:
        d = report["describe"]
        lines += [
            "",
            f"description F1 {_cell(d['f1'])} (precision {_cell(d['precision'])}, recall {_cell(d['recall'])}) "
            f"over {d['items']} descriptions",
            f"finished sentences {_cell(d['well_formed'])}, answers naming exactly the true classes "
            f"{_cell(d['names_truth'])}",
        ]
    if "compare" in report:
        c = report["compare"]
        lines += [
            "",
            f"comparison accuracy {_cell(c['accuracy'])} ({c['correct']}/{c['items']} correct, "
            f"{c['unparsed']} unparsed answers)",
            "  "
            + ", ".join(
                f"{name}{' images' * (key == 'by_images')} {_cell(part['accuracy'])} ({part['items']})"
                for key in ("by_images", "by_type", "by_form", "by_kind")
                for name, part in c.get(key, {}).items()
            ),
        ]
    lines += [f"skipped {task}: {why}" for task, why in report["skipped"].items()]
    return "\n".join(lines)
