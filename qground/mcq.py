"""Multiple-choice comparison benchmarks (MICBench, Q-Bench-pair A1): read a benchmark file, ask the model each
question with its options, read the option its answer picks, score.

File layouts, detected per file from its first record (a JSON list of records, or JSON lines):

- ``qbench`` — the Q-Bench family's records, as LLVisionQA (``llvisionqa_dev.json``), Q-Bench2's pair split
  (``q-bench2-a1-dev.jsonl``) and MICBench (``micbench_dev.json``) are read by their published evaluation code::

      {"id": "…" (optional), "img_path": "a.jpg" | ["a.jpg", "b.jpg", …], "question": "Which image …?",
       "candidates": ["The first image", …], "correct_ans": "The first image",
       "type": "Yes-or-No" (optional), "concern": "Distortion" (optional)}

  ``images`` may stand for ``img_path``, ``correct_choice`` (the option's letter) for ``correct_ans``. A Q-Bench2
  ``img_path`` naming a side-by-side pair, ``llvisionqa_compare_dev\\00079.jpg_cat_09769.jpg.jpg``, is read as its two
  single images ``00079.jpg`` and ``09769.jpg`` in the image folder's ``all_single_images/`` (where the release keeps
  them), or in the image folder itself when it has no such subfolder.
- ``qbench-hf`` — rows of the ``q-future/Q-Bench2-HF`` dataset with their images saved as files::

      {"id": 0, "image1": "a.jpg", "image2": "b.jpg", "question": "…", "option0": "…", "option1": "…",
       "option2": "…", "option3": "N/A", "question_type": 0, "question_concern": 1, "correct_choice": "B"}

  Unused options are "N/A".

Image paths are relative to the image folder (default: the file's folder); backslashes are read as ``/``. Question
types: a type name is kept, lower case with words joined by "-" ("Yes/No" → "yes-or-no", "Others" → "other"); a
number 0, 1, 2 is yes-or-no, how, what (Q-Bench2-HF's ``question_type`` as lmms-eval's ``qbench`` task reads it);
without a type field, ``question_type`` reads it from the question (MICBench's kinds: which / yes-or-no / other).
Concerns are kept as written, numbers as their digits (published readers name Q-Bench2-HF's codes differently).
A record the layout cannot read is a one-line ``MCQFormatError`` naming the file, the record and the field.

Asking: ``mcq_prompt`` lists the options under the question as "A. …" lines and asks for the letter (Q-Bench's
instruction, also the one of the synthetic comparison questions the models are trained on); the images go to
``engine.chat`` in the file's order, so a several-image prompt gets the "The first image: …" headers. For options
that name images ("The second image") the engine itself starts its answer with the letter of the option it points at
(``QGroundEngine.display_text``), which ``extract_choice`` reads like any other letter.

Scoring (``mcq_accuracy``): an answer is correct when ``extract_choice`` reads the true option from it; an answer it
reads no option from is wrong and also counted as unanswerable. Accuracy overall, per question type, per number of
images and per concern.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from qground.inference import GenerationSettings, QGroundEngine
from qground.naming import named_images, parse_choice
from qground.prompts import Turn

__all__ = [
    "INSTRUCTION",
    "LAYOUTS",
    "MCQFile",
    "MCQFormatError",
    "MCQItem",
    "evaluate_mcq",
    "extract_choice",
    "mcq_accuracy",
    "mcq_prompt",
    "mcq_table",
    "question_type",
    "read_mcq",
]

INSTRUCTION = "Answer with the option's letter from the given choices directly."
LETTERS = "ABCDEFGH"  # at most 8 options, as the engine reads option lines (qground.naming)
MAX_IMAGES = 8  # at most 8 images per prompt (qground.prompts.image_header)
QBENCH_TYPES = ("yes-or-no", "how", "what")  # Q-Bench2-HF question_type codes, as lmms-eval's qbench task reads them
SINGLE_IMAGES = "all_single_images"  # Q-Bench2's folder of the single images its side-by-side pairs are made of
LAYOUTS = ("qbench", "qbench-hf")


class MCQFormatError(ValueError):
    """A benchmark file this module cannot read; the message is one line naming the file, record and field."""


@dataclass(frozen=True)
class MCQItem:
    """One question: ``images`` in the order they are shown, ``options`` in the order they are listed (A, B, …),
    ``answer_index`` the true option's index, ``qtype`` its question type, ``concern`` what it is about (or None)."""

    id: str
    images: list[Path]
    question: str
    options: list[str]
    answer_index: int
    qtype: str
    concern: str | None = None


@dataclass(frozen=True)
class MCQFile:
    """A benchmark file read: its path, layout (one of ``LAYOUTS``) and questions."""

    path: Path
    layout: str
    items: list[MCQItem]


# -- reading -----------------------------------------------------------------------------------------------------------
def _words(text: str) -> str:
    """Lower-case words of ``text`` joined by single spaces (punctuation dropped)."""
    return " ".join(re.findall(r"\w+", text.lower()))


def question_type(question: str, options: Sequence[str] = ()) -> str:
    """MICBench's question kinds: "yes-or-no" when the options are yes and no, "which" when the question asks which
    (image, one…), else "other"."""
    if sorted(_words(o) for o in options) == ["no", "yes"]:
        return "yes-or-no"
    return "which" if re.search(r"\bwhich\b", question, re.I) else "other"


def _records(path: Path) -> list:
    """The records of a JSON list (a single object: one record) or of JSON lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MCQFormatError(f"{path}: not UTF-8 text, so neither JSON nor JSON lines") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise MCQFormatError(f"{path}: line {n} is not JSON ({e.msg}), nor is the whole file") from None
        return records
    return data if isinstance(data, list) else [data]


def _where(path: Path, index: int, record: Mapping) -> str:
    return f"{path}: record {index}" + (f" (id {record['id']!r})" if "id" in record else "")


def _text(where: str, record: Mapping, name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        raise MCQFormatError(f"{where}: field {name!r} must be a non-empty text, got {value!r}")
    return value.strip()


def _letter_index(where: str, name: str, value: object, count: int) -> int:
    letter = value.strip().upper() if isinstance(value, str) else None
    if letter is None or len(letter) != 1 or letter not in LETTERS[:count]:
        raise MCQFormatError(
            f"{where}: field {name!r} must be one of the letters {LETTERS[:count]} of its {count} options, got "
            f"{value!r} (a split without answers cannot be scored)"
        )
    return LETTERS.index(letter)


def _options(where: str, name: str, value: object) -> list[str]:
    if (
        not isinstance(value, list)
        or not 2 <= len(value) <= len(LETTERS)
        or not all(isinstance(o, str) and o.strip() for o in value)
    ):
        raise MCQFormatError(f"{where}: field {name!r} must hold 2 to {len(LETTERS)} option texts, got {value!r}")
    return [o.strip() for o in value]


def _image_paths(root: Path, name: str) -> list[Path]:
    """The image file(s) ``name`` stands for: a Q-Bench2 side-by-side pair "…\\A_cat_B.jpg" is its two single images
    A and B (in ``root/all_single_images`` when that folder exists), anything else ``root/name``."""
    name = name.replace("\\", "/")
    base = name.rsplit("/", 1)[-1]
    if "_cat_" in base:
        folder = root / SINGLE_IMAGES if (root / SINGLE_IMAGES).is_dir() else root
        return [folder / part for part in Path(base).stem.split("_cat_")]
    return [root / name]


def _images(where: str, root: Path, name: str, value: object) -> list[Path]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise MCQFormatError(f"{where}: field {name!r} must be an image path or a list of them, got {value!r}")
    images = [p for n in names for p in _image_paths(root, n.strip())]
    if len(images) > MAX_IMAGES:
        raise MCQFormatError(f"{where}: field {name!r} names {len(images)} images; at most {MAX_IMAGES} fit a prompt")
    return images


def _qtype(where: str, name: str, value: object, question: str, options: list[str]) -> str:
    if value is None:
        return question_type(question, options)
    if isinstance(value, str) and _words(value):
        key = "-".join(_words(value).replace("_", " ").split())
        return {"yes-no": "yes-or-no", "yesno": "yes-or-no", "others": "other"}.get(key, key)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(QBENCH_TYPES):
        return QBENCH_TYPES[value]
    raise MCQFormatError(f"{where}: field {name!r} must be a question type name or 0–2, got {value!r}")


def _concern(where: str, name: str, value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise MCQFormatError(f"{where}: field {name!r} must be a concern name or number, got {value!r}")


def _read_qbench(where: str, index: int, record: Mapping, root: Path) -> MCQItem:
    question = _text(where, record, "question")
    options = _options(where, "candidates", record["candidates"])
    if "correct_ans" in record:
        truth = record["correct_ans"]
        matches = [k for k, option in enumerate(options) if isinstance(truth, str) and option == truth.strip()]
        if not matches:
            raise MCQFormatError(f"{where}: field 'correct_ans' {truth!r} is none of the candidates {options!r}")
        answer = matches[0]
    elif "correct_choice" in record:
        answer = _letter_index(where, "correct_choice", record["correct_choice"], len(options))
    else:
        raise MCQFormatError(
            f"{where}: no field 'correct_ans' or 'correct_choice' (a split without answers cannot be scored)"
        )
    key = "img_path" if "img_path" in record else "images"
    if key not in record:
        raise MCQFormatError(f"{where}: no field 'img_path' or 'images'")
    return MCQItem(
        id=str(record.get("id", index)),
        images=_images(where, root, key, record[key]),
        question=question,
        options=options,
        answer_index=answer,
        qtype=_qtype(where, "type", record.get("type"), question, options),
        concern=_concern(where, "concern", record.get("concern")),
    )


def _read_qbench_hf(where: str, index: int, record: Mapping, root: Path) -> MCQItem:
    question = _text(where, record, "question")
    values = [record[f"option{k}"] for k in range(len(LETTERS)) if f"option{k}" in record]
    options = _options(where, "option0…", [v for v in values if v != "N/A"])
    images = [_text(where, record, f"image{k}") for k in range(1, MAX_IMAGES + 1) if f"image{k}" in record]
    if not images:
        raise MCQFormatError(f"{where}: no field 'image1' (the rows' images must be saved as files)")
    return MCQItem(
        id=str(record.get("id", index)),
        images=[p for name in images for p in _image_paths(root, name)],
        question=question,
        options=options,
        answer_index=_letter_index(where, "correct_choice", record.get("correct_choice"), len(options)),
        qtype=_qtype(where, "question_type", record.get("question_type"), question, options),
        concern=_concern(where, "question_concern", record.get("question_concern")),
    )


def read_mcq(path: str | Path, images: str | Path | None = None) -> MCQFile:
    """Read a benchmark file (module docstring); ``images``: the folder its image paths are relative to (default: the
    file's folder). Raises ``MCQFormatError`` (one line) on a layout or record it cannot read, OSError when the file
    cannot be read."""
    path = Path(path)
    root = Path(images) if images is not None else path.parent
    records = _records(path)
    if not records:
        raise MCQFormatError(f"{path}: no records")
    first = records[0]
    if isinstance(first, Mapping) and "candidates" in first:
        layout, reader = "qbench", _read_qbench
    elif isinstance(first, Mapping) and "option0" in first:
        layout, reader = "qbench-hf", _read_qbench_hf
    else:
        found = f"fields {sorted(first)}" if isinstance(first, Mapping) else f"a JSON {type(first).__name__}"
        raise MCQFormatError(
            f"{path}: record 0 is in no known layout ({found}): expected a field 'candidates' (Q-Bench, Q-Bench2 "
            "pairs, MICBench) or 'option0' (Q-Bench2-HF rows)"
        )
    items = []
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise MCQFormatError(f"{path}: record {index} is not a JSON object")
        required = "candidates" if layout == "qbench" else "option0"
        where = _where(path, index, record)
        if required not in record:
            raise MCQFormatError(f"{where}: no field {required!r} (the file's {layout} layout)")
        items.append(reader(where, index, record, root))
    return MCQFile(path, layout, items)


# -- asking and reading the answer -------------------------------------------------------------------------------------
def mcq_prompt(question: str, options: Sequence[str]) -> str:
    """The question, its options as "A. …" lines and ``INSTRUCTION``, one per line."""
    return "\n".join([question, *(f"{LETTERS[k]}. {option}" for k, option in enumerate(options)), INSTRUCTION])


_LETTER_PATTERNS = (
    re.compile(r"^\s*[(\[]?([A-H])(?:[.):\],]|\s*$)"),  # "B", "B.", "(B)", "B) The second image"
    re.compile(r"^\s*[(\[]?([a-h])[.)\]]?\s*$"),  # the whole answer "b"
    re.compile(r"\b(?i:answer(?:\s+is)?|option|choice)\s*[:#]?\s*[(\[]?([A-H])(?![\w'])"),  # "Answer: B", "Option B"
    re.compile(r"\(([A-H])\)"),  # "(B)" anywhere
)
_REFUSAL = re.compile(
    r"\b(?:can ?not|can't|unable to|impossible to|not possible to)\s+(?:\w+\s+)?(?:determine|tell|say|answer|decide|"
    r"judge|know|compare|identify)\b|\b(?:sorry|not sure|(?:don't|do not) know)\b",
    re.I,
)


def extract_choice(text: str, options: Sequence[str]) -> int | None:
    """The index of the option an answer picks, or None when it picks none or more than one.

    Read in order, the first rule that finds something deciding:
    1. option letters: "B", "B.", "(B)", "B) …", "Answer: B", "The answer is (B)", "Option B" (letters beyond the
       options ignored; two different letters: None);
    2. refusals ("I cannot tell", "Sorry", "not sure"): None;
    3. with options yes and no, an answer starting with "Yes" or "No";
    4. the options it names: an option's text (case and punctuation aside, whole words, a longer option's match
       hiding the shorter ones inside it) and the image an ordinal names ("The second image.", "the first one",
       "image 2") read as the option naming that image (options such as "The first image", "first"); exactly one
       option named: it, else None."""
    letters = {m.group(1).upper() for p in _LETTER_PATTERNS for m in p.finditer(text)}
    picked = {LETTERS.index(x) for x in letters if LETTERS.index(x) < len(options)}
    if picked:
        return picked.pop() if len(picked) == 1 else None
    if not text.strip() or _REFUSAL.search(text):
        return None
    said = _words(text)
    plain = [_words(o) for o in options]
    if "yes" in plain and "no" in plain and said.split()[:1] in (["yes"], ["no"]):
        return plain.index(said.split()[0])
    found: set[int] = set()
    claimed: list[tuple[int, int]] = []
    for k in sorted(range(len(options)), key=lambda k: -len(plain[k])):
        for m in re.finditer(rf"(?<!\S){re.escape(plain[k])}(?!\S)", said) if plain[k] else ():
            if not any(a <= m.start() and m.end() <= b for a, b in claimed):
                found.add(k)
                claimed.append(m.span())
    option_images = [parse_choice(o, MAX_IMAGES) for o in options]
    shown = [i for i in option_images if i is not None]
    for image, _ in named_images(text, max(shown) + 1) if shown else ():
        found |= {k for k, i in enumerate(option_images) if i == image}
    return found.pop() if len(found) == 1 else None


# -- scoring -----------------------------------------------------------------------------------------------------------
def _score(hits: list[tuple[bool, bool]]) -> dict:
    """``{"accuracy", "correct", "items", "unanswerable"}`` of (correct, unanswerable) pairs."""
    correct = sum(c for c, _ in hits)
    return {
        "accuracy": correct / len(hits) if hits else None,
        "correct": correct,
        "items": len(hits),
        "unanswerable": sum(u for _, u in hits),
    }


def mcq_accuracy(items: Sequence[MCQItem], picks: Sequence[int | None]) -> dict:
    """Scores of the options picked (``extract_choice``; None: unanswerable, counted wrong) against the items' truths:
    ``{"accuracy", "correct", "items", "unanswerable", "by_type", "by_images", "by_concern"}``, each ``by_…`` mapping
    a question type / number of images ("2", "3", …) / concern (items with one) to the same four fields."""
    if len(items) != len(picks):
        raise ValueError(f"{len(picks)} answers for {len(items)} questions")
    hits = [(p == item.answer_index, p is None) for item, p in zip(items, picks)]
    groups: dict[str, dict[str, list[tuple[bool, bool]]]] = {"by_type": {}, "by_images": {}, "by_concern": {}}
    for item, hit in zip(items, hits):
        groups["by_type"].setdefault(item.qtype, []).append(hit)
        groups["by_images"].setdefault(str(len(item.images)), []).append(hit)
        if item.concern is not None:
            groups["by_concern"].setdefault(item.concern, []).append(hit)
    by = {key: {name: _score(part) for name, part in sorted(g.items(), key=_group_order)} for key, g in groups.items()}
    return _score(hits) | by


def _group_order(entry: tuple[str, list]) -> tuple[int, str]:
    """Numbers ("2", "10") in numeric order, names alphabetically."""
    name = entry[0]
    return (int(name), "") if name.isdigit() else (1 << 30, name)


def evaluate_mcq(
    engine: QGroundEngine,
    bench: MCQFile,
    limit: int | None = None,
    settings: GenerationSettings | None = None,
    progress: bool = True,
) -> dict:
    """Ask ``engine`` the first ``limit`` questions of ``bench`` (all by default) with ``mcq_prompt`` and score the
    answers: ``{"model", "data", "layout", "strictness"}`` + ``mcq_accuracy`` + ``{"seconds_per_item", "answers"}``,
    ``answers`` one ``{"id", "answer", "picked", "truth", "correct"}`` per question (letters; picked None when the
    answer picks no option)."""
    settings = settings or GenerationSettings()
    items = bench.items[:limit]
    picks, answers, seconds = [], [], []
    for item in tqdm(items, desc="mcq", disable=not progress, dynamic_ncols=True):
        t0 = time.perf_counter()
        text = engine.chat(item.images, [Turn(mcq_prompt(item.question, item.options))], settings).text
        seconds.append(time.perf_counter() - t0)
        pick = extract_choice(text, item.options)
        picks.append(pick)
        answers.append(
            {
                "id": item.id,
                "answer": text,
                "picked": None if pick is None else LETTERS[pick],
                "truth": LETTERS[item.answer_index],
                "correct": pick == item.answer_index,
            }
        )
    head = {"model": engine.name, "data": str(bench.path), "layout": bench.layout, "strictness": settings.strictness}
    tail = {"seconds_per_item": sum(seconds) / len(seconds) if seconds else None, "answers": answers}
    return head | mcq_accuracy(items, picks) | tail


def _rows(report: dict) -> Iterable[tuple[str, dict]]:
    yield "all questions", report
    yield from ((f"type {name}", part) for name, part in report["by_type"].items())
    yield from ((f"{name} images", part) for name, part in report["by_images"].items())
    yield from ((f"concern {name}", part) for name, part in report["by_concern"].items())


def mcq_table(report: dict) -> str:
    """An ``evaluate_mcq`` report as text: a header line, then items, accuracy and unanswerable answers overall, per
    question type, per number of images and per concern."""
    strictness = report["strictness"]
    lines = [
        f"model {report['model']} on {report['data']} ({report['layout']} layout)"
        + (f", strictness {strictness:g}" if strictness is not None else "")
    ]
    rows = list(_rows(report))
    width = max(24, *(len(label) + 2 for label, _ in rows))
    lines.append(f"{'':<{width}}{'items':>8}{'accuracy':>10}{'unanswerable':>14}")
    for label, part in rows:
        accuracy = "-" if part["accuracy"] is None else f"{part['accuracy']:.3f}"
        lines.append(f"{label:<{width}}{part['items']:>8}{accuracy:>10}{part['unanswerable']:>14}")
    if report["seconds_per_item"] is not None:
        lines.append(f"{report['seconds_per_item']:.2f} s per question")
    return "\n".join(lines)
