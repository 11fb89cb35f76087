"""A public Space's limits: an upload over the size limit is refused in words before the app reads it and the next
request is served; a generation that runs out of its time budget returns the answer so far with a note and frees
the worker. (Decoding damaged files: ``tests/test_fuzz_images.py``.)"""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from conftest import served_app
from qground.app import MAX_UPLOAD_MB, TIME_BUDGET_S, intro, launch_options
from qground.builder import build_from_registry
from qground.inference import BUDGET_NOTE, GenerationSettings, QGroundEngine
from qground.processor import QGroundProcessor
from qground.prompts import Turn

STEP_S = 0.15  # the slowed model's time per LLM step


@pytest.fixture
def slow_engine():
    """A random tiny engine whose every LLM step takes ``STEP_S`` longer, with a time budget of 4 steps."""
    model, tokenizer = build_from_registry("qground-tiny")
    forward = model.language_model.forward

    def slow(*args, **kwargs):
        time.sleep(STEP_S)
        return forward(*args, **kwargs)

    model.language_model.forward = slow
    return QGroundEngine(model, QGroundProcessor(tokenizer, model.config), "slow", time_budget=4 * STEP_S)


def test_the_time_budget_returns_the_answer_so_far_with_a_note(slow_engine):
    settings = GenerationSettings(max_new_tokens=60, min_new_tokens=60)  # 60 steps would take 9 s
    start = time.perf_counter()
    result = slow_engine.chat([Image.new("RGB", (40, 30))], [Turn("How is the quality of this image?")], settings)
    elapsed = time.perf_counter() - start
    note = BUDGET_NOTE.format(seconds=4 * STEP_S)
    assert elapsed < 4 * STEP_S + 3 * STEP_S + 1.0  # the budget, the step that crossed it, image and prompt work
    assert 1 <= len(result.token_ids) < 60
    assert result.warnings == [note] and result.text.endswith(f"({note})")
    slow_engine.time_budget = None  # without a budget the same request runs to its end
    full = slow_engine.chat([Image.new("RGB", (40, 30))], [Turn("q")], GenerationSettings(8, min_new_tokens=8))
    assert len(full.token_ids) == 8 and not full.warnings
    with pytest.raises(ValueError, match="positive number of seconds"):
        QGroundEngine(slow_engine.model, slow_engine.processor, time_budget=0)


def test_the_limits_have_defaults_and_the_page_states_the_upload_limit():
    assert launch_options()["max_file_size"] == int(MAX_UPLOAD_MB * 1024 * 1024) and TIME_BUDGET_S > 0
    assert "up to 50 MB" in intro(False)


def test_the_app_refuses_an_upload_over_the_limit_and_keeps_serving(slow_engine, tmp_path):
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    Image.new("RGB", (64, 48), (90, 120, 40)).save(small)
    noise = np.random.default_rng(0).integers(0, 255, size=(300, 300, 3), dtype=np.uint8)
    Image.fromarray(noise).save(large)  # ≈ 270 KB: over a 0.1 MB limit
    assert large.stat().st_size > 0.1 * 1024 * 1024 > small.stat().st_size
    with served_app(slow_engine, tmp_path / "gradio", max_upload_mb=0.1) as url:
        client = Client(url, verbose=False)
        answer = client.predict(handle_file(str(small)), "How is the quality?", api_name="/describe")
        assert answer.endswith(f"({BUDGET_NOTE.format(seconds=4 * STEP_S)})")  # the worker was freed on time
        with pytest.raises(ValueError, match=r"large.png exceeds the maximum file size of 104857 bytes"):
            client.predict(handle_file(str(large)), "", api_name="/describe")  # gradio_client checks first
        # a client that does not check is refused by the server while the file streams in
        refused = httpx.post(f"{url}gradio_api/upload", files={"files": ("large.png", large.read_bytes())})
        assert refused.status_code == 413 and "File size exceeded maximum allowed size" in refused.text
        assert not list((tmp_path / "gradio").rglob("large.png"))  # never written whole
        assert client.predict(handle_file(str(small)), "", api_name="/describe")  # the next request is served


def test_a_stream_resumed_on_other_threads_answers():
    """Gradio may resume an answer's generator on another worker thread at every step; inference mode is per
    thread, so each step must enter it (once it failed: "Inference tensors cannot be saved for backward")."""
    import threading

    from qground.service import load_engine

    engine = load_engine("qground-nano")  # its choice head reads the prefill's states at a [CHOICE] step
    images = [Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (30, 40), (10, 10, 200))]
    stream = engine.stream(images, [Turn("Which image is sharper?")], GenerationSettings(max_new_tokens=6))
    outputs: list = []

    def step() -> None:
        try:
            outputs.append(next(stream, None))
        except RuntimeError as e:  # raised in the worker thread: kept for the assertion
            outputs.extend([e, None])

    while not outputs or outputs[-1] is not None:
        worker = threading.Thread(target=step)
        worker.start()
        worker.join()
    assert not any(isinstance(o, Exception) for o in outputs), outputs[-2]
    expected = engine.chat(images, [Turn("Which image is sharper?")], GenerationSettings(6))
    assert outputs[-2].token_ids == expected.token_ids


def test_old_temp_files_are_swept_from_gradios_folder_too(tmp_path):
    """Files older than the age go from our scratch folder at every new file and from Gradio's temp folder at most
    every SWEEP_EVERY_S; entries that vanish meanwhile are skipped."""
    import os

    from qground import service as svc

    gradio = tmp_path / "gradio"
    (gradio / "old").mkdir(parents=True)
    (gradio / "old" / "upload.png").write_bytes(b"x")
    (gradio / "new").mkdir()
    (gradio / "stray.txt").write_text("old file at the top")
    past = time.time() - 7200
    for path in (gradio / "old", gradio / "old" / "upload.png", gradio / "stray.txt"):
        os.utime(path, (past, past))
    scratch = svc.Scratch(tmp_path / "scratch", max_age_s=3600, also=[gradio, tmp_path / "missing"])
    (scratch.root / "stale").mkdir()
    os.utime(scratch.root / "stale", (past, past))
    scratch.folder()
    assert sorted(p.name for p in gradio.iterdir()) == ["new"]
    assert [p.name for p in scratch.root.iterdir() if p.name == "stale"] == []
    (gradio / "later").mkdir()
    os.utime(gradio / "later", (past, past))
    scratch.folder()  # within SWEEP_EVERY_S of the last sweep: Gradio's folder is left for now
    assert (gradio / "later").exists()


def test_freed_memory_is_handed_back_after_requests(monkeypatch):
    """Every handler the app wires ends by trimming the heap (glibc ``malloc_trim``), at most every TRIM_EVERY_S."""
    from qground import app
    from qground import service as svc

    monkeypatch.setitem(svc._TRIM, "last", 0.0)
    assert svc.trim_memory(now=1000.0) is True  # glibc here
    assert svc.trim_memory(now=1000.0 + svc.TRIM_EVERY_S / 2) is False
    calls = []
    monkeypatch.setattr(svc, "trim_memory", lambda: calls.append(1))

    def answer():
        yield "partial"
        yield "done"

    assert list(app._guarded(answer, handle=lambda err: None)()) == ["partial", "done"]
    assert app._guarded(lambda: 3, handle=lambda err: None)() == 3
    assert len(calls) == 2
