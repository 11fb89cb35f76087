"""Click to overlay in a real browser: from a click on "Ground distortions" until the mask overlay is on screen.

1. The app (``qground.app.build_demo`` with the shipped default model, loaded as ``bench.latency`` does:
   ``qground.service.load_engine(qground.models.resolve_model())``) listens on 127.0.0.1.
2. Photos: 4000×3000 (12 MP) JPEGs made from the repository's own photos (``bench.app_overhead.PHOTOS``: a held-out
   photo cropped to 4:3, scaled up bicubically, one region distorted with a ``training.data.distortions`` family that
   qground-nano finds, so that there is something to draw).
3. Headless Debian Chromium (``/usr/bin/chromium``) driven by Playwright, a fresh browser context (empty cache, new
   session) per click: open the app, upload the photo into the Chat tab (``#chat-photo input[type=file]``), wait for
   the conversation to start (the upload's time is printed apart), then click "Ground distortions". A script in the
   page notes ``performance.now()`` at the click and polls every 5 ms until ``#mask-status`` says what was drawn
   ("Drew N mask(s): …" or "No … mask …", a text that changed after the click) and every ``<img>`` in ``#chat-masks``
   has loaded (``naturalWidth > 0``), one of them new since the click when masks were drawn (an answer without masks
   shows no overlay: its time is the status's). That span is the time reported (an error toast stops the bench). The
   overlay's size is printed, not checked (the app may show large photos shrunk).
4. A warm-up click on another photo first, then every photo ``--repeats`` times, each time a copy with other bytes
   (``fresh_copy``: the server has not prepared it before); per-photo medians, the median over all clicks, and the
   target (≤ 1.5 s) beside it. The click follows the upload's reply at once: the app's preparation of the photo
   (``QGroundEngine.prepare``, begun on upload) is still running then, and the click waits for the rest of it; a
   person who takes a second to pick a question waits less.

``--profile`` also prints where each click's seconds go: the model (``GroundingResult.timings``: preprocess, generate,
masks), the app's result views (``service.annotated_image``: overlay drawn + JPEG written; ``service.masks_zip``),
photo decodes (``service.load_photo``), Gradio's ``Blocks.process_api`` (once per streamed update) split into
preprocess, handler (``call_function``) and postprocess, of which the overlay's (``qground.app._overlay_component``:
mask layers colored and encoded), and from the browser's resource timing when the first image request started after the
click, how many image bytes were fetched and when the last arrived. (Wrappers around those functions, in this process
only.)

``--quick``: one 640×480 photo, one click after the warm-up (seconds), used by tests/test_benches.py.

Run: ``python -m bench.click_to_overlay [--model NAME] [--photos 4] [--repeats 2] [--size 4000x3000] [--profile]
[--quick]``
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import re
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from bench.app_overhead import PHOTOS, PhotoSpec, gradio_temp_dir, photo_files

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TARGET_MS = 1500
TIMEOUT_MS = 300_000
WARM_UP = PhotoSpec("castle", "overexposure/gain", 0.7, (0.5, 0.0, 1.0, 0.6))
STATUS = r"Drew \d+ masks?|\bNo\b.*\bmasks?\b"  # what #mask-status says once the answer is drawn

# Installed in the page before the click: notes the click and polls until the overlay is shown (see the docstring).
WATCH = r"""([statusPattern]) => {
  const root = document.querySelector('#chat-masks');
  const status = document.querySelector('#mask-status');
  const read = () => (status ? status.innerText.trim() : '');
  const srcs = (imgs) => imgs.map((i) => i.currentSrc || i.src);
  const oldStatus = read();
  const oldSrcs = new Set(srcs([...root.querySelectorAll('img')]));
  const pattern = new RegExp(statusPattern);
  const w = (window.__c2o = { clicked: null, done: null, status: '', images: [], error: null });
  const button = [...document.querySelectorAll('button')].find((b) => b.innerText.trim() === 'Ground distortions');
  button.addEventListener('click', () => { w.clicked = performance.now(); }, { capture: true, once: true });
  w.timer = setInterval(() => {
    if (w.clicked === null) return;
    const toast = document.querySelector('[data-testid="toast-body"].error');
    if (toast) {
      w.error = toast.innerText.trim();
      clearInterval(w.timer);
      return;
    }
    const text = read();
    if (text === oldStatus || !pattern.test(text)) return;
    const imgs = [...root.querySelectorAll('img')];
    const drew = /Drew \d+ mask/.test(text);  // else nothing to draw: no overlay is shown
    if (drew && !srcs(imgs).some((s) => s && !oldSrcs.has(s))) return;
    if (!imgs.every((i) => i.complete && i.naturalWidth > 0)) return;
    w.done = performance.now();
    w.status = text;
    w.images = imgs.map((i) => [i.naturalWidth, i.naturalHeight]);
    clearInterval(w.timer);
  }, 5);
}"""

# What the page shows when the overlay does not come.
STATE = """() => ({
  status: document.querySelector('#mask-status')?.innerText,
  images: [...document.querySelectorAll('#chat-masks img')].map((i) => [i.src.slice(-60), i.complete, i.naturalWidth]),
  watch: window.__c2o,
})"""

# After the overlay is shown: the image files fetched since the click (start and end in ms after the click, bytes).
FETCHED = """() => performance.getEntriesByType('resource')
  .filter((e) => e.startTime >= window.__c2o.clicked && /file=/.test(e.name))
  .map((e) => [e.startTime - window.__c2o.clicked, e.responseEnd - window.__c2o.clicked,
               e.encodedBodySize || e.transferSize || 0])"""


class Profile:
    """Seconds spent in wrapped app and Gradio functions (in this process), collected per click."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spent: dict[str, list[float]] = defaultdict(list)

    def reset(self) -> None:
        with self.lock:
            self.spent = defaultdict(list)

    def add(self, what: str, seconds: float) -> None:
        with self.lock:
            self.spent[what].append(seconds)

    def timed(self, what: str, fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(what, time.perf_counter() - t0)

        return call

    def timed_async(self, what: str, fn):
        @functools.wraps(fn)
        async def call(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.add(what, time.perf_counter() - t0)

        return call

    @contextlib.contextmanager
    def installed(self, engine):
        """Wrap ``engine.stream`` (model timings), ``qground.service`` views and the overlay's output step (the app's
        ``gr.AnnotatedImage``, ``qground.app._overlay_component``)."""
        import gradio as gr

        from qground import service as svc
        from qground.app import _overlay_component
        from qground.inference import GroundingResult

        stream = engine.stream

        def timed_stream(*args, **kwargs):
            for item in stream(*args, **kwargs):
                if isinstance(item, GroundingResult):
                    for stage in ("preprocess", "generate", "masks", "total"):
                        self.add(f"model {stage}", item.timings.get(stage, 0.0))
                yield item

        names = [n for n in ("load_photo", "new_thread", "annotated_image", "masks_zip") if hasattr(svc, n)]
        saved = {n: getattr(svc, n) for n in names}
        overlay = _overlay_component()
        postprocess = overlay.postprocess
        steps = ("process_api", "preprocess_data", "call_function", "postprocess_data")
        blocks = {name: getattr(gr.Blocks, name) for name in steps}
        engine.stream = timed_stream
        for name in names:
            setattr(svc, name, self.timed(name, saved[name]))
        overlay.postprocess = self.timed("overlay postprocess", postprocess)
        for name, fn in blocks.items():
            setattr(gr.Blocks, name, self.timed_async(name, fn))
        try:
            yield self
        finally:
            del engine.stream
            for name in names:
                setattr(svc, name, saved[name])
            overlay.postprocess = postprocess
            for name, fn in blocks.items():
                setattr(gr.Blocks, name, fn)

    def ms(self, what: str) -> str:
        """Total time in ``what`` since the last reset ("n/a" when it did not run), with the count when > 1."""
        with self.lock:
            times = list(self.spent.get(what, []))
        if not times:
            return "n/a"
        return f"{sum(times) * 1000:.0f} ms" + (f" ({len(times)}×)" if len(times) > 1 else "")

    def upload(self) -> str:
        return f"new_thread {self.ms('new_thread')} (load_photo {self.ms('load_photo')})"

    def click(self, fetched: list) -> str:
        ms = self.ms
        model = (
            f"model {ms('model total')} (preprocess {ms('model preprocess')}, generate {ms('model generate')}, "
            f"masks {ms('model masks')})"
        )
        views = f"annotated_image {ms('annotated_image')}, masks_zip {ms('masks_zip')}"
        files = "no files fetched"
        if fetched:
            first = min(start for start, _, _ in fetched)
            last = max(end for _, end, _ in fetched)
            size = sum(n for _, _, n in fetched) / 1e6
            files = f"{len(fetched)} files ({size:.1f} MB) fetched from {first:.0f} to {last:.0f} ms after the click"
        gradio = (
            f"Gradio process_api {ms('process_api')} = preprocess {ms('preprocess_data')} + handler "
            f"{ms('call_function')} + postprocess {ms('postprocess_data')} (overlay {ms('overlay postprocess')})"
        )
        return f"{model}; {views}; load_photo {ms('load_photo')}; {gradio}; {files}"


def fresh_copy(photo: Path, n: int) -> Path:
    """A copy of JPEG ``photo`` whose bytes differ by a comment segment naming ``n`` (same pixels): every click
    uploads a file the server has not seen, so nothing it kept of an earlier upload (``QGroundEngine.prepare``) is
    reused."""
    data = photo.read_bytes()
    comment = f"qground bench click {n}".encode()
    segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
    copy = photo.with_name(f"{photo.stem}-{n}{photo.suffix}")
    copy.write_bytes(data[:2] + segment + data[2:])  # after the start-of-image marker
    return copy


def click_once(browser, url: str, photo: Path, profile: Profile | None) -> dict:
    """One fresh page: upload ``photo``, click "Ground distortions", wait until the overlay is shown."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        button = page.get_by_role("button", name="Ground distortions")
        button.wait_for()
        if profile:
            profile.reset()
        t0 = time.perf_counter()
        page.locator("#chat-photo input[type=file]").set_input_files(str(photo))
        page.locator("#chatbot").get_by_text(re.compile(re.escape(photo.name) + "|new conversation")).first.wait_for()
        upload = time.perf_counter() - t0
        upload_profile = profile.upload() if profile else ""
        if profile:
            profile.reset()
        page.evaluate(WATCH, [STATUS])
        button.click()
        try:
            page.wait_for_function("() => window.__c2o.done !== null || window.__c2o.error !== null", polling=50)
        except PlaywrightTimeout:
            state = page.evaluate(STATE)
            raise RuntimeError(
                f"no overlay {TIMEOUT_MS / 1000:.0f} s after the click on {photo.name}: {state}"
            ) from None
        seen = page.evaluate("() => window.__c2o")
        if seen["error"] is not None:
            raise RuntimeError(f"the app showed an error after the click on {photo.name}: {seen['error']}")
        fetched = page.evaluate(FETCHED) if profile else []
        return {
            "seconds": (seen["done"] - seen["clicked"]) / 1000,
            "upload": upload,
            "status": seen["status"],
            "images": seen["images"],
            "profile": profile.click(fetched) if profile else "",
            "upload_profile": upload_profile,
        }
    finally:
        context.close()


def run(args: argparse.Namespace, folder: Path) -> None:
    from playwright.sync_api import sync_playwright

    from qground.app import build_demo
    from qground.service import load_engine

    width, height = (int(v) for v in args.size.lower().split("x"))
    photos = photo_files(folder / "photos", (width, height), PHOTOS[: args.photos])
    warm_up = photos[0] if args.quick else photo_files(folder / "photos", (width, height), [WARM_UP])[0]
    engine = load_engine(args.model)
    profile = Profile() if args.profile else None
    demo = build_demo(engine)
    _, url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as p, contextlib.ExitStack() as stack:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            stack.callback(browser.close)
            if profile:
                stack.enter_context(profile.installed(engine))
            size_mb = statistics.mean(f.stat().st_size for f in photos) / 1e6
            print(
                f"click to overlay: {engine.name}, {width}×{height} JPEG photos ({size_mb:.1f} MB on average), "
                f"Chromium {browser.version}, app on {url}"
            )
            first = click_once(browser, url, warm_up, profile)
            print(f"warm-up {warm_up.stem}: {first['seconds'] * 1000:.0f} ms ({first['status']})")
            every: list[float] = []
            for photo in photos:
                clicks = [click_once(browser, url, fresh_copy(photo, r), profile) for r in range(args.repeats)]
                times = [c["seconds"] for c in clicks]
                every += times
                shown = " ".join(f"{w}×{h}" for w, h in clicks[-1]["images"])
                print(
                    f"{photo.stem}: median {statistics.median(times) * 1000:.0f} ms of "
                    f"{', '.join(f'{t * 1000:.0f}' for t in times)} ms; upload before the click "
                    f"{statistics.median(c['upload'] for c in clicks) * 1000:.0f} ms; images {shown}; "
                    f"{clicks[-1]['status']}"
                )
                for c in clicks if profile else []:
                    print(f"  upload: {c['upload_profile']}")
                    print(f"  click {c['seconds'] * 1000:.0f} ms: {c['profile']}")
    finally:
        demo.close()
    print(
        f"median click to overlay {statistics.median(every) * 1000:.0f} ms over {len(every)} clicks on "
        f"{len(photos)} photos (target <= {TARGET_MS} ms)"
    )


def main(argv: list[str] | None = None) -> None:
    from qground.models import resolve_model

    parser = argparse.ArgumentParser(prog="python -m bench.click_to_overlay", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=resolve_model(), help="[QGROUND_MODEL, else qground.models.DEFAULT_MODEL]")
    parser.add_argument("--photos", type=int, default=len(PHOTOS), help=f"how many photos (1–{len(PHOTOS)})")
    parser.add_argument("--repeats", type=int, default=2, help="clicks per photo")
    parser.add_argument("--size", default="4000x3000", help="WxH of the photos")
    parser.add_argument("--profile", action="store_true", help="also print where each click's seconds go")
    parser.add_argument("--quick", action="store_true", help="one 640×480 photo, one click after the warm-up")
    args = parser.parse_args(argv)
    if args.quick:
        args.photos, args.repeats, args.size = 1, 1, "640x480"
    if not CHROMIUM.exists():
        raise SystemExit(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory(prefix="qground-click-") as tmp, gradio_temp_dir(Path(tmp) / "gradio"):
        run(args, Path(tmp))


if __name__ == "__main__":
    main()
