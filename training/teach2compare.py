"""Teach2Compare (Co-Instruct, Wu et al. 2024): comparison data taught by a vision-capable model (GPT-4V in the paper).

Unlabelled images (in the wild, artificially degraded, AI-generated) are drawn into seeded groups of 2–4. For every
group a ``training.backends.TextBackend`` is asked for (a) an overall comparison description and (b) question–answer
pairs on specific quality attributes (``ATTRIBUTES``), open-ended or multiple choice. Its replies become Co-Instruct
records that ``training.data.readers.read_coinstruct(FILE, DIR)`` reads.

``python -m training.teach2compare --images DIR --out X.json --groups N [--sizes 2,3,4] [--size-weights 1,1,1]
[--kinds description,qa] [--questions 6] [--seed 0] --backend http --url https://api.openai.com/v1 --model gpt-4o
[--retries 3] [--backoff 2]``

Images: every file under DIR (recursively) whose extension is in ``training.groups.IMAGE_EXTENSIONS`` (the formats
``qground.imageio`` reads) and that ``load_image`` decodes; unreadable ones are counted and listed with the reason.

Groups (``training.groups.draw_image_sets``): the readable paths (relative to DIR, POSIX) are drawn into ``--groups``
distinct sets with ``--seed``, sizes from ``--sizes`` (those the folder can fill) weighted by ``--size-weights``, each
in the random order its images are sent and named in ("the first image", …). A group's id is ``t2c-`` + 16 hex digits
of the SHA-1 of its sorted paths; a larger ``--groups`` with the same seed keeps the smaller run's groups first.

Files (the convention of ``training.groups``):

- ``X.json.partial.jsonl`` (the log), one JSON line per answered request, appended as soon as its reply is parsed:
  ``{"group", "kind", "images": [...], "reply": raw text, "records": [record, ...], "rejected": [{"reason",
  "detail"}, ...]}``. A rerun skips every (group, kind) the log holds, rejected ones included, and sends the rest: a
  run cut short (crash, Ctrl-C, failed requests) resumes without duplicates; a torn last line is dropped. It is kept
  after the run (it is the resume state and holds the raw replies).
- ``X.json``: a JSON list (one record per line) of every record in the log, in plan order (group, then ``--kinds``
  order), rewritten atomically at the end of every run: what ``read_coinstruct(X.json, DIR)`` reads.

A record is the LLaVA / Co-Instruct schema (``training.groups.conversation_record``), with extra keys the readers
ignore::

    {"id": "<group>-description" | "<group>-qa-<k>", "image": [paths relative to DIR, in the order sent],
     "conversations": [{"from": "human", "value": "The first image: <image>\\nThe second image: <image>\\n<question>"},
                       {"from": "gpt", "value": "<answer>"}],
     "source": "teach2compare", "group": "<group id>", "kind": "description" | "qa"}

The description record asks one of ``DESCRIPTION_QUESTIONS`` (chosen by the group id). Q&A pairs become one
single-turn record each (``k``: the pair's 1-based place in the reply), so a rejected pair costs only itself and every
question is asked with the images; a multiple-choice question carries its options as lines ``A. …`` and the answer is
the correct line, ``B. <option>``.

Replies are parsed leniently (code fences, prose around the JSON, trailing commas, single quotes, a list or an object
holding it under ``pairs``/``qa``/…, key aliases ``q``/``a``/…, options as a list or an object, the correct option as
a letter or its text). Rejections, kept in the log with a detail and counted per reason: a whole reply is ``empty``,
a ``refusal``, has ``no_json`` (Q&A; or a description that starts as JSON that does not parse), is ``too_short``
(description, under ``MIN_DESCRIPTION_WORDS`` words) or is a JSON object with no description (``missing_answer``);
a Q&A pair is ``bad_pair`` (not an object), ``missing_question``, ``missing_answer``, a ``refusal``, ``bad_option``
(fewer than 2 options, or a correct option that is none of them); either is ``bad_image_reference`` when it names an
image the group lacks ("the fourth image" or "image 4" in a pair).

The summary counts images, groups, requests (done before, sent, failed) and, over the whole log, records and
rejections by reason. A request whose backend call still raises ``BackendError`` after ``--retries`` attempts counts as
failed and the run goes on, up to ``training.groups.MAX_CONSECUTIVE_FAILURES`` failures in a row, which stop it; the
exit status is then 1 and rerunning the same command retries them; bad input exits with 2 and one line on stderr.
Other backend errors (e.g. HTTP 401) stop the run with a traceback; the log keeps what was done. Progress goes to
stderr every ``PROGRESS_EVERY`` requests.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from qground.imageio import load_image
from qground.prompts import ordinal
from training.annotate import find_json
from training.backends import TextBackend, add_backend_arguments, backend_from_arguments, with_retries
from training.groups import (
    IMAGE_EXTENSIONS,
    Rejected,
    RunCounts,
    add_group_arguments,
    append_line,
    bad_input,
    check_common,
    choose_by_id,
    conversation_record,
    draw_image_sets,
    group_id,
    in_plan_order,
    open_log,
    partial_path,
    read_log,
    send_all,
    sizes_and_weights,
    write_json_list,
)

__all__ = [
    "ATTRIBUTES",
    "DESCRIPTION_QUESTIONS",
    "KINDS",
    "Group",
    "Options",
    "Plan",
    "QAPair",
    "Summary",
    "description_prompt",
    "description_question",
    "log_entry",
    "main",
    "make_groups",
    "make_plan",
    "parse_description",
    "parse_qa",
    "qa_prompt",
    "run",
    "scan_images",
]

PROG = "python -m training.teach2compare"
SOURCE = "teach2compare"
PREFIX = "t2c"  # of group ids
KINDS = ("description", "qa")
ATTRIBUTES = (
    "clarity and sharpness",
    "color",
    "lighting and exposure",
    "noise",
    "composition",
    "artifacts and distortions",
    "detail and texture",
    "overall quality",
)
DESCRIPTION_QUESTIONS = (
    "Compare the overall quality of these images.",
    "How do these images differ in quality? Please describe and compare them.",
    "Describe and compare the visual quality of these images.",
    "Can you compare these images in terms of clarity, color, lighting and noise?",
    "Which of these images has the best quality, and how do they compare?",
)
MIN_DESCRIPTION_WORDS = 10
SHOWN_EXAMPLES = 5  # unreadable images listed in the summary
PROGRESS_EVERY = 100
LETTERS = "ABCDEFGH"

_DESCRIPTION_KEYS = ("description", "comparison", "answer", "text", "response")
_PAIR_LIST_KEYS = ("pairs", "qa", "qas", "qa_pairs", "questions", "items")
_QUESTION_KEYS = ("question", "q", "query")
_ANSWER_KEYS = ("answer", "a", "response")
_OPTION_KEYS = ("options", "choices", "candidates")
_CORRECT_KEYS = ("correct", "correct_option", "correct_answer", "correct_choice", "correct_letter")

_REFUSAL = re.compile(
    r"^\W*(?:unfortunately,?\s+)?(?:sorry|i apologi[sz]e|as an ai|i(?:['’]m| am) (?:sorry|unable|not able)"
    r"|i (?:can ?not|can['’]t|won['’]t|will not))\b",
    re.IGNORECASE,
)
_FENCED = re.compile(r"```[\w-]*[ \t]*\n?(.*?)```", re.DOTALL)
_LABEL_PREFIX = re.compile(r"^[*#\s]*(?:overall\s+)?(?:comparison|description)[*\s]*:[*\s]*", re.IGNORECASE)
_OPTION_PREFIX = re.compile(r"^\s*\(?[A-H][.):]\s+")
_LETTER = re.compile(r"^\s*(?:option\s+)?\(?([A-H])\)?(?:[.):]|\s*$)", re.IGNORECASE)
_ORDINAL_INDEX = {ordinal(i): i for i in range(len(LETTERS))} | {
    numeral: i for i, numeral in enumerate(("1st", "2nd", "3rd", "4th", "5th", "6th", "7th", "8th"))
}
_IMAGE_REFERENCE = re.compile(
    rf"\b(?:({'|'.join(_ORDINAL_INDEX)})\s+(?:image|picture|photo)s?"
    r"|(?:image|picture|photo)\s*(?:#|no\.\s*|number\s+)?([1-8]))\b",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class Options:
    """What to build: ``images`` folder, ``out`` final JSON (``X.json``), ``groups`` count, group ``sizes`` and their
    ``size_weights`` (None: equal), request ``kinds``, Q&A ``questions`` asked per group, ``seed``, backend ``retries``
    (attempts per request) and ``backoff`` seconds. Raises ValueError (one line) when a value is out of range."""

    images: Path
    out: Path
    groups: int
    sizes: tuple[int, ...] = (2, 3, 4)
    size_weights: tuple[float, ...] | None = None
    kinds: tuple[str, ...] = KINDS
    questions: int = 6
    seed: int = 0
    retries: int = 3
    backoff: float = 2.0

    def __post_init__(self) -> None:
        if not self.images.is_dir():
            raise ValueError(f"--images {self.images}: not a folder")
        check_common(self.out, self.groups, self.sizes, self.size_weights, self.retries, self.backoff)
        if not self.kinds or len(set(self.kinds)) != len(self.kinds) or not set(self.kinds) <= set(KINDS):
            raise ValueError(f"--kinds must be distinct names out of {','.join(KINDS)}, got {','.join(self.kinds)}")
        if self.questions < 1:
            raise ValueError(f"--questions must be at least 1, got {self.questions}")

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> Options:
        """Options from ``main``'s parsed arguments (``--sizes``/``--size-weights``/``--kinds`` comma-separated)."""
        sizes, size_weights = sizes_and_weights(args)
        kinds = tuple(kind.strip() for kind in args.kinds.split(","))
        return cls(
            args.images,
            args.out,
            args.groups,
            sizes,
            size_weights,
            kinds,
            args.questions,
            args.seed,
            args.retries,
            args.backoff,
        )


# --------------------------------------------------------------------------------------------------------------------
# Images and groups


@dataclass(frozen=True)
class Group:
    """A comparison group: ``id`` (``training.groups.group_id`` with prefix "t2c") and its ``images`` (POSIX paths
    relative to the image folder) in the order they are sent and named."""

    id: str
    images: tuple[str, ...]


def scan_images(root: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """(sorted relative paths of the readable images under ``root``, [(relative path, reason)] of unreadable ones).
    Only files with an ``IMAGE_EXTENSIONS`` extension are looked at; each is fully decoded once."""
    readable, unreadable = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS):
        relative = path.relative_to(root).as_posix()
        try:
            load_image(path)
        except (OSError, ValueError) as err:
            unreadable.append((relative, str(err)))
        else:
            readable.append(relative)
    return readable, unreadable


def make_groups(
    images: Sequence[str],
    count: int,
    sizes: Sequence[int] = (2, 3, 4),
    weights: Sequence[float] | None = None,
    seed: int = 0,
) -> list[Group]:
    """``count`` distinct groups of ``images`` drawn with ``seed`` (``training.groups.draw_image_sets``); ValueError
    when the folder cannot fill the smallest size or holds fewer than ``count`` distinct sets."""
    sets = draw_image_sets(images, count, sizes, weights, seed, what="readable images")
    return [Group(group_id(PREFIX, members), members) for members in sets]


# --------------------------------------------------------------------------------------------------------------------
# Prompts


def _image_names(num_images: int) -> str:
    """'the first image, the second image and the third image'."""
    names = [f"the {ordinal(i)} image" for i in range(num_images)]
    return ", ".join(names[:-1]) + " and " + names[-1]


def description_prompt(num_images: int) -> str:
    """The request for an overall comparison description of ``num_images`` images (attached in group order)."""
    return (
        f"You are an expert in image quality assessment. You are given {num_images} images, attached in this order: "
        f"{_image_names(num_images)}.\n"
        f"Compare their visual quality: {', '.join(ATTRIBUTES[:-1])}. Describe the quality of each image and how "
        "the images differ, then say which image has the best and which the worst overall quality, and why.\n"
        f"Refer to the images only as {_image_names(num_images)}; there is no other image. Answer in one or two "
        "paragraphs of plain prose, without lists or JSON."
    )


def qa_prompt(num_images: int, questions: int) -> str:
    """The request for ``questions`` attribute question–answer pairs about ``num_images`` images, as a JSON list."""
    example = [
        {"question": "Which image is sharper?", "answer": "The first image is sharper: its edges are crisp."},
        {"question": "Which image has less noise?", "options": ["The first image", "The second image"], "correct": "B"},
    ]
    return (
        f"You are an expert in image quality assessment. You are given {num_images} images, attached in this order: "
        f"{_image_names(num_images)}.\n"
        f"Write {questions} question-answer pairs that compare these images on specific quality attributes: "
        f"{', '.join(ATTRIBUTES)}. Each pair is about one attribute; cover different attributes. Every question must "
        "be answerable from the images alone, every answer must be correct and specific, and both must name the "
        f"images only as {_image_names(num_images)}.\n"
        'Make about half of them multiple choice: give 2 to 4 short "options" and, as "correct", the letter of the '
        'right one ("A" for the first option); the options may be the images themselves ("The first image", ...).\n'
        f"Answer with a JSON list only, in this form:\n{json.dumps(example)}"
    )


def description_question(group: Group) -> str:
    """The human turn of a group's description record: one of ``DESCRIPTION_QUESTIONS`` chosen by its id."""
    return choose_by_id(DESCRIPTION_QUESTIONS, group.id)


# --------------------------------------------------------------------------------------------------------------------
# Reply parsing


@dataclass(frozen=True)
class QAPair:
    """One parsed pair: ``question``, ``answer`` (``"B. <option>"`` for multiple choice) and the ``options`` texts."""

    question: str
    answer: str
    options: tuple[str, ...] = ()

    def human_text(self) -> str:
        """The question, followed by the option lines ``A. …`` when it is multiple choice."""
        return "\n".join([self.question, *(f"{LETTERS[i]}. {option}" for i, option in enumerate(self.options))])


def parse_description(reply: str, num_images: int) -> str:
    """The comparison description in ``reply``: prose, optionally fenced, after a "Comparison:" label, or a JSON object
    with a ``_DESCRIPTION_KEYS`` field. Raises Rejected (empty, refusal, too_short, missing_answer, no_json,
    bad_image_reference)."""
    fenced = _FENCED.fullmatch(reply.strip())
    text = (fenced.group(1) if fenced else reply).strip()
    if text.startswith("{"):
        text = _description_from_json(text)
    text = _LABEL_PREFIX.sub("", text, count=1).strip()
    if not text:
        raise Rejected("empty", "the reply is empty")
    if _REFUSAL.match(text):
        raise Rejected("refusal", f"{text:.80}")
    words = len(text.split())
    if words < MIN_DESCRIPTION_WORDS:
        raise Rejected("too_short", f"{words} words, at least {MIN_DESCRIPTION_WORDS} needed: {text:.80}")
    _check_references(text, num_images)
    return text


def _description_from_json(text: str) -> str:
    try:
        data = find_json(text, objects_only=False)
    except ValueError:
        raise Rejected("no_json", f"a JSON-like reply that does not parse: {text:.80}") from None
    value = _field(data, _DESCRIPTION_KEYS) if isinstance(data, dict) else None
    if not isinstance(value, str):
        raise Rejected("missing_answer", f"no description field ({', '.join(_DESCRIPTION_KEYS)}): {text:.80}")
    return value


def parse_qa(reply: str, num_images: int) -> list[QAPair | Rejected]:
    """The pairs of a Q&A ``reply``, in reply order: a QAPair per good entry, a Rejected per bad one. Raises Rejected
    when the reply as a whole yields nothing (refusal, no_json, empty)."""
    entries = _qa_entries(reply)
    items: list[QAPair | Rejected] = []
    for entry in entries:
        try:
            items.append(_qa_pair(entry, num_images))
        except Rejected as rejected:
            items.append(rejected)
    return items


def _qa_entries(reply: str) -> list[Any]:
    """The list of pair entries: a top-level list, a ``_PAIR_LIST_KEYS`` list, one pair object or a lone list."""
    try:
        data = find_json(reply, objects_only=False)
    except ValueError:
        text = reply.strip()
        raise Rejected("refusal" if _REFUSAL.match(text) else "no_json", f"no JSON list of pairs: {text:.80}") from None
    entries = data if isinstance(data, list) else _pair_list(data)
    if not entries:
        raise Rejected("empty", f"the reply holds no pairs: {json.dumps(data):.80}")
    return entries


def _pair_list(data: dict[str, Any]) -> list[Any]:
    pairs = _field(data, _PAIR_LIST_KEYS)
    if isinstance(pairs, list):
        return pairs
    if _field(data, _QUESTION_KEYS) is not None:
        return [data]
    lists = [value for value in data.values() if isinstance(value, list)]
    return lists[0] if len(lists) == 1 else []


def _qa_pair(entry: Any, num_images: int) -> QAPair:
    if not isinstance(entry, dict):
        raise Rejected("bad_pair", f"a pair must be a JSON object, got {json.dumps(entry):.60}")
    question = _text(_field(entry, _QUESTION_KEYS))
    if not question:
        raise Rejected("missing_question", f"no question ({', '.join(_QUESTION_KEYS)}): {json.dumps(entry):.80}")
    options = _options(_field(entry, _OPTION_KEYS))
    answer = _choice_answer(entry, options) if options else _text(_field(entry, _ANSWER_KEYS))
    if not answer:
        raise Rejected("missing_answer", f"no answer ({', '.join(_ANSWER_KEYS)}) to {question!r:.80}")
    if _REFUSAL.match(answer):
        raise Rejected("refusal", f"{answer:.80}")
    _check_references("\n".join([question, answer, *options]), num_images)
    return QAPair(question, answer, options)


def _options(value: Any) -> tuple[str, ...]:
    """Option texts (a list, or an object's values) without "A." prefixes; () for no options."""
    if value is None:
        return ()
    raw = list(value.values()) if isinstance(value, dict) else value
    if not isinstance(raw, list):
        raise Rejected("bad_option", f"options must be a list, got {json.dumps(value):.60}")
    options = tuple(_OPTION_PREFIX.sub("", _text(option)) for option in raw)
    if not 2 <= len(options) <= len(LETTERS) or not all(options):
        raise Rejected("bad_option", f"2 to {len(LETTERS)} non-empty options needed, got {json.dumps(value):.60}")
    return options


def _choice_answer(entry: dict[str, Any], options: tuple[str, ...]) -> str:
    """``"B. <option>"`` for the correct option, named by the correct field (or else the answer field) as a letter or
    as an option's text; "" when neither field is there."""
    correct = _field(entry, _CORRECT_KEYS)
    text = _text(correct if correct is not None else _field(entry, _ANSWER_KEYS))
    if not text:
        return ""
    folded = [option.rstrip(".").casefold() for option in options]
    letter = _LETTER.match(text)
    if text.rstrip(".").casefold() in folded:
        index = folded.index(text.rstrip(".").casefold())
    elif letter and ord(letter.group(1).upper()) - ord("A") < len(options):
        index = ord(letter.group(1).upper()) - ord("A")
    else:
        raise Rejected("bad_option", f"the correct option {text!r:.40} is none of {len(options)} options")
    return f"{LETTERS[index]}. {options[index]}"


def _field(data: dict[str, Any], keys: Sequence[str]) -> Any:
    """The value of the first of ``keys`` (case-insensitive) that ``data`` has, else None."""
    lowered = {str(key).strip().lower(): value for key, value in data.items()}
    return next((lowered[key] for key in keys if key in lowered), None)


def _text(value: Any) -> str:
    """A string or number as stripped text; anything else as ""."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return ""


def _check_references(text: str, num_images: int) -> None:
    """Raise Rejected("bad_image_reference") when ``text`` names an image past the group's ``num_images``."""
    for match in _IMAGE_REFERENCE.finditer(text):
        words, number = match.groups()
        index = _ORDINAL_INDEX[words.lower()] if words else int(number) - 1
        if index >= num_images:
            raise Rejected("bad_image_reference", f"names {match.group(0)!r} in a group of {num_images} images")


# --------------------------------------------------------------------------------------------------------------------
# Records and the log


def _record(record_id: str, group: Group, kind: str, question: str, answer: str) -> dict[str, Any]:
    """A single-turn Co-Instruct record about ``group``'s images (module docstring)."""
    return conversation_record(record_id, group.images, question, answer, SOURCE, group=group.id, kind=kind)


def log_entry(group: Group, kind: str, reply: str) -> dict[str, Any]:
    """The log line of one answered request: its records and its rejections (module docstring)."""
    try:
        records, rejected = _reply_records(group, kind, reply)
    except Rejected as whole:
        records, rejected = [], [{"reason": whole.reason, "detail": str(whole)}]
    return {
        "group": group.id,
        "kind": kind,
        "images": list(group.images),
        "reply": reply,
        "records": records,
        "rejected": rejected,
    }


def _reply_records(group: Group, kind: str, reply: str) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(records, rejected pairs) of a reply; raises Rejected when the reply as a whole is rejected."""
    count = len(group.images)
    if kind == "description":
        text = parse_description(reply, count)
        return [_record(f"{group.id}-description", group, kind, description_question(group), text)], []
    records, rejected = [], []
    for k, item in enumerate(parse_qa(reply, count), start=1):
        if isinstance(item, Rejected):
            rejected.append({"reason": item.reason, "detail": f"pair {k}: {item}"})
        else:
            records.append(_record(f"{group.id}-qa-{k}", group, kind, item.human_text(), item.answer))
    return records, rejected


def _log_key(entry: dict[str, Any]) -> tuple[str, str]:
    """(group id, kind) of a log entry; KeyError or TypeError when it is not one (``training.groups.read_log``)."""
    if not isinstance(entry["records"], list):
        raise TypeError("records must be a list")
    return entry["group"], entry["kind"]


# --------------------------------------------------------------------------------------------------------------------
# Running


@dataclass
class Plan:
    """Everything decided before the first request: the images, the groups and the log's finished requests."""

    images: list[str]
    unreadable: list[tuple[str, str]]
    groups: list[Group]
    done: dict[tuple[str, str], dict[str, Any]]


@dataclass(kw_only=True)
class Summary(RunCounts):
    """A run's counts (``training.groups.RunCounts``; ``records`` and ``rejected`` cover the whole log) and its plan."""

    plan: Plan

    def report(self, out: Path) -> str:
        """The summary printed at the end of a run: the images and groups, then the common lines."""
        lines = [f"images: {len(self.plan.images)} readable, {len(self.plan.unreadable)} unreadable"]
        lines += [f"  {path}: {reason}" for path, reason in self.plan.unreadable[:SHOWN_EXAMPLES]]
        lines.append(f"groups: {len(self.plan.groups)}")
        return "\n".join(lines + self.lines(out))


def make_plan(options: Options) -> Plan:
    """Scan the images, draw the groups and read the log; ValueError (one line) when that cannot be done."""
    images, unreadable = scan_images(options.images)
    groups = make_groups(images, options.groups, options.sizes, options.size_weights, options.seed)
    return Plan(images, unreadable, groups, read_log(partial_path(options.out), _log_key, SOURCE))


def run(options: Options, plan: Plan, backend: TextBackend) -> Summary:
    """Send every planned request the log lacks, append each answer to the log, then write the final JSON."""
    requests = [(group, kind) for group in plan.groups for kind in options.kinds]
    done = dict(plan.done)
    todo = [(group, kind) for group, kind in requests if (group.id, kind) not in done]
    summary = Summary(plan=plan, requests=len(requests), done_before=len(requests) - len(todo))
    with open_log(options.out) as log:

        def keep(request: tuple[Group, str], reply: str) -> None:
            entry = log_entry(*request, reply)
            append_line(log, entry)
            done[(request[0].id, request[1])] = entry

        send_all(todo, partial(_ask, backend, options), keep, summary, _request_name, PROGRESS_EVERY)
    entries = in_plan_order(done, [(group.id, kind) for group, kind in requests])
    records = [record for entry in entries for record in entry["records"]]
    write_json_list(options.out, records)
    summary.records = len(records)
    summary.rejected.update(rejected["reason"] for entry in entries for rejected in entry.get("rejected", []))
    return summary


def _request_name(request: tuple[Group, str]) -> str:
    return f"{request[0].id} {request[1]}"


def _ask(backend: TextBackend, options: Options, request: tuple[Group, str]) -> str:
    """The backend's reply to the request's prompt with the group's images in order, retried on BackendError."""
    group, kind = request
    count = len(group.images)
    prompt = description_prompt(count) if kind == "description" else qa_prompt(count, options.questions)
    paths = [options.images / relative for relative in group.images]
    return with_retries(lambda: backend.complete(prompt, paths), attempts=options.retries, backoff=options.backoff)


def main(argv: Sequence[str] | None = None, backend: TextBackend | None = None) -> int:
    """The command line (module docstring); ``backend`` replaces the one the arguments describe (tests). Returns 0, 1
    when requests failed (rerun to retry), 2 on bad input (``training.groups`` exit codes)."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of unlabelled images (searched recursively)")
    add_group_arguments(parser)
    parser.add_argument("--kinds", default=",".join(KINDS), help="requests per group (default %(default)s)")
    parser.add_argument("--questions", type=int, default=6, help="Q&A pairs asked per group (default %(default)s)")
    add_backend_arguments(parser)
    args = parser.parse_args(argv)
    try:
        options = Options.from_arguments(args)
        backend = backend or backend_from_arguments(args)
        plan = make_plan(options)
    except (ValueError, OSError) as err:
        return bad_input(PROG, err)
    summary = run(options, plan, backend)
    print(summary.report(options.out))
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
