"""Load test of the app: concurrent gradio_client users on loopback, checked for errors, cross-talk and temp space.

``python -m bench.load [--users 8] [--requests 25] [--queue-size N] [--deadline S] [--fallback-steps N]
[--cache-age S] [--quick | --soak]``
(``--quick``: 2 users × 2 requests, the same steps in seconds; ``--soak``: a long run, 1,000 requests in all unless
``--requests`` says otherwise, with the app's temp-file age shortened to ``--cache-age`` 60 s so it acts within the run)

1. Engine: the shipped ``qground-nano`` (``qground.checkpoint.load_model``), else a ``qground-tiny`` overfit to two of
   the users' photos (it then answers and draws masks like a trained model); the summary says which.
2. Photos: each user gets two photos with distinct known distortions: images of ``runs/nano/data/eval`` (its
   ``meta.json`` lists what was applied) when present, else made with ``training.data.synth.generate``. /ground and
   /describe send the first, /compare both. Under load every request uploads its own copy of the photos with a
   request tag in a PNG text chunk / JPEG comment (same pixels, so the same answers): Gradio's cache is
   content-addressed, and distinct bytes are what a public Space's distinct users send.
3. The app (``app.build_demo``) listens on 127.0.0.1 only; an audit hook refuses any other connection. Its queue is
   bounded (``--queue-size``, default users + 2). Its temp space is its own: ``GRADIO_TEMP_DIR`` is a fresh folder,
   and the ``Scratch`` folder the app makes at build time lands in a fresh folder too (``tempfile.tempdir`` points
   there while ``build_demo`` runs). ``--cache-age S`` is ``build_demo``'s ``temp_age_s``: files older than S go from
   the Scratch root at every new file and from Gradio's temp dir at most every ``SWEEP_EVERY_S`` (default age: the
   app's ``TEMP_AGE_S``; the app sweeps Gradio's dir itself: Gradio's own cleanup stops under load).
4. Solo references: one client asks every endpoint for every user, one request at a time, before the load.
5. Load: ``--users`` processes, each with its own ``gradio_client.Client``, send ``--requests`` requests cycling over
   /ground, /describe, /compare (bounded in count, and in time by ``--deadline``). The users run in processes of
   their own (spawned), so the RSS measured is the server's alone: in one process, the clients' own growth was
   counted as the app's. Every answer must equal the user's
   own solo reference: for /ground the overlay size, mask labels, per-class area % and score, every mask PNG, the
   answer; an answer equal to another user's reference is cross-talk.
6. Temp space: bytes on disk (allocated blocks of files and folders, as ``du``) and entries (files + folders) of
   Gradio's temp dir and of the Scratch root, sampled every ``DISK_EVERY_S`` in a thread from the start to the end
   of the load: before, after, peak, growth per 100 requests (over the load, and "late": after its first window).
   Bound: a file lives at most its area's cleanup age + cleanup period ("window" W), so after any number N of
   requests an area holds at most what the requests of one window left, plus the ones in flight: before +
   ``DISK_MARGIN`` × (per request) × (most requests finished in any W seconds + users), per request measured over the
   first window, before any cleanup could act; on bytes and on entries both (folders left behind count). The bound
   does not grow with N; it is tested when the load outlasts W, else reported as untested with what W implies at the
   rate seen.
7. Queue probe: ``--queue-size`` + ``--users`` + 2 requests at once; reports whether the ones beyond the bound were
   rejected ("Queue is full") or waited, and that the next request succeeds.

Prints a table (requests, errors, wrong answers, cross-talk, p50/p95 latency per endpoint), peak RSS, RSS growth over
the last 100 requests (target < 10 %; with ``--soak`` also the mean RSS of the first vs the last 100 requests, same
target, and the mean RSS of each tenth of the load), and the temp space table. Exit code 0 when there are no errors,
no wrong answers, every request ran, RSS grew < 10 % and no tested temp-space bound was exceeded; a FAIL line says
which of these failed, a PASS line which temp areas went untested.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import math
import multiprocessing
import os
import queue
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from bench.app_overhead import gradio_temp_dir

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ENDPOINTS = ("/ground", "/describe", "/compare")
EVAL_DATA = Path("runs/nano/data/eval")
RSS_WINDOW = 100  # requests over which RSS growth is measured
QUEUE_FULL = "Queue is full"
DISK_EVERY_S = 0.5  # seconds between temp-space samples
DISK_MARGIN = 1.5  # slack of the temp-space bound, for the mix of endpoints and the sampling
SOAK_REQUESTS = 1000  # requests in all of a --soak run unless --requests is given
SOAK_CACHE_AGE_S = 60  # the app's temp-file age in a --soak run unless --cache-age is given
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class User:
    """One simulated user's uploads: ``photos[0]`` for /ground and /describe, both for /compare; ``distortions``
    names what was applied to each (known from how they were made)."""

    photos: tuple[str, str]
    distortions: tuple[str, str]


@dataclass(frozen=True)
class Record:
    """One request under load: who sent it, where, how long it took (s), what went wrong ("" = nothing), the
    server's RSS (bytes) when the record reached it (0 until then), and when the request finished (``time.monotonic``,
    system-wide on Linux, so a user process's clock)."""

    user: int
    endpoint: str
    seconds: float
    problem: str
    rss: int
    at: float = 0.0


# -- temp space --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Usage:
    """Temp space: bytes on disk (allocated blocks of files and folders, as ``du``), files and folders."""

    bytes: int = 0
    files: int = 0
    folders: int = 0

    @property
    def entries(self) -> int:
        return self.files + self.folders

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.bytes + other.bytes, self.files + other.files, self.folders + other.folders)


def usage(roots: Iterable[Path]) -> Usage:
    """What is under ``roots`` (the roots themselves left out); anything removed while it is walked is skipped."""
    total = files = folders = 0
    stack = [str(root) for root in roots]
    while stack:
        try:
            with os.scandir(stack.pop()) as listing:
                entries = list(listing)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            try:
                stat = entry.stat(follow_symlinks=False)
                is_dir = entry.is_dir(follow_symlinks=False)
            except FileNotFoundError:
                continue
            total += stat.st_blocks * 512
            if is_dir:
                folders += 1
                stack.append(entry.path)
            else:
                files += 1
    return Usage(total, files, folders)


@dataclass(frozen=True)
class TempArea:
    """Folders the app writes temp files to, and their cleanup: files older than ``age_s`` are removed every
    ``every_s`` seconds (None: whenever the app makes a new file), so none stays longer than ``window_s``; ``age_s``
    None: never cleaned while the app runs."""

    name: str
    roots: tuple[Path, ...]
    age_s: float | None
    every_s: float | None = None

    @property
    def window_s(self) -> float | None:
        return None if self.age_s is None else self.age_s + (self.every_s or 0.0)

    def cleanup(self) -> str:
        if self.age_s is None:
            return "never"
        when = f"every {self.every_s:g} s" if self.every_s else "each new file"
        return f"{when}, age > {self.age_s:g} s"


@dataclass(frozen=True)
class Sample:
    """The temp space of every area (in ``Report.areas`` order) at ``t`` (``time.monotonic``), when ``requests``
    requests of the load had finished."""

    t: float
    requests: int
    areas: tuple[Usage, ...]


class DiskMonitor:
    """The temp space of ``areas``, sampled now, every ``every_s`` seconds in a background thread, and at ``stop``;
    each sample with the number of requests finished then (``done()``)."""

    def __init__(self, areas: Sequence[TempArea], done: Callable[[], int], every_s: float = DISK_EVERY_S) -> None:
        self.areas, self.done = tuple(areas), done
        self.samples: list[Sample] = []
        self.sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def sample(self) -> None:
        t, requests = time.monotonic(), self.done()
        self.samples.append(Sample(t, requests, tuple(usage(area.roots) for area in self.areas)))

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.sample()

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._thread.join()
        self.sample()
        return self.samples


@dataclass(frozen=True)
class DiskCheck:
    """One temp area over the load: usage before and after, peak bytes and entries, growth per 100 requests (bytes,
    entries) over the load and after its first cleanup window (None when the load was not longer); the bound on bytes
    and entries and whether the peaks stayed within it (None: untested), and a note on the bound."""

    area: TempArea
    before: Usage
    after: Usage
    peak_bytes: int
    peak_entries: int
    per_100: tuple[float, float]
    late_per_100: tuple[float, float] | None
    bound: tuple[int, int] | None
    held: bool | None
    note: str


def per_100(start: Usage, end: Usage, requests: int) -> tuple[float, float]:
    """Growth of (bytes, entries) from ``start`` to ``end`` per 100 requests."""
    n = max(requests, 1)
    return 100 * (end.bytes - start.bytes) / n, 100 * (end.entries - start.entries) / n


def most_within(times: Sequence[float], window_s: float) -> int:
    """The most of the sorted ``times`` that fall within one interval (t - ``window_s``, t]."""
    best = first = 0
    for last, t in enumerate(times):
        while t - times[first] >= window_s:
            first += 1
        best = max(best, last - first + 1)
    return best


def check_area(index: int, area: TempArea, samples: Sequence[Sample], finished: Sequence[float], users: int):
    """The ``DiskCheck`` of ``area`` (``index`` in the samples) over a load whose requests finished at ``finished``
    (sorted ``time.monotonic``). A file lives at most ``area.window_s`` (W), so at any time the area holds at most the
    files of the requests of the last W seconds and of those in flight: the bound is before + ``DISK_MARGIN`` × (bytes
    or entries per request) × (most requests finished in W seconds + ``users``), per request taken as the highest
    growth per request seen in the first W seconds (before any cleanup could act), from samples after one full cycle
    of endpoints per user. Tested when the load lasted longer than W."""
    series = [s.areas[index] for s in samples]
    start, load_s, n = samples[0].t, samples[-1].t - samples[0].t, len(finished)
    before, after = series[0], series[-1]
    peak_bytes, peak_entries = max(u.bytes for u in series), max(u.entries for u in series)
    overall, window = per_100(before, after, n), area.window_s
    common = (area, before, after, peak_bytes, peak_entries, overall)
    if window is None:
        return DiskCheck(*common, None, None, None, "never cleaned while the app runs: grows by its per-100 figure")
    if load_s <= window or not n:
        rate = n / load_s if load_s > 0 else 0.0
        kept = before.bytes + max(0.0, overall[0] / 100) * (rate * window + users)
        note = (
            f"untested: the load ({load_s:.0f} s) is shorter than the cleanup window ({window:g} s); at this run's "
            f"{rate:.2f} requests/s, one window keeps ≈ {mib(kept)}"
        )
        return DiskCheck(*common, None, None, None, note)
    early = [(s.requests, u) for s, u in zip(samples, series) if s.t - start <= window and s.requests > 0]
    full = [(k, u) for k, u in early if k >= len(ENDPOINTS) * users] or early
    if not full:
        return DiskCheck(*common, None, None, None, f"untested: no request finished in the first {window:g} s")
    per_bytes = max(0.0, max((u.bytes - before.bytes) / k for k, u in full))
    per_entries = max(0.0, max((u.entries - before.entries) / k for k, u in full))
    kept = most_within(finished, window) + users
    bound = (
        before.bytes + math.ceil(DISK_MARGIN * per_bytes * kept),
        before.entries + math.ceil(DISK_MARGIN * per_entries * kept),
    )
    late = next((k, s.requests) for k, s in enumerate(samples) if s.t - start > window)
    late_growth = per_100(series[late[0]], after, n - late[1]) if n > late[1] else None
    note = (
        f"bound = before + {DISK_MARGIN:g} × ({mib(per_bytes)}, {per_entries:.1f} entries per request) × "
        f"({kept - users} requests in the busiest {window:g} s + {users} in flight)"
    )
    held = peak_bytes <= bound[0] and peak_entries <= bound[1]
    over = 0 if peak_bytes > bound[0] else 1  # the figure that broke the bound, when one did
    if not held and late_growth is not None and overall[over] > 0:
        note += (
            f"; after the first window its {('bytes', 'entries')[over]} still grew "
            f"{late_growth[over] / overall[over]:.0%} as fast as over the whole load: the cleanup did not keep up or "
            "did not run"
        )
    return DiskCheck(*common, late_growth, bound, held, note)


@dataclass
class Report:
    engine: str
    users: int
    planned: int
    records: list[Record] = field(default_factory=list)
    references: list[dict[str, tuple]] = field(default_factory=list)  # per user: endpoint → solo fingerprint
    distinct: dict[str, int] = field(default_factory=dict)  # endpoint → distinct solo references among users
    peak_rss: int = 0
    queue: str = ""
    soak: bool = False
    areas: tuple[TempArea, ...] = ()
    samples: list[Sample] = field(default_factory=list)  # temp space during the load (first: its start, last: end)
    rss_before: int = 0  # process RSS at the start of the load

    def problems(self) -> list[str]:
        return [r.problem for r in self.records if r.problem]

    def cross_talk(self) -> list[str]:
        return [p for p in self.problems() if p.startswith("cross-talk")]

    def rss_growth(self) -> float | None:
        """RSS growth over the last ``RSS_WINDOW`` requests (fraction), None with fewer requests."""
        rss = [r.rss for r in self.records]
        return rss[-1] / rss[-RSS_WINDOW - 1] - 1 if len(rss) > RSS_WINDOW else None

    def rss_windows(self) -> tuple[float, float] | None:
        """Mean RSS (bytes) over the first and over the last ``RSS_WINDOW`` requests; None with fewer than two
        windows of requests."""
        rss = [r.rss for r in self.records]
        if len(rss) < 2 * RSS_WINDOW:
            return None
        return float(np.mean(rss[:RSS_WINDOW])), float(np.mean(rss[-RSS_WINDOW:]))

    def soak_rss_growth(self) -> float | None:
        """RSS growth from the first to the last ``RSS_WINDOW`` requests (fraction of the means), None when shorter."""
        windows = self.rss_windows()
        return windows[1] / windows[0] - 1 if windows else None

    def rss_trace(self, parts: int = 10) -> list[float]:
        """Mean RSS (bytes) over each of ``parts`` equal shares of the requests, in the order they finished."""
        rss = [r.rss for r in self.records]
        return [float(np.mean(share)) for share in np.array_split(rss, parts) if len(share)]

    def load_seconds(self) -> float:
        return self.samples[-1].t - self.samples[0].t if self.samples else 0.0

    def disk_checks(self) -> list[DiskCheck]:
        """One ``DiskCheck`` per temp area (none without samples)."""
        if not self.samples:
            return []
        finished = sorted(r.at for r in self.records)
        return [check_area(k, area, self.samples, finished, self.users) for k, area in enumerate(self.areas)]

    def failures(self) -> list[str]:
        """Why the run fails, in words (empty: it passes): requests with problems or not run, RSS growth ≥ 10 % over
        the last ``RSS_WINDOW`` requests (and, soaking, from the first to the last window, which needs two windows of
        requests), a tested temp-space bound exceeded."""
        out = []
        if self.problems():
            out.append(f"{len(self.problems())} requests with errors or wrong answers")
        if len(self.records) != self.planned:
            out.append(f"{len(self.records)} of {self.planned} requests ran")
        growth = self.rss_growth()
        if growth is not None and growth >= 0.10:
            out.append(f"RSS grew {growth * 100:.1f} % over the last {RSS_WINDOW} requests")
        if self.soak:
            soak_growth = self.soak_rss_growth()
            if soak_growth is None:
                out.append(f"fewer than {2 * RSS_WINDOW} requests: no first and last RSS windows to compare")
            elif soak_growth >= 0.10:
                out.append(f"RSS grew {soak_growth * 100:.1f} % from the first to the last {RSS_WINDOW} requests")
        out += [f"{c.area.name}: temp space above its bound" for c in self.disk_checks() if c.held is False]
        return out

    def passed(self) -> bool:
        return not self.failures()


# -- what each endpoint answers ----------------------------------------------------------------------------------------
def call(client, endpoint: str, user: User):
    """One request of ``endpoint`` with the user's photos and blank or preset questions (greedy decoding); one-image
    requests at strictness 0 (as trained), so each user's photo gets its own masks and words and cross-talk between
    users stays detectable."""
    from gradio_client import handle_file

    if endpoint == "/compare":
        return client.predict([handle_file(p) for p in user.photos], "Which image is sharper?", api_name=endpoint)
    return client.predict(handle_file(user.photos[0]), "", 0.0, api_name=endpoint)


def masks_digest(archive: str | None) -> str:
    """SHA-256 over the mask PNGs of a /ground zip (``result.json`` is left out: it holds timings)."""
    digest = hashlib.sha256()
    if archive:
        with zipfile.ZipFile(archive) as zf:
            for name in sorted(n for n in zf.namelist() if n.endswith(".png")):
                digest.update(name.encode() + zf.read(name))
    return digest.hexdigest()


def fingerprint(endpoint: str, output) -> tuple:
    """What identifies the photo an answer is about: for /ground the overlay size, mask labels, table rows (class,
    area %, score), mask PNGs and answer; for /describe the answer; for /compare the answer and ranking."""
    if endpoint == "/describe":
        return (output,)
    if endpoint == "/compare":
        answer, ranking, _ = output
        return answer, tuple(map(tuple, ranking["data"]))
    annotated, answer, table, archive = output
    with Image.open(annotated["image"]) as overlay:
        size = overlay.size
    labels = tuple(a["label"] for a in annotated["annotations"])
    return size, labels, tuple(map(tuple, table["data"])), masks_digest(archive), answer


def verdict(references: list[dict[str, tuple]], user: int, endpoint: str, got: tuple) -> str:
    """Empty when ``got`` is the user's own solo reference; else "cross-talk: …" (another user's) or "wrong: …"."""
    if got == references[user][endpoint]:
        return ""
    others = [k for k, ref in enumerate(references) if k != user and ref[endpoint] == got]
    if others:
        return f"cross-talk: user {user} got user {others[0]}'s {endpoint} answer"
    return f"wrong: user {user}'s {endpoint} answer differs from its solo reference"


# -- photos and engine -------------------------------------------------------------------------------------------------
def eval_candidates() -> list[tuple[str, dict[str, np.ndarray]]]:
    """(image path, masks) of the nano evaluation split, in order."""
    from qground.taxonomy import get

    meta = json.loads((EVAL_DATA / "meta.json").read_text())
    out = []
    for item in meta["images"]:
        gt = EVAL_DATA / "gt" / item["id"]
        masks = {name: np.asarray(Image.open(gt / f"{get(name).key}.png")) > 0 for name in item["classes"]}
        out.append((str(EVAL_DATA / item["image"]), masks))
    return out


def synth_candidates(folder: Path, count: int) -> list[tuple[str, dict[str, np.ndarray]]]:
    """``count`` images of the synthetic eval split, written to ``folder``."""
    from training.data.synth import generate

    out = []
    for index in range(count):
        g = generate(index, "eval", 0)
        path = folder / f"synth_{index:03d}.png"
        Image.fromarray(g.image).save(path)
        out.append((str(path), g.masks))
    return out


def make_users(count: int, folder: Path) -> tuple[list[User], list[dict[str, np.ndarray]], str]:
    """``count`` users whose 2 × ``count`` photos all have different (non-empty) sets of distortions; also the masks of
    every photo in order, and where the photos come from."""
    if (EVAL_DATA / "meta.json").exists():
        candidates, source = eval_candidates(), f"{EVAL_DATA} (meta.json)"
    else:
        candidates, source = synth_candidates(folder, 12 * count), "training.data.synth.generate"
    chosen: dict[tuple[str, ...], tuple[str, dict[str, np.ndarray]]] = {}
    for path, masks in candidates:
        if masks and tuple(masks) not in chosen:
            chosen[tuple(masks)] = (path, masks)
    picked = list(chosen.values())[: 2 * count]
    if len(picked) < 2 * count:
        raise SystemExit(f"only {len(picked)} photos with distinct distortions in {source}; use fewer --users")
    users = [
        User((picked[2 * k][0], picked[2 * k + 1][0]), (" + ".join(picked[2 * k][1]), " + ".join(picked[2 * k + 1][1])))
        for k in range(count)
    ]
    return users, [masks for _, masks in picked], source


def tagged(data: bytes, tag: bytes) -> bytes:
    """``data`` with ``tag`` where image readers skip it: a ``tEXt`` chunk after a PNG's IHDR, a comment segment after
    a JPEG's APPn segments (EXIF stays first); other data unchanged. The pixels stay the same, the bytes differ."""
    if data.startswith(PNG_SIGNATURE):
        at = len(PNG_SIGNATURE) + 12 + int.from_bytes(data[8:12], "big")  # IHDR: length, type, data, CRC
        body = b"tEXt" + b"bench\0" + tag
        chunk = (len(body) - 4).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")
        return data[:at] + chunk + data[at:]
    if data.startswith(b"\xff\xd8"):
        at = 2
        while data[at] == 0xFF and 0xE0 <= data[at + 1] <= 0xEF:
            at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
        comment = b"bench " + tag
        return data[:at] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[at:]
    return data


def distinct_copy(path: str, folder: Path, tag: str) -> str:
    """``path`` copied into ``folder`` under its own name, ``tagged`` with ``tag``; returns the copy's path."""
    target = folder / Path(path).name
    target.write_bytes(tagged(Path(path).read_bytes(), tag.encode()))
    return str(target)


def overfit_tiny(photos: list[tuple[str, dict[str, np.ndarray]]], steps: int):
    """``qground-tiny`` overfit to ground ``photos`` (as tests/conftest.py does), so it emits answers and masks."""
    import torch

    from qground.builder import build_from_registry
    from qground.inference import GROUNDING_QUESTION, QGroundEngine
    from qground.processor import QGroundProcessor
    from qground.prompts import Turn, grounding_answer
    from qground.tokenizer import seg_tokens

    torch.manual_seed(0)
    model, tokenizer = build_from_registry("qground-tiny")
    processor = QGroundProcessor(tokenizer, model.config)
    group = seg_tokens(model.config).group_text()
    batch = processor.collate(
        [
            processor([path], [Turn(GROUNDING_QUESTION, grounding_answer(list(m), group))], masks=list(m.values()))
            for path, m in photos
        ]
    )
    params = [p for n, p in model.named_parameters() if not n.startswith("llava.model.vision_tower")]
    optimizer = torch.optim.Adam(params, lr=3e-3)
    keys = ("input_ids", "pixel_values", "attention_mask", "labels", "masks", "image_sizes")
    model.train()
    for _ in range(steps):
        loss = model(**{k: batch[k] for k in keys})["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return QGroundEngine(model.eval(), processor, name="qground-tiny-overfit")


def pick_engine(users: list[User], masks: list[dict[str, np.ndarray]], steps: int):
    """``(engine, what it is)``: qground-nano, else a tiny model overfit to the first two users' /ground photos."""
    from qground.checkpoint import CheckpointError
    from qground.service import load_engine

    try:
        return load_engine("qground-nano"), "qground-nano (assets/qground-nano)"
    except CheckpointError as err:
        print(f"qground-nano unavailable: {err}", flush=True)
    photos = [(users[k].photos[0], masks[2 * k]) for k in range(min(2, len(users)))]
    print(f"falling back to qground-tiny overfit to {len(photos)} photos for {steps} steps…", flush=True)
    t0 = time.perf_counter()
    engine = overfit_tiny(photos, steps)
    return (
        engine,
        f"qground-tiny overfit to {len(photos)} users' photos ({steps} steps, {time.perf_counter() - t0:.0f} s)",
    )


# -- the load ----------------------------------------------------------------------------------------------------------
class RssMonitor:
    """This process's RSS now (the server's: users run in processes of their own), and its peak sampled every
    ``every_s`` seconds in a background thread."""

    def __init__(self, every_s: float = 0.05) -> None:
        self.process = psutil.Process()
        self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(every_s,), daemon=True)
        self._thread.start()

    def now(self) -> int:
        return self.process.memory_info().rss

    def _sample(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.peak = max(self.peak, self.now())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.now())


def client_for(url: str, folder: Path):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=str(folder))


def solo_references(url: str, users: list[User], folder: Path) -> list[dict[str, tuple]]:
    """Every user's answer from every endpoint, asked one at a time by a single client before the load."""
    client = client_for(url, folder)
    return [{e: fingerprint(e, call(client, e, user)) for e in ENDPOINTS} for user in users]


def user_loop(
    url: str,
    user: int,
    users: list[User],
    references: list[dict[str, tuple]],
    requests: int,
    deadline: float,
    folder: Path,
    sink: Callable[[Record], None],
) -> None:
    """One user's requests, cycling over the endpoints from a user-dependent start, until done or past ``deadline``
    (time.monotonic). Each request uploads its own ``distinct_copy`` of the user's photos."""
    client = client_for(url, folder / f"user{user}")
    uploads = folder / "uploads" / f"user{user}"
    uploads.mkdir(parents=True, exist_ok=True)
    for i in range(requests):
        if time.monotonic() > deadline:
            return
        endpoint = ENDPOINTS[(user + i) % len(ENDPOINTS)]
        photos = tuple(distinct_copy(p, uploads, f"user {user} request {i}") for p in users[user].photos)
        t0 = time.perf_counter()
        try:
            output = call(client, endpoint, dataclasses.replace(users[user], photos=photos))
        except Exception as err:  # any failure of a request is a result of the load test
            seconds = time.perf_counter() - t0
            sink(Record(user, endpoint, seconds, f"error: {endpoint}: {err!r}", 0, time.monotonic()))
            continue
        seconds = time.perf_counter() - t0
        problem = verdict(references, user, endpoint, fingerprint(endpoint, output))
        sink(Record(user, endpoint, seconds, problem, 0, time.monotonic()))


def user_process(url: str, user: int, users: list[User], references, requests: int, deadline: float, folder, out):
    """``user_loop`` in a spawned process (loopback only here too), each ``Record`` put on the queue ``out``."""
    with guarded():
        user_loop(url, user, users, references, requests, deadline, folder, out.put)


def run_users(url: str, users: list[User], references, requests: int, deadline: float, folder, sink, rss) -> None:
    """Every user's ``user_process`` at once; their records go to ``sink`` stamped with the server's RSS
    (``rss.now()``) as they arrive. A user process that fails (it could not even connect) fails the run."""
    context = multiprocessing.get_context("spawn")
    records = context.Queue()
    procs = [
        context.Process(target=user_process, args=(url, k, users, references, requests, deadline, folder, records))
        for k in range(len(users))
    ]
    for proc in procs:
        proc.start()
    while any(proc.is_alive() for proc in procs) or not records.empty():
        try:
            record = records.get(timeout=0.2)
        except queue.Empty:
            continue
        sink(dataclasses.replace(record, rss=rss.now()))
    failed = {k: proc.exitcode for k, proc in enumerate(procs) if proc.exitcode}
    if failed:
        raise RuntimeError(f"user processes failed (user: exit code): {failed}")


def probe_queue(url: str, user: User, size: int, extra: int, folder: Path) -> str:
    """Send ``size + extra`` /describe requests at once; how the ones beyond the queue bound were handled, and whether
    the next request succeeds."""
    from gradio_client import handle_file

    client = client_for(url, folder)
    jobs = [client.submit(handle_file(user.photos[0]), "", api_name="/describe") for _ in range(size + extra)]
    rejected = completed = 0
    for job in jobs:
        try:
            job.result(timeout=600)
            completed += 1
        except Exception as err:  # gradio_client raises a plain QueueError for a full queue
            if QUEUE_FULL not in str(err):
                raise
            rejected += 1
    try:
        call(client, "/describe", user)
        after = "the next request succeeded"
    except Exception as err:  # reported, not raised: the summary shows it
        after = f"the next request FAILED: {err!r}"
    how = f"rejected at once with {QUEUE_FULL!r}" if rejected else "none rejected: all waited"
    return f"max_size {size}: {size + extra} at once → {completed} completed, {rejected} {how}; {after}"


def build_app(engine, folder: Path, cache_age_s: float | None = None):
    """``app.build_demo(engine, temp_age_s=cache_age_s)`` (call it with GRADIO_TEMP_DIR set) with ``tempfile.tempdir``
    pointing at a fresh ``folder / "app-tmp"`` meanwhile, so the Scratch root it makes lands there. Returns the demo
    and its temp areas: Gradio's temp dir and the Scratch roots, each with the app's cleanup (files older than the age
    go: from Scratch at every new file, from Gradio's dir at most every ``SWEEP_EVERY_S``)."""
    from qground.app import build_demo
    from qground.service import SWEEP_EVERY_S, TEMP_AGE_S

    private = folder / "app-tmp"
    private.mkdir(parents=True)
    before = tempfile.tempdir
    tempfile.tempdir = str(private)
    try:
        demo = build_demo(engine, temp_age_s=cache_age_s)
    finally:
        tempfile.tempdir = before
    age_s = cache_age_s or TEMP_AGE_S
    areas = (
        TempArea("Gradio temp", (Path(os.environ["GRADIO_TEMP_DIR"]),), age_s, SWEEP_EVERY_S),
        TempArea("Scratch", tuple(sorted(private.glob("qground-*"))), age_s),
    )
    return demo, areas


def run(
    engine,
    engine_label: str,
    users: list[User],
    requests: int,
    queue_size: int,
    deadline_s: float,
    folder: Path,
    cache_age_s: float | None = None,
    soak: bool = False,
):
    """Serve ``engine`` on loopback with its own temp folders (``build_app``; ``cache_age_s``: Gradio's cache age),
    take the solo references, run the load while sampling the temp space, probe the queue; returns the Report
    (``soak``: judged by the soak's RSS bound too)."""
    report = Report(engine_label, len(users), len(users) * requests, soak=soak)
    with gradio_temp_dir(folder / "gradio-temp"):
        demo, report.areas = build_app(engine, folder, cache_age_s)
        demo = demo.queue(default_concurrency_limit=1, max_size=queue_size)
        from qground.app import launch_options

        _, url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, **launch_options())
        rss = RssMonitor()
        lock = threading.Lock()

        def sink(record: Record) -> None:
            with lock:
                report.records.append(record)

        try:
            report.references = references = solo_references(url, users, folder / "solo")
            report.distinct = {e: len({ref[e] for ref in references}) for e in ENDPOINTS}
            report.rss_before = rss.now()
            disk = DiskMonitor(report.areas, lambda: len(report.records))
            try:
                deadline = time.monotonic() + deadline_s
                run_users(url, users, references, requests, deadline, folder, sink, rss)
            finally:
                report.samples = disk.stop()
            report.queue = probe_queue(url, users[0], queue_size, len(users) + 2, folder / "probe")
        finally:
            report.peak_rss = rss.stop()
            demo.close()
    return report


# -- output ------------------------------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def table(report: Report) -> str:
    rows = [f"{'endpoint':<10} {'requests':>8} {'errors':>6} {'wrong':>5} {'x-talk':>6} {'p50 s':>7} {'p95 s':>7}"]
    for endpoint in (*ENDPOINTS, "all"):
        records = [r for r in report.records if endpoint in ("all", r.endpoint)]
        seconds = [r.seconds for r in records]
        errors = sum(r.problem.startswith("error") for r in records)
        wrong = sum(r.problem.startswith(("wrong", "cross-talk")) for r in records)
        talk = sum(r.problem.startswith("cross-talk") for r in records)
        rows.append(
            f"{endpoint:<10} {len(records):>8} {errors:>6} {wrong:>5} {talk:>6} "
            f"{percentile(seconds, 50):>7.2f} {percentile(seconds, 95):>7.2f}"
        )
    return "\n".join(rows)


def mib(size: float) -> str:
    return f"{size / 2**20:.2f} MiB"


def signed_mib(size: float) -> str:
    return f"{size / 2**20:+.2f} MiB"


def disk_table(report: Report) -> str:
    """The temp space of every area and in all over the load: bytes on disk and entries (files + folders) before,
    after, at the peak, growth per 100 requests (over the load, and after the first cleanup window), the bound and
    whether it held; then each area's note."""
    checks = report.disk_checks()
    if not checks:
        return "temp space: not measured"
    n, load_s = len(report.records), report.load_seconds()
    header = (
        f"{'temp space':<12} {'cleanup':<27} {'':<7} {'before':>10} {'after':>10} {'peak':>10} {'per 100 req':>12} "
        f"{'late /100':>12} {'bound':>10}  held"
    )
    rows = [f"temp space during the load: {n} requests in {load_s:.0f} s (sampled every {DISK_EVERY_S:g} s)", header]
    for check in checks:
        late = check.late_per_100
        held = {True: "yes", False: "NO", None: "untested"}[check.held]
        rows.append(
            f"{check.area.name:<12} {check.area.cleanup():<27} {'bytes':<7} {mib(check.before.bytes):>10} "
            f"{mib(check.after.bytes):>10} {mib(check.peak_bytes):>10} {signed_mib(check.per_100[0]):>12} "
            f"{signed_mib(late[0]) if late else '—':>12} {mib(check.bound[0]) if check.bound else '—':>10}  {held}"
        )
        rows.append(
            f"{'':<12} {'':<27} {'entries':<7} {check.before.entries:>10} {check.after.entries:>10} "
            f"{check.peak_entries:>10} {check.per_100[1]:>+12.1f} {f'{late[1]:+.1f}' if late else '—':>12} "
            f"{check.bound[1] if check.bound else '—':>10}"
        )
    totals = [sum((s.areas[k] for k in range(len(checks))), Usage()) for s in report.samples]
    growth = per_100(totals[0], totals[-1], n)
    rows.append(
        f"{'all':<12} {'':<27} {'bytes':<7} {mib(totals[0].bytes):>10} {mib(totals[-1].bytes):>10} "
        f"{mib(max(u.bytes for u in totals)):>10} {signed_mib(growth[0]):>12}"
    )
    rows.append(
        f"{'':<12} {'':<27} {'entries':<7} {totals[0].entries:>10} {totals[-1].entries:>10} "
        f"{max(u.entries for u in totals):>10} {growth[1]:>+12.1f}"
    )
    for check in checks:
        after = check.after
        roots = "no folder found" if not check.area.roots else f"{after.files} files in {after.folders} folders after"
        rows.append(f"  {check.area.name} ({roots}): {check.note}")
    return "\n".join(rows)


def summary(report: Report, users: list[User], photos_from: str) -> str:
    growth = report.rss_growth()
    growth_text = (
        f"{growth * 100:+.1f} % (target < 10 %)" if growth is not None else f"n/a (< {RSS_WINDOW + 1} requests)"
    )
    windows, soak_growth = report.rss_windows(), report.soak_rss_growth()
    soak_text = (
        f"RSS before the load {report.rss_before / 2**20:.0f} MiB; mean over the first {RSS_WINDOW} requests "
        f"{windows[0] / 2**20:.0f} MiB, over the last {RSS_WINDOW} {windows[1] / 2**20:.0f} MiB: "
        f"{soak_growth * 100:+.1f} % (target < 10 %)"
        if windows and soak_growth is not None
        else f"RSS first vs last {RSS_WINDOW} requests: n/a (< {2 * RSS_WINDOW} requests)"
    )
    trace = " ".join(f"{rss / 2**20:.0f}" for rss in report.rss_trace())
    untested = [c.area.name for c in report.disk_checks() if c.held is None]
    failures = report.failures()
    verdict_text = f"FAIL: {'; '.join(failures)}" if failures else "PASS"
    if untested:
        verdict_text += f" (temp-space bound untested for: {', '.join(untested)})"
    distinct = ", ".join(f"{e} {n}/{report.users}" for e, n in report.distinct.items())
    lines = [
        f"engine: {report.engine}",
        f"photos: {photos_from}",
        *(
            f"  user {k}: {Path(u.photos[0]).name} ({u.distortions[0]}), {Path(u.photos[1]).name} ({u.distortions[1]})"
            for k, u in enumerate(users)
        ),
        f"users: {report.users}, requests done: {len(report.records)} of {report.planned}",
        table(report),
        f"distinct solo references (cross-talk is detectable between users with different ones): {distinct}",
        f"peak RSS: {report.peak_rss / 2**20:.0f} MiB; RSS growth over the last {RSS_WINDOW} requests: {growth_text}",
        *([soak_text, f"RSS by tenth of the load (MiB): {trace}"] if report.soak else []),
        disk_table(report),
        f"queue: {report.queue}",
        *(f"problem: {p}" for p in report.problems()[:10]),
        verdict_text,
    ]
    return "\n".join(lines)


class _Guard:
    """Whether ``loopback_only`` refuses now (while ``guarded`` runs) and whether it is installed: an audit hook stays
    for the life of the process."""

    on = False
    hooked = False


def loopback_only(event: str, args: tuple) -> None:
    """Audit hook: while ``_Guard.on``, refuse any socket connection that does not stay on this machine."""
    if not _Guard.on or event != "socket.connect" or not isinstance(args[1], tuple):
        return
    host = args[1][0]
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:  # a host name other than localhost
        loopback = False
    if not loopback:
        raise PermissionError(f"bench.load talks to loopback only; refused a connection to {host}")


@contextlib.contextmanager
def guarded() -> Iterator[None]:
    """Connections off this machine are refused inside the block (``loopback_only``) and allowed again after it,
    so a caller that runs ``main`` in its own process (the tests) can still reach a package registry later."""
    if not _Guard.hooked:
        sys.addaudithook(loopback_only)
        _Guard.hooked = True
    _Guard.on = True
    try:
        yield
    finally:
        _Guard.on = False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--requests", type=int, help=f"per user (default 25; --soak: {SOAK_REQUESTS} in all)")
    parser.add_argument("--queue-size", type=int, help="the app queue's max_size (default users + 2)")
    parser.add_argument("--deadline", type=float, help="seconds for the load phase (default 1800; --soak: 7200)")
    parser.add_argument("--fallback-steps", type=int, default=200, help="training steps of the tiny fallback")
    parser.add_argument(
        "--cache-age",
        type=float,
        help=f"the app's temp-file age in seconds (default: the app's; --soak: {SOAK_CACHE_AGE_S})",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="2 users × 2 requests")
    mode.add_argument("--soak", action="store_true", help="a long run judged by its RSS and temp-space bounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.requests = 2, 2
    if args.soak:
        args.requests = args.requests or math.ceil(SOAK_REQUESTS / args.users)
        args.cache_age = args.cache_age or SOAK_CACHE_AGE_S
    args.requests = args.requests or 25
    args.deadline = args.deadline or (7200.0 if args.soak else 1800.0)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with guarded(), tempfile.TemporaryDirectory(prefix="qground-load-") as tmp:
        folder = Path(tmp)
        users, masks, photos_from = make_users(args.users, folder)
        engine, label = pick_engine(users, masks, args.fallback_steps)
        t0 = time.perf_counter()
        queue_size = args.queue_size or args.users + 2
        report = run(
            engine, label, users, args.requests, queue_size, args.deadline, folder, args.cache_age, soak=args.soak
        )
        print(f"references, load and queue probe: {time.perf_counter() - t0:.0f} s")
        print(summary(report, users, photos_from))
    return 0 if report.passed() else 1


if __name__ == "__main__":
    sys.exit(main())
