"""What the Co-Instruct comparison-data builders share (``training.merge2compare``, ``training.teach2compare``).

Both draw seeded groups of 2–4 images, ask a model one request at a time, log each answer as it arrives and end every
run by writing a JSON list that ``training.data.readers.read_coinstruct(FILE, image_root)`` reads.

Group ids: ``group_id(prefix, images)`` is ``<prefix>-`` + the first ``GROUP_ID_DIGITS`` (16) hex digits of the SHA-1
of the sorted paths joined by newlines, so an image set has one id in any order ("m2c-…", "t2c-…").

Drawing: ``draw_image_sets`` sorts the distinct paths, then draws with ``numpy.random.default_rng(seed)``: a size
from the sizes the pool can fill (probability ∝ its weight), then that many distinct images in random order (the order
they are named in: "the first image", …); a set drawn before, in any order, is skipped. The stream does not depend
on the count, so a larger count with the same seed keeps the smaller count's sets as its first ones.

Files of ``--out X.json``:

- ``X.json.partial.jsonl`` (``partial_path``), the log: one JSON object per line, appended and flushed as each answer
  arrives (``append_line``), kept after the run: it is the resume state. ``read_log`` cuts a torn last line (one
  without a final newline) off the file and keeps the first line of each key, so a rerun skips what is done.
- ``X.json``: the final JSON list, one record per line, rewritten atomically (``X.json.tmp``, then a rename) at the
  end of every run (``write_json_list``).

A record (``conversation_record``) is the LLaVA / Co-Instruct schema plus a ``source`` and the builder's extra keys::

    {"id": "...", "image": [paths relative to the image root, in prompt order],
     "conversations": [{"from": "human", "value": "The first image: <image>\\nThe second image: <image>\\n<question>"},
                       {"from": "gpt", "value": "<answer>"}],
     "source": "merge2compare" | "teach2compare", ...}

Running: ``send_all`` asks for each request in turn; a request that still raises ``BackendError`` after its retries
counts as failed, and ``MAX_CONSECUTIVE_FAILURES`` failures in a row stop the run. ``RunCounts`` holds a run's counts
and prints the common summary lines. Exit codes: ``EXIT_OK`` (0), ``EXIT_FAILED`` (1: some requests failed; rerun the
same command to retry them), ``EXIT_BAD_INPUT`` (2: one line on stderr, ``bad_input``).

Options both command lines have: ``add_group_arguments`` (``--out``, ``--groups``, ``--sizes``, ``--size-weights``,
``--seed``; the backend's ``--retries``/``--backoff`` come from ``training.backends.add_backend_arguments``),
``sizes_and_weights`` parses the comma lists and ``check_common`` checks their ranges (ValueError, one line).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import zlib
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

import numpy as np

from qground.prompts import image_header
from training.backends import BackendError
from training.data.readers import MAX_COMPARISON_IMAGES

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_OK",
    "GROUP_ID_DIGITS",
    "IMAGE_EXTENSIONS",
    "MAX_CONSECUTIVE_FAILURES",
    "Rejected",
    "RunCounts",
    "add_group_arguments",
    "append_line",
    "bad_input",
    "check_common",
    "choose_by_id",
    "conversation_record",
    "draw_image_sets",
    "group_id",
    "in_plan_order",
    "open_log",
    "partial_path",
    "read_log",
    "send_all",
    "sizes_and_weights",
    "write_json_list",
]

GROUP_ID_DIGITS = 16
MAX_CONSECUTIVE_FAILURES = 10
SHOWN_EXAMPLES = 5  # failures listed in the summary
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
# the file extensions of the formats qground.imageio reads (SUPPORTED_FORMATS)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".heic", ".heif")

T = TypeVar("T")


# --------------------------------------------------------------------------------------------------------------------
# Groups


def group_id(prefix: str, images: Sequence[str]) -> str:
    """``<prefix>-`` + ``GROUP_ID_DIGITS`` hex digits of the SHA-1 of the sorted paths: order-free."""
    digest = hashlib.sha1("\n".join(sorted(images)).encode("utf-8")).hexdigest()
    return f"{prefix}-{digest[:GROUP_ID_DIGITS]}"


def choose_by_id(choices: Sequence[T], key: str) -> T:
    """One of ``choices`` picked by a CRC-32 of ``key`` (a group id): stable across runs and image orders."""
    return choices[zlib.crc32(key.encode("utf-8")) % len(choices)]


def draw_image_sets(
    images: Sequence[str],
    count: int,
    sizes: Sequence[int] = (2, 3, 4),
    weights: Sequence[float] | None = None,
    seed: int = 0,
    what: str = "images",
) -> list[tuple[str, ...]]:
    """``count`` distinct image sets (tuples in drawing order) from ``images`` (module docstring).

    ``weights``: one per size (None: equal). Sizes larger than the pool, or of weight 0, are not drawn. ValueError
    (naming the pool as ``what``, e.g. "readable images") when no size can be drawn or fewer than ``count`` distinct
    sets exist.
    """
    pool = sorted(set(images))
    weights = (1.0,) * len(sizes) if weights is None else weights
    if len(weights) != len(sizes):
        raise ValueError(f"one weight per size needed: sizes {list(sizes)}, weights {list(weights)}")
    usable = [(size, weight) for size, weight in zip(sizes, weights) if size <= len(pool) and weight > 0]
    if not usable:
        smallest = min(size for size, weight in zip(sizes, weights) if weight > 0)
        raise ValueError(f"{len(pool)} {what}, too few for a group of {smallest}")
    possible = sum(math.comb(len(pool), size) for size, _ in usable)
    if count > possible:
        usable_sizes = ",".join(str(size) for size, _ in usable)
        raise ValueError(f"{len(pool)} {what} make only {possible} distinct groups of sizes {usable_sizes}")
    probabilities = np.array([weight for _, weight in usable], dtype=float)
    probabilities /= probabilities.sum()
    rng = np.random.default_rng(seed)
    seen: set[frozenset[str]] = set()
    sets: list[tuple[str, ...]] = []
    while len(sets) < count:
        size = usable[rng.choice(len(usable), p=probabilities)][0]
        members = tuple(pool[i] for i in rng.choice(len(pool), size=size, replace=False))
        if frozenset(members) not in seen:
            seen.add(frozenset(members))
            sets.append(members)
    return sets


# --------------------------------------------------------------------------------------------------------------------
# Records and files


def conversation_record(
    record_id: str, images: Sequence[str], question: str, answer: str, source: str, **extra: Any
) -> dict[str, Any]:
    """A single-turn Co-Instruct record (module docstring): the human turn names every image ("The first image:
    <image>\\n…") before ``question``; ``extra`` keys follow ``source`` (the readers ignore them)."""
    slots = "".join(f"{header}<image>\n" for header in image_header(len(images)))
    return {
        "id": record_id,
        "image": list(images),
        "conversations": [{"from": "human", "value": slots + question}, {"from": "gpt", "value": answer}],
        "source": source,
        **extra,
    }


def partial_path(out: Path) -> Path:
    """The resumable log next to the final file: ``out`` + ``.partial.jsonl``."""
    return out.with_name(out.name + ".partial.jsonl")


def read_log(path: Path, key: Callable[[dict[str, Any]], Hashable], builder: str) -> dict[Hashable, dict[str, Any]]:
    """key(entry) → entry for the lines of the log ``path`` ({} when there is none), the first line of each key, in file
    order. A torn last line (no final newline) is cut off the file. ValueError (one line) for a line that is not JSON,
    or not a JSON object ``key`` accepts (``key`` raising KeyError, TypeError or ValueError)."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        path.write_bytes(data)
    entries: dict[Hashable, dict[str, Any]] = {}
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path}: line {number} is not JSON; fix or remove it to resume") from None
        try:
            if not isinstance(entry, dict):
                raise TypeError
            entries.setdefault(key(entry), entry)
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: line {number} is not a {builder} log entry") from None
    return entries


def open_log(out: Path) -> TextIO:
    """The log of ``out`` opened for appending (its folder made if needed)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return partial_path(out).open("a", encoding="utf-8")


def append_line(log: TextIO, entry: dict[str, Any]) -> None:
    """``entry`` as one JSON line at the end of ``log``, flushed (a crash loses at most the line being written)."""
    log.write(json.dumps(entry, ensure_ascii=False) + "\n")
    log.flush()


def in_plan_order(entries: dict[Hashable, dict[str, Any]], plan: Sequence[Hashable]) -> list[dict[str, Any]]:
    """The values of ``entries`` whose key is in ``plan``, in plan order, then the others (earlier runs' plans) in
    their own order."""
    place = {key: index for index, key in enumerate(plan)}
    return [entries[key] for key in sorted(entries, key=lambda key: place.get(key, len(place)))]


def write_json_list(path: Path, records: list[dict[str, Any]]) -> None:
    """``records`` as a JSON list, one record per line, replacing ``path`` atomically (``path`` + ``.tmp``, renamed)."""
    temporary = path.with_name(path.name + ".tmp")
    lines = ",\n".join(json.dumps(record, ensure_ascii=False) for record in records)
    temporary.write_text(f"[\n{lines}\n]\n" if records else "[]\n", encoding="utf-8")
    os.replace(temporary, path)


# --------------------------------------------------------------------------------------------------------------------
# Running


class Rejected(ValueError):
    """A reply (or a part of one) or an input record that cannot be used; ``reason`` is its key in the summary."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass
class RunCounts:
    """A run's counts: ``requests`` planned (``done_before``, found in the log, and the rest), ``sent`` (answered this
    run), ``failed`` ("<request>: <error>", this run), ``records`` (in the final file), ``rejected`` (per reason) and
    whether ``MAX_CONSECUTIVE_FAILURES`` ``stopped`` the run."""

    requests: int = 0
    done_before: int = 0
    sent: int = 0
    failed: list[str] = field(default_factory=list)
    records: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    stopped: bool = False

    def lines(self, out: Path) -> list[str]:
        """The summary lines both builders print after their own."""
        reasons = ", ".join(f"{reason} {count}" for reason, count in self.rejected.most_common())
        lines = [
            f"requests: {self.requests} ({self.done_before} done before, {self.sent} sent, {len(self.failed)} failed)",
            f"records: {self.records} in {out} (log {partial_path(out)})",
            f"rejected: {sum(self.rejected.values())}" + (f" ({reasons})" if reasons else ""),
        ]
        if self.stopped:
            lines.append(f"stopped after {MAX_CONSECUTIVE_FAILURES} failed requests in a row")
        if self.failed:
            lines.append(f"failed: {len(self.failed)}; rerun the same command to retry them and send the rest")
            lines += [f"  {failure}" for failure in self.failed[:SHOWN_EXAMPLES]]
        return lines

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if self.failed else EXIT_OK


def send_all(
    todo: Sequence[T],
    ask: Callable[[T], str],
    keep: Callable[[T, str], None],
    counts: RunCounts,
    name: Callable[[T], str] = str,
    progress_every: int = 100,
) -> None:
    """``keep(item, ask(item))`` for each item of ``todo`` in turn (``ask`` retries; ``keep`` logs the answer). A
    ``BackendError`` from ``ask`` is appended to ``counts.failed`` as "<name(item)>: <error>" and the run goes on, up to
    ``MAX_CONSECUTIVE_FAILURES`` in a row, which set ``counts.stopped`` and return. Progress goes to stderr every
    ``progress_every`` requests; any other exception propagates (the log keeps what was done)."""
    failures_in_a_row = 0
    for index, item in enumerate(todo):
        if index and index % progress_every == 0:
            print(f"{index} of {len(todo)} requests sent, {len(counts.failed)} failed", file=sys.stderr, flush=True)
        try:
            reply = ask(item)
        except BackendError as err:
            counts.failed.append(f"{name(item)}: {err}")
            failures_in_a_row += 1
            if failures_in_a_row == MAX_CONSECUTIVE_FAILURES:
                counts.stopped = True
                return
            continue
        failures_in_a_row = 0
        counts.sent += 1
        keep(item, reply)


def bad_input(prog: str, error: Exception) -> int:
    """Print ``<prog>: error: <error>`` on stderr; ``EXIT_BAD_INPUT``."""
    print(f"{prog}: error: {error}", file=sys.stderr)
    return EXIT_BAD_INPUT


# --------------------------------------------------------------------------------------------------------------------
# Options


def add_group_arguments(parser: argparse.ArgumentParser, groups_default: int | None = None) -> None:
    """``--out``, ``--groups`` (required when ``groups_default`` is None), ``--sizes``, ``--size-weights``, ``--seed``;
    sizes and weights stay text for ``sizes_and_weights``."""
    parser.add_argument(
        "--out", type=Path, required=True, help="X.json, the final JSON list; the log is X.json.partial.jsonl"
    )
    parser.add_argument(
        "--groups",
        type=int,
        required=groups_default is None,
        default=groups_default,
        help="number of image groups" + ("" if groups_default is None else " (default %(default)s)"),
    )
    parser.add_argument("--sizes", default="2,3,4", help="group sizes to draw from (default %(default)s)")
    parser.add_argument("--size-weights", help="relative weight of each size, e.g. 3,1 (default: equal)")
    parser.add_argument("--seed", type=int, default=0, help="grouping seed (default %(default)s)")


def sizes_and_weights(args: argparse.Namespace) -> tuple[tuple[int, ...], tuple[float, ...] | None]:
    """``--sizes`` and ``--size-weights`` (comma-separated) as numbers; ValueError (one line) when they are not."""
    try:
        sizes = tuple(int(size) for size in args.sizes.split(","))
    except ValueError:
        raise ValueError(f"--sizes must be comma-separated integers, got {args.sizes!r}") from None
    if args.size_weights is None:
        return sizes, None
    try:
        return sizes, tuple(float(weight) for weight in args.size_weights.split(","))
    except ValueError:
        raise ValueError(f"--size-weights must be comma-separated numbers, got {args.size_weights!r}") from None


def check_common(
    out: Path,
    groups: int,
    sizes: Sequence[int],
    weights: Sequence[float] | None,
    retries: int,
    backoff: float,
) -> None:
    """ValueError (one line) when an option both builders have is out of range."""
    if out.suffix != ".json" or out.is_dir():
        raise ValueError(f"--out must be a file name ending in .json (the log goes next to it), got {out}")
    if groups < 1:
        raise ValueError(f"--groups must be at least 1, got {groups}")
    if not sizes or len(set(sizes)) != len(sizes) or any(not 2 <= size <= MAX_COMPARISON_IMAGES for size in sizes):
        listed = ",".join(map(str, sizes))
        raise ValueError(f"--sizes must be distinct group sizes from 2 to {MAX_COMPARISON_IMAGES}, got {listed}")
    if weights is not None:
        listed = ",".join(f"{weight:g}" for weight in weights)
        if len(weights) != len(sizes):
            raise ValueError(f"--size-weights needs one weight per size {','.join(map(str, sizes))}, got {listed}")
        if any(weight < 0 for weight in weights) or sum(weights) <= 0:
            raise ValueError(f"--size-weights must be at least 0 with a positive sum, got {listed}")
    if retries < 1:
        raise ValueError(f"--retries must be at least 1, got {retries}")
    if backoff < 0:
        raise ValueError(f"--backoff must not be negative, got {backoff}")
