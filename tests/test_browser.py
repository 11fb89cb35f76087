"""The app in a real browser: headless Debian Chromium driven by Playwright.

Chat: upload a photo, ask for the segmentation, see the overlay and its legend. Annotate: upload a photo, click a known
pixel, and check that the stored SAM point and the drawn marker land on that pixel. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import served_app
from qground import sam as annot

pytestmark = pytest.mark.slow

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
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def url(trained_tiny, tmp_path_factory):
    """The app on loopback with the trained tiny engine and a tiny SAM."""
    with served_app(trained_tiny, tmp_path_factory.mktemp("gradio"), annot.SamAnnotator.tiny_random()) as address:
        yield address


@pytest.fixture(scope="module")
def page(url):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        tab.set_default_timeout(TIMEOUT_MS)
        tab.goto(url)
        tab.get_by_role("button", name="Ground distortions").wait_for()
        yield tab
        browser.close()


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
