"""Merge2Compare (Co-Instruct, Wu et al. 2024): comparison data made from single-image quality descriptions.

Single-image descriptions (Q-Pathway) are drawn into seeded groups of 2–4 images; a group is dropped when two of its
descriptions say nearly the same thing (cosine similarity of their text embeddings ≥ ``--max-similarity``; E5-Mistral
by default); an LLM (``training.backends``) merges the rest into one comparison text per group, which becomes the
answer of a Co-Instruct record asking a comparison question.

Input (``--descriptions``): a JSON list or a JSONL file of records, either ``{"image": "rel/path.jpg", "text" |
"description" | "caption": "..."}`` (Q-Pathway-like) or the LLaVA schema (``{"image", "conversations"}``: the first
gpt answer is the description). Paths are relative to ``--images``. An image may have several descriptions: a group
uses one of them, drawn with the seed. Records that cannot be used (image missing, empty description, ...) are counted
per reason; more than ``--max-bad-fraction`` of them is an error.

Groups (``training.groups.draw_image_sets``): the described images are drawn into ``--groups`` distinct sets with
``--seed``, sizes from ``--sizes`` (those the images can fill) weighted by ``--size-weights``; then, in group order,
each image's description is drawn with a generator derived from the same seed. The same set in another order is the
same group; a larger ``--groups`` with the same seed keeps the smaller run's groups first.

Files (the convention of ``training.groups``), for ``--out X.json``:

- ``X.json.partial.jsonl`` (the log): one record per line, appended and flushed as each group is merged, kept after
  the run. A rerun skips the groups already in it (a torn last line is cut off first) and only embeds the
  descriptions of the groups still to do.
- ``X.json``: the JSON list (one record per line) of every record in the log, in plan order, rewritten atomically at
  the end of every run: what ``training.data.readers.read_coinstruct(X.json, --images)`` reads.

A record (``training.groups.conversation_record``)::

    {"id": "m2c-<16 hex>", "image": [paths relative to --images],
     "conversations": [{"from": "human", "value": "The first image: <image>\\nThe second image: <image>\\n<question>"},
                       {"from": "gpt", "value": "<comparison>"}],
     "source": "merge2compare", "descriptions": [one per image], "max_similarity": <highest pairwise cosine>}

The id is ``training.groups.group_id("m2c", images)`` (order-free); the question is one of ``QUESTIONS``, chosen by it.

Replies that cannot be an answer are rejected (counted per reason, not logged, so a rerun asks again): ``empty``, a
``refusal``, ``missing_image`` (an image not named by its ordinal), ``nonexistent_image`` (one the group lacks
named), ``mentions_descriptions``. A request that still raises ``BackendError`` after ``--retries`` attempts counts as
failed, and ``training.groups.MAX_CONSECUTIVE_FAILURES`` failures in a row stop the run; a rerun tries them again.
The summary counts descriptions, groups (and near-duplicates dropped), requests (done before, sent, failed), records
in ``X.json`` and rejections. Exit code: 0, or 1 when some requests failed, 2 on bad input (one line on stderr).
Other backend errors (e.g. HTTP 401) stop the run with a traceback; the log keeps what was done.

``python -m training.merge2compare --descriptions q_pathway.json --images data/images --out data/m2c.json
--groups 100000 [--sizes 2,3,4] [--size-weights 1,1,1] [--seed 0] [--max-similarity 0.95] --model
Qwen/Qwen2.5-7B-Instruct [--backend http --url https://api.openai.com/v1 --model gpt-4o] [--retries 3] [--backoff 2]``
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import combinations
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from qground.prompts import image_header, ordinal
from training.backends import (
    DEFAULT_EMBEDDER,
    Embedder,
    TextBackend,
    TransformersEmbedder,
    add_backend_arguments,
    backend_from_arguments,
    with_retries,
)
from training.data.readers import ReadReport
from training.data.sample import DataFormatError
from training.groups import (
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
    "QUESTIONS",
    "Description",
    "Group",
    "Options",
    "Plan",
    "Summary",
    "check_reply",
    "coinstruct_record",
    "drop_near_duplicates",
    "main",
    "make_groups",
    "make_plan",
    "merge_prompt",
    "question_for",
    "read_descriptions",
    "run",
]

PROG = "python -m training.merge2compare"
SOURCE = "merge2compare"
PREFIX = "m2c"  # of group ids
TEXT_KEYS = ("text", "description", "caption")
PROGRESS_EVERY = 500  # requests between progress lines on stderr
KNOWN_ORDINALS = 8  # qground.prompts.ordinal names images "first" to "eighth"

QUESTIONS = (
    "Compare the quality of these images.",
    "Which image has the best quality, and why?",
    "How do these images differ in quality?",
    "Please compare the quality of these images and explain which one is better.",
    "Rank these images by their quality and explain the differences.",
)

_REFUSAL = re.compile(
    r"\b(?:I'?m sorry|I am sorry|I apologi[sz]e|As an AI|I can ?not|I can't|I'?m unable|I am unable)\b", re.IGNORECASE
)
_MENTIONS_DESCRIPTIONS = re.compile(r"\bdescriptions?\b", re.IGNORECASE)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.DOTALL)
_LABEL = re.compile(r"^(?:comparison|answer|merged (?:text|comparison))\s*:\s*", re.IGNORECASE)


# --------------------------------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class Options:
    """What a run does: the input ``descriptions`` and ``images`` folder, ``out`` (``X.json``), ``groups`` count,
    group ``sizes`` and their ``size_weights`` (None: equal), ``seed``, the near-duplicate threshold
    ``max_similarity``, ``max_bad_fraction`` of unusable input records, backend ``retries`` (attempts per request)
    and ``backoff`` seconds, the text ``embedder`` (Hub id and revision). Raises ValueError (one line) when a value is
    out of range; the backend's other options stay in argparse's namespace (``backend_from_arguments``)."""

    descriptions: Path
    images: Path
    out: Path
    groups: int = 1000
    sizes: tuple[int, ...] = (2, 3, 4)
    size_weights: tuple[float, ...] | None = None
    seed: int = 0
    max_similarity: float = 0.95
    max_bad_fraction: float = 0.01
    retries: int = 3
    backoff: float = 2.0
    embedder: str = DEFAULT_EMBEDDER
    embedder_revision: str | None = None

    def __post_init__(self) -> None:
        check_common(self.out, self.groups, self.sizes, self.size_weights, self.retries, self.backoff)
        if not -1.0 <= self.max_similarity <= 1.0:
            raise ValueError(f"--max-similarity is a cosine similarity in [-1, 1], got {self.max_similarity}")

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> Options:
        """Options from ``main``'s parsed arguments (``--sizes``/``--size-weights`` comma-separated)."""
        sizes, size_weights = sizes_and_weights(args)
        return cls(
            descriptions=args.descriptions,
            images=args.images,
            out=args.out,
            groups=args.groups,
            sizes=sizes,
            size_weights=size_weights,
            seed=args.seed,
            max_similarity=args.max_similarity,
            max_bad_fraction=args.max_bad_fraction,
            retries=args.retries,
            backoff=args.backoff,
            embedder=args.embedder,
            embedder_revision=args.embedder_revision,
        )


# --------------------------------------------------------------------------------------------------------------------
# Input descriptions


@dataclass(frozen=True)
class Description:
    """One single-image description: ``image`` relative to the image root (POSIX form), ``text`` stripped."""

    image: str
    text: str


def read_descriptions(
    path: Path, image_root: Path, max_bad_fraction: float = 0.01
) -> tuple[list[Description], ReadReport]:
    """The usable descriptions of ``path`` in file order, and the report of the records that were not usable.

    A record of an unknown layout raises ``DataFormatError`` naming the file, the record and the field; problems
    (missing image, empty description, no answer, several images) are counted and raise only beyond
    ``max_bad_fraction`` of the records (``ReadReport.check``).
    """
    report = ReadReport(path)
    descriptions = []
    for where, record in _records(path):
        report.total += 1
        if not isinstance(record, dict):
            raise DataFormatError(f"{path}: {where}: expected a JSON object, got {type(record).__name__}")
        try:
            description = _description(record, f"{path}: {where}")
        except Rejected as problem:
            report.add(problem.reason, f"{where}: {problem}")
            continue
        if not (image_root / description.image).is_file():
            report.add("missing image", f"{where}: image {description.image!r} not found under {image_root}")
            continue
        descriptions.append(description)
    report.check(max_bad_fraction)
    return descriptions, report


def _records(path: Path) -> Iterator[tuple[str, Any]]:
    """("record N" | "line N", record) for a JSON list or a JSONL file (told apart by the first character)."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataFormatError(f"{path}: not valid JSON ({err})") from None
        yield from ((f"record {index}", record) for index, record in enumerate(records))
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield f"line {number}", json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(f"{path}: line {number} is not valid JSON ({err})") from None


def _description(record: dict[str, Any], where: str) -> Description:
    """A Q-Pathway-like or LLaVA-schema record -> Description; DataFormatError on a wrong layout, Rejected else."""
    image = _image(record.get("image"), where)
    if "conversations" in record:
        text = _first_answer(record["conversations"], where)
    else:
        key = next((k for k in TEXT_KEYS if k in record), None)
        if key is None:
            raise DataFormatError(f"{where}: no description: expected one of {list(TEXT_KEYS)} or 'conversations'")
        text = record[key]
        if not isinstance(text, str):
            raise DataFormatError(f"{where}: field {key!r} must be a string, got {text!r:.80}")
    if not text.strip():
        raise Rejected("empty description", "the description is empty")
    return Description(image, text.strip())


def _image(value: Any, where: str) -> str:
    """The record's one image path, normalized ("./a/b.jpg" -> "a/b.jpg"); a one-path list is accepted."""
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        if len(value) > 1:
            raise Rejected("several images", f"{len(value)} images; a description is about one image")
        value = value[0]
    if not isinstance(value, str) or not value:
        raise DataFormatError(f"{where}: field 'image' must be a path (a non-empty string), got {value!r:.80}")
    return PurePosixPath(value).as_posix()


def _first_answer(conversation: Any, where: str) -> str:
    """The value of the first gpt/assistant turn of a LLaVA ``conversations`` list."""
    if not isinstance(conversation, list) or not all(
        isinstance(turn, dict) and isinstance(turn.get("from"), str) and isinstance(turn.get("value"), str)
        for turn in conversation
    ):
        raise DataFormatError(f"{where}: field 'conversations' must be a list of {{'from', 'value'}} string turns")
    answers = [turn["value"] for turn in conversation if turn["from"].strip().lower() in ("gpt", "assistant")]
    if not answers:
        raise Rejected("no answer", "the conversation has no gpt turn")
    return answers[0]


# --------------------------------------------------------------------------------------------------------------------
# Groups


@dataclass(frozen=True)
class Group:
    """``images`` (relative paths, in prompt order: the first is "the first image") and one description per image."""

    images: tuple[str, ...]
    texts: tuple[str, ...]

    @property
    def id(self) -> str:
        """``training.groups.group_id("m2c", images)``: the same in any image order."""
        return group_id(PREFIX, self.images)


def make_groups(
    descriptions: Sequence[Description],
    count: int,
    sizes: Sequence[int] = (2, 3, 4),
    weights: Sequence[float] | None = None,
    seed: int = 0,
) -> list[Group]:
    """``count`` groups of distinct images drawn with ``seed`` (``training.groups.draw_image_sets``: same inputs and
    seed, same groups in the same order; a larger count extends them), each image with one of its descriptions, drawn
    in group order by a generator derived from ``seed``. ValueError when the images cannot fill the smallest size or
    make fewer than ``count`` distinct sets."""
    by_image: dict[str, list[str]] = {}
    for description in descriptions:
        by_image.setdefault(description.image, []).append(description.text)
    sets = draw_image_sets(list(by_image), count, sizes, weights, seed, what="described images")
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    return [
        Group(images, tuple(by_image[image][rng.integers(len(by_image[image]))] for image in images)) for images in sets
    ]


def drop_near_duplicates(
    groups: Sequence[Group], embedder: Embedder, max_similarity: float
) -> tuple[list[tuple[Group, float]], int]:
    """(kept groups with their highest pairwise cosine similarity, number dropped).

    Every distinct description of ``groups`` is embedded once; a group is dropped when any two of its descriptions
    have cosine similarity ≥ ``max_similarity``.
    """
    similarity = _similarity_lookup(sorted({text for group in groups for text in group.texts}), embedder)
    kept = []
    for group in groups:
        highest = max(similarity(a, b) for a, b in combinations(group.texts, 2))
        if highest < max_similarity:
            kept.append((group, highest))
    return kept, len(groups) - len(kept)


def _similarity_lookup(texts: list[str], embedder: Embedder) -> Callable[[str, str], float]:
    """A function (text a, text b) -> cosine similarity of their embeddings (rows re-normalized, so any scale works)."""
    if not texts:
        return lambda a, b: 0.0
    vectors = np.asarray(embedder.embed(texts), dtype=np.float64)
    if vectors.ndim != 2 or len(vectors) != len(texts):
        raise ValueError(f"the embedder returned shape {vectors.shape} for {len(texts)} texts, expected (n, d)")
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    row = {text: k for k, text in enumerate(texts)}
    return lambda a, b: float(vectors[row[a]] @ vectors[row[b]])


# --------------------------------------------------------------------------------------------------------------------
# Prompt and reply


def question_for(group: Group) -> str:
    """The comparison question of a group's record: one of ``QUESTIONS``, chosen by the group id (stable)."""
    return choose_by_id(QUESTIONS, group.id)


def merge_prompt(texts: Sequence[str], question: str) -> str:
    """The LLM prompt: the k descriptions labelled "The first image: …", and the request for one comparison text that
    answers ``question``, names every image by its ordinal and does not mention the descriptions."""
    labelled = "\n".join(f"{header}{text}" for header, text in zip(image_header(len(texts)), texts))
    ordinals = ", ".join(f'"the {ordinal(i)} image"' for i in range(len(texts)))
    return (
        f"Here are independent descriptions of the visual quality of {len(texts)} images, one per image:\n\n"
        f"{labelled}\n\n"
        f"Merge them into one comparison of the {len(texts)} images that answers the question: {question}\n"
        "Compare the images by quality attributes (sharpness, noise, exposure, color, texture, composition), say "
        f"which image has the best quality and why, and refer to every image by its position ({ordinals}). "
        "Write as someone who sees the images: do not mention the descriptions, and do not add facts they do not "
        "support. Reply with the comparison text only."
    )


def check_reply(reply: str, num_images: int) -> str:
    """The comparison text of an LLM reply (stripped of a code fence and a "Comparison:" label), or
    ``training.groups.Rejected`` with reason "empty", "refusal", "missing_image" (an ordinal of the group is never
    named), "nonexistent_image" ("the third image" in a group of two) or "mentions_descriptions"."""
    text = reply.strip()
    fenced = _FENCE.match(text)
    text = _LABEL.sub("", fenced.group(1) if fenced else text).strip()
    if not text:
        raise Rejected("empty", "the reply is empty")
    if _REFUSAL.search(text[:200].replace("\u2019", "'")):
        raise Rejected("refusal", text[:80])
    missing = [ordinal(i) for i in range(num_images) if not re.search(rf"\b{ordinal(i)}\b", text, re.IGNORECASE)]
    if missing:
        raise Rejected("missing_image", f"the {', '.join(missing)} image not mentioned")
    extra = [
        ordinal(i)
        for i in range(num_images, KNOWN_ORDINALS)
        if re.search(rf"\b{ordinal(i)}\s+(?:image|picture|photo|one)\b", text, re.IGNORECASE)
    ]
    if extra:
        raise Rejected("nonexistent_image", f"mentions the {', '.join(extra)} image of {num_images}")
    if _MENTIONS_DESCRIPTIONS.search(text):
        raise Rejected("mentions_descriptions", text[:80])
    return text


def coinstruct_record(group: Group, question: str, answer: str, similarity: float) -> dict[str, Any]:
    """The group's record in the Co-Instruct conversation schema (see the module docstring)."""
    return conversation_record(
        group.id,
        group.images,
        question,
        answer,
        SOURCE,
        descriptions=list(group.texts),
        max_similarity=round(similarity, 4),
    )


# --------------------------------------------------------------------------------------------------------------------
# The run


@dataclass
class Plan:
    """Everything decided before the first request: the usable ``descriptions`` (count) of how many ``images``, the
    input ``problems`` per kind, the drawn ``groups``, the log's records (``done``, by id), the groups still to merge
    that passed the similarity filter (``kept``, with their highest similarity) and how many did not."""

    descriptions: int
    images: int
    problems: dict[str, int]
    groups: list[Group]
    done: dict[str, dict[str, Any]]
    kept: list[tuple[Group, float]]
    near_duplicates: int
    max_similarity: float


@dataclass(kw_only=True)
class Summary(RunCounts):
    """A run's counts (``training.groups.RunCounts``; ``rejected`` counts this run's replies) and its plan."""

    plan: Plan

    def report(self, out: Path) -> str:
        """The summary printed at the end of a run: the input and the groups, then the common lines."""
        plan = self.plan
        problems = ", ".join(f"{kind} {n}" for kind, n in plan.problems.items()) or "none"
        lines = [
            f"descriptions: {plan.descriptions} usable, of {plan.images} images (records with problems: {problems})",
            f"groups: {len(plan.groups)}, {plan.near_duplicates} dropped as near-duplicates "
            f"(cosine ≥ {plan.max_similarity:g})",
        ]
        return "\n".join(lines + self.lines(out))


def make_plan(options: Options, embedder: Embedder) -> Plan:
    """Read the descriptions, draw the groups, read the log and filter the groups it lacks; ValueError (one line) or
    OSError when that cannot be done."""
    descriptions, report = read_descriptions(options.descriptions, options.images, options.max_bad_fraction)
    groups = make_groups(descriptions, options.groups, options.sizes, options.size_weights, options.seed)
    done = read_log(partial_path(options.out), _record_id, SOURCE)
    pending = [group for group in groups if group.id not in done]
    kept, near_duplicates = drop_near_duplicates(pending, embedder, options.max_similarity)
    images = len({d.image for d in descriptions})
    return Plan(len(descriptions), images, report.counts(), groups, done, kept, near_duplicates, options.max_similarity)


def _record_id(record: dict[str, Any]) -> str:
    """A logged record's id; KeyError or TypeError when it is not a record (``training.groups.read_log``)."""
    if not isinstance(record["id"], str) or not isinstance(record["conversations"], list):
        raise TypeError("not a record")
    return record["id"]


def run(options: Options, plan: Plan, backend: TextBackend, sleep: Callable[[float], None] = time.sleep) -> Summary:
    """Merge the kept groups (appending each record to the log as it is made), then write the final JSON list;
    ``sleep`` is the wait between retries."""
    done = dict(plan.done)
    requests = len(plan.groups) - plan.near_duplicates  # the groups done before passed the filter then
    summary = Summary(plan=plan, requests=requests, done_before=requests - len(plan.kept))

    def ask(item: tuple[Group, float]) -> str:
        prompt = merge_prompt(item[0].texts, question_for(item[0]))
        return with_retries(partial(backend.complete, prompt), options.retries, options.backoff, sleep)

    with open_log(options.out) as log:

        def keep(item: tuple[Group, float], reply: str) -> None:
            group, similarity = item
            try:
                answer = check_reply(reply, len(group.images))
            except Rejected as bad:
                summary.rejected[bad.reason] += 1
                return
            record = coinstruct_record(group, question_for(group), answer, similarity)
            append_line(log, record)
            done[group.id] = record

        send_all(plan.kept, ask, keep, summary, lambda item: item[0].id, PROGRESS_EVERY)
    records = in_plan_order(done, [group.id for group in plan.groups])
    write_json_list(options.out, records)
    summary.records = len(records)
    return summary


# --------------------------------------------------------------------------------------------------------------------
# Command line


def main(
    argv: Sequence[str] | None = None, backend: TextBackend | None = None, embedder: Embedder | None = None
) -> int:
    """The command line (module docstring); ``backend`` and ``embedder`` replace the ones the options name (tests pass
    fakes). Returns 0, 1 when some requests failed (rerun to resume), 2 on bad input (``training.groups`` exit
    codes)."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--descriptions", type=Path, required=True, help="JSON list or JSONL of single-image records")
    parser.add_argument("--images", type=Path, required=True, help="folder the image paths are relative to")
    add_group_arguments(parser, groups_default=1000)
    parser.add_argument(
        "--max-similarity", type=float, default=0.95, help="drop groups with a description pair this similar or more"
    )
    parser.add_argument(
        "--max-bad-fraction", type=float, default=0.01, help="fraction of unusable input records tolerated"
    )
    parser.add_argument("--embedder", default=DEFAULT_EMBEDDER, help="Hub id of the text embedding model")
    parser.add_argument("--embedder-revision", help="Hub revision of --embedder")
    add_backend_arguments(parser)
    args = parser.parse_args(argv)
    try:
        options = Options.from_arguments(args)
        backend = backend or backend_from_arguments(args)
        embedder = embedder or TransformersEmbedder(options.embedder, options.embedder_revision)
        plan = make_plan(options, embedder)
    except (ValueError, OSError) as err:
        return bad_input(PROG, err)
    summary = run(options, plan, backend)
    print(summary.report(options.out))
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
