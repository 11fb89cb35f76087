"""Load test of the app: concurrent gradio_client users on loopback, checked for errors and cross-talk.

``python -m bench.load [--users 8] [--requests 25] [--queue-size N] [--deadline S] [--fallback-steps N] [--quick]``
(``--quick``: 2 users × 2 requests, the same steps in seconds)

1. Engine: the shipped ``qground-nano`` (``qground.checkpoint.load_model``), else a ``qground-tiny`` overfit to two of
   the users' photos (it then answers and draws masks like a trained model); the summary says which.
2. Photos: each user gets two photos with distinct known distortions: images of ``runs/nano/data/eval`` (its
   ``meta.json`` lists what was applied) when present, else made with ``training.data.synth.generate``. /ground and
   /describe send the first, /compare both.
3. The app (``app.build_demo``) listens on 127.0.0.1 only; an audit hook refuses any other connection. Its queue is
   bounded (``--queue-size``, default users + 2).
4. Solo references: one client asks every endpoint for every user, one request at a time, before the load.
5. Load: ``--users`` threads, each with its own ``gradio_client.Client``, send ``--requests`` requests cycling over
   /ground, /describe, /compare (bounded in count, and in time by ``--deadline``). Every answer must equal the user's
   own solo reference: for /ground the overlay size, mask labels, per-class area % and score, every mask PNG, the
   answer; an answer equal to another user's reference is cross-talk.
6. Queue probe: ``--queue-size`` + ``--users`` + 2 requests at once; reports whether the ones beyond the bound were
   rejected ("Queue is full") or waited, and that the next request succeeds.

Prints a table (requests, errors, wrong answers, cross-talk, p50/p95 latency per endpoint), peak RSS, RSS growth over
the last 100 requests (target < 10 %). Exit code 0 when there are no errors, no wrong answers, every request ran and
RSS grew < 10 %.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ENDPOINTS = ("/ground", "/describe", "/compare")
EVAL_DATA = Path("runs/nano/data/eval")
RSS_WINDOW = 100  # requests over which RSS growth is measured
QUEUE_FULL = "Queue is full"


@dataclass(frozen=True)
class User:
    """One simulated user's uploads: ``photos[0]`` for /ground and /describe, both for /compare; ``distortions``
    names what was applied to each (known from how they were made)."""

    photos: tuple[str, str]
    distortions: tuple[str, str]


@dataclass(frozen=True)
class Record:
    """One request under load: who sent it, where, how long it took (s), what went wrong ("" = nothing) and the
    process RSS (bytes) when it finished."""

    user: int
    endpoint: str
    seconds: float
    problem: str
    rss: int


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

    def problems(self) -> list[str]:
        return [r.problem for r in self.records if r.problem]

    def cross_talk(self) -> list[str]:
        return [p for p in self.problems() if p.startswith("cross-talk")]

    def rss_growth(self) -> float | None:
        """RSS growth over the last ``RSS_WINDOW`` requests (fraction), None with fewer requests."""
        rss = [r.rss for r in self.records]
        return rss[-1] / rss[-RSS_WINDOW - 1] - 1 if len(rss) > RSS_WINDOW else None

    def passed(self) -> bool:
        growth = self.rss_growth()
        return not self.problems() and len(self.records) == self.planned and (growth is None or growth < 0.10)


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
    """The process RSS now, and its peak sampled every ``every_s`` seconds in a background thread."""

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
    rss: RssMonitor,
    folder: Path,
    sink: Callable[[Record], None],
) -> None:
    """One user's requests, cycling over the endpoints from a user-dependent start, until done or past ``deadline``
    (time.monotonic)."""
    client = client_for(url, folder / f"user{user}")
    for i in range(requests):
        if time.monotonic() > deadline:
            return
        endpoint = ENDPOINTS[(user + i) % len(ENDPOINTS)]
        t0 = time.perf_counter()
        try:
            output = call(client, endpoint, users[user])
        except Exception as err:  # any failure of a request is a result of the load test
            sink(Record(user, endpoint, time.perf_counter() - t0, f"error: {endpoint}: {err!r}", rss.now()))
            continue
        seconds = time.perf_counter() - t0
        sink(
            Record(
                user, endpoint, seconds, verdict(references, user, endpoint, fingerprint(endpoint, output)), rss.now()
            )
        )


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


def run(engine, engine_label: str, users: list[User], requests: int, queue_size: int, deadline_s: float, folder: Path):
    """Serve ``engine`` on loopback, take the solo references, run the load, probe the queue; returns the Report."""
    from qground.app import build_demo

    report = Report(engine_label, len(users), len(users) * requests)
    demo = build_demo(engine).queue(default_concurrency_limit=1, max_size=queue_size)
    _, url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    rss = RssMonitor()
    lock = threading.Lock()

    def sink(record: Record) -> None:
        with lock:
            report.records.append(record)

    try:
        report.references = references = solo_references(url, users, folder / "solo")
        report.distinct = {e: len({ref[e] for ref in references}) for e in ENDPOINTS}
        deadline = time.monotonic() + deadline_s
        with ThreadPoolExecutor(max_workers=len(users)) as pool:
            loops = [
                pool.submit(user_loop, url, k, users, references, requests, deadline, rss, folder, sink)
                for k in range(len(users))
            ]
            for loop in loops:
                loop.result()  # a user that could not even connect fails the run
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


def summary(report: Report, users: list[User], photos_from: str) -> str:
    growth = report.rss_growth()
    growth_text = (
        f"{growth * 100:+.1f} % (target < 10 %)" if growth is not None else f"n/a (< {RSS_WINDOW + 1} requests)"
    )
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
        f"queue: {report.queue}",
        *(f"problem: {p}" for p in report.problems()[:10]),
        "PASS" if report.passed() else "FAIL",
    ]
    return "\n".join(lines)


def loopback_only(event: str, args: tuple) -> None:
    """Audit hook: refuse any socket connection that does not stay on this machine."""
    if event != "socket.connect" or not isinstance(args[1], tuple):
        return
    host = args[1][0]
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:  # a host name other than localhost
        loopback = False
    if not loopback:
        raise PermissionError(f"bench.load talks to loopback only; refused a connection to {host}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--requests", type=int, default=25, help="per user")
    parser.add_argument("--queue-size", type=int, help="the app queue's max_size (default users + 2)")
    parser.add_argument("--deadline", type=float, default=1800.0, help="seconds for the load phase")
    parser.add_argument("--fallback-steps", type=int, default=200, help="training steps of the tiny fallback")
    parser.add_argument("--quick", action="store_true", help="2 users × 2 requests")
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.requests = 2, 2
    sys.addaudithook(loopback_only)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="qground-load-") as tmp:
        folder = Path(tmp)
        users, masks, photos_from = make_users(args.users, folder)
        engine, label = pick_engine(users, masks, args.fallback_steps)
        t0 = time.perf_counter()
        report = run(engine, label, users, args.requests, args.queue_size or args.users + 2, args.deadline, folder)
        print(f"references, load and queue probe: {time.perf_counter() - t0:.0f} s")
        print(summary(report, users, photos_from))
    return 0 if report.passed() else 1


if __name__ == "__main__":
    sys.exit(main())
