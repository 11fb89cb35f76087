"""The app in a real browser: headless Debian Chromium driven by Playwright.

Chat: upload a photo, ask for the segmentation, see the overlay and its legend; a user error leaves every output as
it was and shows a toast; the overlay stays through an answer that draws no masks; the run buttons are disabled while
a request runs; an example runs end to end; a phone-wide page shows the answer without horizontal scrolling; the
highlighted words are readable in the dark theme. Compare: removing an image removes its masks. Annotate: upload a
photo, click a known pixel, and check that the stored SAM point and the drawn marker land on that pixel. The engine is
the trained tiny model, except two scripted questions (``Scripted``). Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.click_to_overlay import CHROMIUM, CHROMIUM_ARGS  # the browser and flags the bench drives
from conftest import served_app
from qground import sam as annot
from qground.inference import GroundingResult
from qground.questions import QUESTIONS

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TIMEOUT_MS = 120_000


WORDS = "Is the exposure fine?"  # answered in words only, no masks
SLOW = "Take your time: where are the distortions?"  # answered by the model after a pause


class Scripted:
    """The trained tiny engine, except two questions: ``WORDS`` gets an answer that draws no masks, ``SLOW`` waits
    two seconds before the model answers (so a test can look at the page while a request runs)."""

    def __init__(self, engine) -> None:
        self._engine = engine

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def stream(self, images, turns, settings=None, stages=False):
        if turns[-1].question in (WORDS, "And the colors?"):
            text = "No blur, jitter, overexposure, low light or noise here."
            yield text
            yield GroundingResult(text, text, {}, {}, image_size=None, timings={}, token_ids=[])
            return
        if turns[-1].question == SLOW:
            time.sleep(2.0)
        yield from self._engine.stream(images, turns, settings, stages)


@pytest.fixture(scope="module")
def url(trained_tiny, tmp_path_factory):
    """The app on loopback with the (scripted) trained tiny engine and a tiny SAM."""
    sam = annot.SamAnnotator.tiny_random()
    with served_app(Scripted(trained_tiny), tmp_path_factory.mktemp("gradio"), sam) as address:
        yield address


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def page(browser, url):
    tab = browser.new_page(viewport={"width": 1400, "height": 1000})
    tab.set_default_timeout(TIMEOUT_MS)
    tab.goto(url)
    tab.get_by_role("button", name="Ground distortions").wait_for()
    yield tab
    tab.close()


def test_chat_shows_the_overlay_and_legend(page, overfit_batch, tmp_path):
    img, truth = overfit_batch[0][0]
    path = tmp_path / "street.png"
    img.resize((img.width * 6, img.height * 6), Image.Resampling.NEAREST).save(path)  # 480×288, same content
    page.locator("#chat-photo input[type=file]").set_input_files(str(path))
    page.locator("#chatbot").get_by_text("started a new conversation").wait_for()
    page.locator("#chat-q textarea").fill("Please segment out distorted regions in the image.")
    page.locator("#chat-q textarea").press("Enter")
    page.locator("#mask-status").get_by_text(re.compile("Drew 1 mask: noise")).wait_for()
    masks = page.locator("#chat-masks")
    base = masks.locator("img").first
    base.wait_for()
    assert base.evaluate("e => [e.naturalWidth, e.naturalHeight]") == [480, 288]
    assert masks.get_by_text("noise", exact=True).is_visible() and list(truth) == ["noise"]  # the legend entry
    page.screenshot(path=ARTIFACTS / "chat.png", full_page=True)
    page.locator("#chat-classes").get_by_label("Noise").uncheck()  # re-rendered from the kept result, no model call
    masks.get_by_text("noise", exact=True).wait_for(state="detached")
    assert base.evaluate("e => [e.naturalWidth, e.naturalHeight]") == [480, 288]


def _street(overfit_batch, tmp_path) -> Path:
    """The tiny model's noise photo at 480×288 (same content): it answers with one noise mask."""
    img = overfit_batch[0][0][0]
    path = tmp_path / "street.png"
    img.resize((img.width * 6, img.height * 6), Image.Resampling.NEAREST).save(path)
    return path


def _ask(page, question: str, status: str) -> None:
    page.locator("#chat-q textarea").fill(question)
    page.locator("#chat-q textarea").press("Enter")
    page.locator("#mask-status").get_by_text(re.compile(status)).wait_for()


def _grounded(page, url: str, path: Path) -> None:
    """A fresh session with ``path`` uploaded and grounded (one noise mask drawn)."""
    page.goto(url)
    page.locator("#chat-photo input[type=file]").set_input_files(str(path))
    page.locator("#chatbot").get_by_text("started a new conversation").wait_for()
    _ask(page, QUESTIONS["ground"], "Drew 1 mask: noise")


def _overlay_src(page) -> str:
    img = page.locator("#chat-masks img").first
    img.wait_for()
    return img.get_attribute("src")


def test_a_user_error_is_a_toast_and_leaves_the_outputs(page, url, overfit_batch, tmp_path):
    _grounded(page, url, _street(overfit_batch, tmp_path))
    src, messages = _overlay_src(page), page.locator("#chatbot .message").count()
    table = page.locator("#chat-table").inner_text()
    page.locator("#chat-send").click()  # nothing typed
    page.locator(".toast-body").get_by_text("Type a question first").wait_for()
    assert not page.get_by_text(re.compile("^Error$")).count()  # no red "Error" badges on the outputs
    assert _overlay_src(page) == src and page.locator("#chatbot .message").count() == messages
    assert page.locator("#chat-table").inner_text() == table
    page.screenshot(path=ARTIFACTS / "user-error.png", full_page=True)


def test_the_overlay_survives_an_answer_without_masks(page, url, overfit_batch, tmp_path):
    _grounded(page, url, _street(overfit_batch, tmp_path))
    src = _overlay_src(page)
    _ask(page, WORDS, "Shown: the masks of turn 1")
    assert _overlay_src(page) == src and page.locator("#chat-masks").get_by_text("noise", exact=True).is_visible()
    assert page.locator("#chatbot").get_by_text("No blur, jitter, overexposure").is_visible()
    page.locator("#chat-classes").get_by_label("Noise").uncheck()  # the user hides the class ...
    page.locator("#chat-masks").get_by_text("noise", exact=True).wait_for(state="detached")
    page.locator("#chat-q textarea").fill("And the colors?")  # ... and it stays hidden through another answer
    page.locator("#chat-q textarea").press("Enter")  # without masks
    page.locator("#chatbot").get_by_text("No blur, jitter, overexposure").nth(1).wait_for()
    page.locator("#chat-send:not([disabled])").wait_for()  # the request has finished
    assert not page.locator("#chat-classes").get_by_label("Noise").is_checked()
    assert not page.locator("#chat-masks").get_by_text("noise", exact=True).count()


def test_a_typed_opacity_redraws_the_masks(page, url, overfit_batch, tmp_path):
    _grounded(page, url, _street(overfit_batch, tmp_path))
    layers = page.locator("#chat-masks img")
    before = layers.last.get_attribute("src")  # the mask layer, above the photo
    box = page.locator("#chat-opacity input[type=number]")
    box.fill("0.9")
    box.press("Enter")
    page.wait_for_function("([e, old]) => e.src !== old", arg=[layers.last.element_handle(), before])


def test_run_buttons_are_disabled_while_a_request_runs(page, url, overfit_batch, tmp_path):
    _grounded(page, url, _street(overfit_batch, tmp_path))
    page.locator("#chat-q textarea").fill(SLOW)
    page.locator("#chat-send").click()
    buttons = [page.locator("#chat-send"), page.get_by_role("button", name="Ground distortions")]
    page.wait_for_function("e => e.disabled", arg=buttons[0].element_handle())
    assert all(b.is_disabled() for b in buttons)
    page.locator("#chatbot").get_by_text(re.compile("Reading the photo|Answering|Drawing masks")).first.wait_for()
    page.wait_for_function("e => !e.disabled", arg=buttons[0].element_handle())
    assert not any(b.is_disabled() for b in buttons)
    assert "Drew 1 mask: noise" in page.locator("#mask-status").inner_text()


def test_an_example_runs_end_to_end(page, url):
    page.goto(url)
    examples = page.locator("#chat-examples button")
    examples.first.click()
    page.locator("#chatbot").get_by_text("started a new conversation").wait_for()
    question = page.locator("#chat-q textarea").input_value()
    assert question  # the example's question is filled in
    page.locator("#chat-send").click()
    page.locator("#mask-status").get_by_text(re.compile("mask")).wait_for()
    assert page.locator("#chatbot").get_by_text(question).is_visible()


def test_removing_a_compare_image_removes_its_masks(page, url, overfit_batch, tmp_path):
    page.goto(url)
    page.get_by_role("tab", name="Compare").click()
    for slot, k in (("A", 0), ("B", 1)):
        path = tmp_path / f"{slot}.png"
        overfit_batch[0][k][0].save(path)
        page.locator(f"#slot-{slot} input[type=file]").set_input_files(str(path))
        page.locator(f"#slot-{slot} img").first.wait_for()
    page.locator("#compare-each").click()
    gallery = page.locator("#compare-gallery")
    gallery.get_by_text(re.compile("^B — ")).wait_for()
    page.locator("#slot-B").get_by_role("button", name="Remove Image").click()
    gallery.get_by_text(re.compile("^B — ")).wait_for(state="detached")
    assert gallery.get_by_text(re.compile("^A — ")).count()
    box = page.locator("#compare-q textarea")
    box.fill("")
    box.press_sequentially("which image is the sharpest?")  # a preset's question, typed key by key
    box.blur()
    page.locator("#preset label.selected").get_by_text("Sharpness").wait_for()  # the radio follows


def test_a_phone_wide_page_shows_the_answer(browser, url, overfit_batch, tmp_path):
    phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    phone.set_default_timeout(TIMEOUT_MS)
    phone.goto(url)
    phone.locator("#chat-photo input[type=file]").set_input_files(str(_street(overfit_batch, tmp_path)))
    phone.locator("#chatbot").get_by_text("started a new conversation").wait_for()
    phone.get_by_role("button", name="Ground distortions").click()
    answer = phone.locator("#chatbot").get_by_text("Drew 1 mask: noise")
    answer.wait_for()
    time.sleep(0.5)  # the scroll to the output
    box = answer.bounding_box()
    assert 0 <= box["y"] and box["y"] + box["height"] <= 844  # on screen, no scrolling needed
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    for cell in ("Score", "0."):  # the table's last column is on the page
        found = phone.locator("#chat-table").get_by_text(cell).first.bounding_box()
        assert found["x"] + found["width"] <= 390
    phone.screenshot(path=ARTIFACTS / "phone.png", full_page=True)
    phone.close()


def _luminance(rgb) -> float:
    """WCAG relative luminance of an sRGB color (0–255 channels)."""
    c = np.asarray(rgb[:3], dtype=float) / 255
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2])


def _rendered_contrast(png: bytes) -> float:
    """WCAG contrast of a screenshot of one highlighted word, inside its rounded corners (3 px in from each edge): its
    background is the most common color, its text the pixel farthest from it in luminance (a glyph stroke's core)."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))[3:-3, 3:-3].reshape(-1, 3)
    colors, counts = np.unique(pixels, axis=0, return_counts=True)
    background = _luminance(colors[counts.argmax()])
    text = max((_luminance(c) for c in colors), key=lambda lum: abs(lum - background))
    light, dark = max(background, text), min(background, text)
    return (light + 0.05) / (dark + 0.05)


@pytest.mark.parametrize("theme", ["dark", "light"])
def test_highlighted_words_are_readable(page, url, overfit_batch, tmp_path, theme):
    _grounded(page, url.rstrip("/") + f"/?__theme={theme}", _street(overfit_batch, tmp_path))
    _ask(page, WORDS, "Shown: the masks of turn 1")  # an answer naming all five classes
    words = page.locator("#chat-highlights .highlighted")
    assert words.count() == 5
    shots = {words.nth(k).inner_text(): words.nth(k).screenshot() for k in range(5)}
    for word, png in shots.items():
        (ARTIFACTS / f"highlight-{theme}-{word.replace(' ', '-')}.png").write_bytes(png)
    contrasts = {word: _rendered_contrast(png) for word, png in shots.items()}
    assert min(contrasts.values()) >= 4.5, contrasts  # WCAG AA for normal text


@pytest.mark.parametrize(("size", "pixel"), [((480, 288), (123, 77)), ((1600, 960), (1234, 567))])
def test_annotate_click_lands_on_the_clicked_pixel(page, tmp_path, size, pixel):
    w, h = size
    photo = tmp_path / f"annotate-{w}.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(photo)
    page.get_by_role("tab", name="Annotate").click()
    canvas = page.locator("#annotate-canvas")
    if canvas.locator("img").count():
        canvas.get_by_role("button", name="Remove Image").click()
    canvas.locator("input[type=file]").set_input_files(str(photo))
    status = page.locator("#annotate-status")
    status.get_by_text(f"{w}×{h} photo").wait_for()
    img = canvas.locator("img").first
    page.wait_for_function("e => e.complete && e.naturalWidth > 0", arg=img.element_handle())
    assert img.evaluate("e => [e.naturalWidth, e.naturalHeight]") == [w, h]
    box, before = img.bounding_box(), img.get_attribute("src")
    x, y = pixel
    img.click(position={"x": (x + 0.5) * box["width"] / w, "y": (y + 0.5) * box["height"] / h})
    status.get_by_text("include").wait_for()
    page.wait_for_function("([e, old]) => e.src !== old", arg=[img.element_handle(), before])
    found = re.search(r"\((\d+), (\d+)\) include", status.inner_text())
    tolerance = max(1.0, w / box["width"])  # one screen pixel, in image pixels
    assert abs(int(found[1]) - x) <= tolerance and abs(int(found[2]) - y) <= tolerance
    src = img.get_attribute("src")
    preview = np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))
    assert preview.shape == (h, w, 3)
    assert tuple(preview[int(found[2]), int(found[1])]) == annot.INCLUDE_COLOR  # the marker is drawn there
    page.screenshot(path=ARTIFACTS / f"annotate-{w}.png", full_page=True)
