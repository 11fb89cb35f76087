"""Q-Ground app: chat about a photo's quality with one mask per distortion, compare 2–4 photos, annotate with SAM.

``python app.py`` or ``python -m qground serve`` (both run ``main``) ``[--model NAME|FOLDER|REPO] [--revision REV]
[--quant 4bit|8bit|none] [--dtype auto|fp32|bf16|fp16] [--max-upload-mb MB] [--time-budget S] [--host H] [--port P]
[--share]``; the environment gives the defaults (QGROUND_MODEL, QGROUND_REVISION, QGROUND_QUANT, QGROUND_DTYPE,
QGROUND_MAX_UPLOAD_MB, QGROUND_TIME_BUDGET, QGROUND_SAM). ``build_demo`` wires an engine
to the UI; the work is done in ``qground.service`` and ``qground.sam``, the default questions are
``qground.questions.QUESTIONS``. Nothing heavy runs at import.
Public endpoints for gradio_client: /ground, /describe, /compare, /segment; the UI's own handlers are private. Every
event that runs a model (Q-Ground or SAM) shares the queue ``concurrency_id="model"``, with the run buttons disabled
meanwhile (``_run``). A user's mistake is a warning toast that leaves every output as it was in the UI (``_ui``) and an
error with the same words at the public endpoints (``_friendly``). Styles and the upload limit go to ``launch``
(``launch_options``): Gradio refuses a larger file while it streams in, in words, and the next request is served.
"""

import argparse
import functools
import inspect
import io
import json
import logging
import os
from pathlib import Path

from qground.models import DEFAULT_MODEL
from qground.questions import COMPARE_PRESETS, QUESTIONS

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
log = logging.getLogger(__name__)

MODEL = {"concurrency_id": "model", "api_visibility": "private"}  # a private UI event that runs a model
PRIVATE = {"api_visibility": "private"}
INSTANT = {"queue": False, "api_visibility": "private"}  # cheap UI updates
PAPER = "https://arxiv.org/abs/2407.17035"
NARROW_PX = 768  # a window narrower than this is a phone: the layout stacks and a run scrolls to its answer


def api_doc(client_address: str, segment: bool) -> str:
    """The API tab's usage notes: ``client_address`` is what ``gradio_client.Client`` takes (this server's URL as
    the browser reached it, or the Space id); ``segment`` documents /segment (only served when SAM is on)."""
    segment_call = (
        'regions, annotation_zip = client.predict(handle_file("photo.jpg"),\n'
        '                                         \'[{"label": "blur", "points": [[120, 80]]}]\', '
        'api_name="/segment")\n'
        if segment
        else ""
    )
    return f"""Every model call is a named endpoint. `pip install gradio_client`, then:
```python
from gradio_client import Client, handle_file
client = Client("{client_address}")
overlay, answer, table, masks_zip = client.predict(handle_file("photo.jpg"), "", api_name="/ground")
answer = client.predict(handle_file("photo.jpg"), "How sharp is this photo?", api_name="/describe")
answer, ranking, note = client.predict([handle_file("a.jpg"), handle_file("b.jpg")], "Which is sharper?",
                                      api_name="/compare")
overlay, answer, table, masks_zip = client.predict(handle_file("photo.jpg"), "", 6.0, api_name="/ground")
{segment_call}```
`/ground` returns `{{"image", "annotations": [{{"image", "label"}}]}}` (labels are class names; full-size masks), the
answer, the table (4 columns: distortion, area %, where, score) and a zip of one lossless PNG mask per class +
`result.json`; a blank question asks the default grounding (/ground) or assessment (/describe) question.
`client.submit(...)` streams the answer (`job.outputs()`). /ground and /describe take an optional third input, the
detection strictness (0–8; models with a distortion readout such as qground-nano; default: the model's inference
policy's `default_strictness`, chosen on validation photos): higher means fewer false alarms on clean photos, fewer
distortions found; 0 = as trained. /compare ranks the images by their evidence as read.""" + (
        ""
        if segment
        else "\n\nClick-to-segment (/segment) is served only when Segment Anything is on (see the Annotate tab)."
    )


def _client_address(request) -> str:
    """What a ``gradio_client.Client`` should be given to reach this app: the Space id on Hugging Face Spaces, else
    the scheme and host the browser used (a ``gr.Request``; proxies' X-Forwarded-* headers respected)."""
    space = os.environ.get("SPACE_ID")
    if space:
        return space
    headers = request.headers if request is not None else {}
    host = headers.get("x-forwarded-host") or headers.get("host") or "127.0.0.1:7860"
    scheme = headers.get("x-forwarded-proto") or "http"
    return f"{scheme}://{host}"


MAX_UPLOAD_MB = 50.0  # default limit per uploaded file (QGROUND_MAX_UPLOAD_MB, --max-upload-mb)
TIME_BUDGET_S = 120.0  # default generation time per answer (QGROUND_TIME_BUDGET, --time-budget; 0: no limit)


def launch_options(max_upload_mb: float = MAX_UPLOAD_MB) -> dict:
    """``demo.launch`` keywords besides where to listen: the app's styles and the upload limit per file."""
    return {"css": CSS, "max_file_size": int(max_upload_mb * 1024 * 1024)}


def intro(card: bool, max_upload_mb: float = MAX_UPLOAD_MB) -> str:
    """One line above the tabs: what the app does, the five classes in their overlay colors, the upload limit, the
    paper, and (when ``card``) a pointer to the model card at the bottom of the page."""
    from qground.taxonomy import DISTORTIONS

    swatches = " · ".join(
        f'<span class="swatch" style="color:{d.color}">■</span> {d.display.lower()}' for d in DISTORTIONS
    )
    more = f"[Q-Ground paper]({PAPER})" + (" · the model card is at the bottom of the page" if card else "")
    return (
        f"Upload a photo (up to {max_upload_mb:g} MB, or pick an example) and ask about its quality: the answer "
        f"comes with one mask per distortion — {swatches}. {more}."
    )


def _gpu(fn):
    """``spaces.GPU`` on Hugging Face ZeroGPU Spaces (a no-op elsewhere); the function itself without ``spaces``."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(fn)


def _user_error(err: Exception) -> None:
    """A problem the person can fix: one log line, no traceback."""
    log.info("user error: %s", err)


def _server_error(err: Exception):
    """An unexpected failure: logged with its traceback, shown in words (``gr.Error`` to raise)."""
    import gradio as gr

    log.exception("request failed")
    return gr.Error(
        f"Something went wrong on the server ({type(err).__name__}: {err}). Your photo and conversation are kept; "
        "try again, or try another photo. The server log has the details."
    )


def _guarded(fn, handle):
    """``fn`` (a generator stays a generator) with any exception other than a ``gr.Error`` passed to ``handle``, from
    inside the ``except`` block (so a log call there has the traceback): it raises, or returns what the handler gives
    instead (a generator yields it as its last update). Afterwards freed memory goes back to the OS
    (``qground.service.trim_memory``)."""
    import gradio as gr

    from qground.service import trim_memory

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as err:
                yield handle(err)
            finally:
                trim_memory()

        return stream

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as err:
            return handle(err)
        finally:
            trim_memory()

    return call


def _friendly(fn):
    """For public API endpoints: user errors raise ``gr.Error`` with the message (clients get an exception that
    says what to fix; one log line), other failures ``_server_error``."""
    import gradio as gr

    from qground.service import USER_ERRORS

    def handle(err: Exception):
        if isinstance(err, USER_ERRORS):
            _user_error(err)
            raise gr.Error(str(err), print_exception=False) from None
        raise _server_error(err) from None

    return _guarded(fn, handle)


def _ui(fn, outputs: int):
    """For the UI's own handlers: a user error is a warning toast and leaves all ``outputs`` (their count) as they
    were; other failures ``_server_error``."""
    import gradio as gr

    from qground.service import USER_ERRORS

    unchanged = gr.skip() if outputs == 1 else tuple(gr.skip() for _ in range(outputs))

    def handle(err: Exception):
        if not isinstance(err, USER_ERRORS):
            raise _server_error(err) from None
        _user_error(err)
        gr.Warning(str(err))
        return unchanged

    return _guarded(fn, handle)


def _model(fn, outputs: int | None = None):
    """A handler that runs a model: GPU-scheduled on ZeroGPU; a UI handler (``_ui``) when ``outputs`` is given,
    else a public endpoint (``_friendly``)."""
    return _gpu(_friendly(fn) if outputs is None else _ui(fn, outputs))


def _run(trigger, fn, inputs: list, outputs: list, buttons: list, scroll_to: str | None = None, **kwargs):
    """``trigger`` → the ``buttons`` are disabled → ``fn`` (a model handler) runs on the model queue → the buttons
    are enabled again, whatever happened. On a narrow screen (a phone) the element ``scroll_to`` (an elem_id) is
    scrolled into view at once, so the answer is seen as it comes. Returns the model event (for ``cancels``)."""
    import gradio as gr

    def busy():
        return [gr.update(interactive=False)] * len(buttons)

    if scroll_to is not None:
        target = f"document.getElementById('{scroll_to}')"
        js = f"() => {{ if (window.innerWidth < {NARROW_PX}) {target}?.scrollIntoView(); }}"
        trigger(None, None, None, js=js, **INSTANT)

    run = trigger(busy, None, buttons, **INSTANT).then(_model(fn, len(outputs)), inputs, outputs, **MODEL, **kwargs)
    run.then(lambda: [gr.update(interactive=True)] * len(buttons), None, buttons, **INSTANT)
    return run


@functools.cache
def _photo_component() -> type:
    """``gr.Image`` whose uploads always reach ``qground.service.load_photo``: Gradio's own check (``PIL.Image.open``)
    would answer an empty, foreign or oversized file with a bare "Error" before our loader can say what is wrong with
    it. A template of Image, so the browser draws it as one."""
    import gradio as gr
    from PIL import Image

    class Photo(gr.Image):
        is_template = True

        def preprocess(self, payload):
            try:
                return super().preprocess(payload)
            except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
                if payload is None or payload.path is None:
                    raise
                return str(payload.path)

    return Photo


@functools.cache
def _overlay_component() -> type:
    """``gr.AnnotatedImage`` whose output step, for a base photo's path and array masks (what
    ``qground.service.annotated_image`` gives), writes the same layers as Gradio's (an RGBA PNG per mask: the label's
    color where the mask is > 0, alpha ⌊255 · mask⌋) without Gradio's detours: it decoded the base photo for its size
    and built float64 layers, 0.15–0.3 s for a 1,600-px overlay (``bench.click_to_overlay --profile``). Other values
    go to Gradio's. A template of AnnotatedImage, so the browser draws it as one."""
    import gradio as gr
    import numpy as np
    from gradio import processing_utils
    from gradio.components.annotated_image import AnnotatedImageData, Annotation, FileData
    from PIL import Image

    from qground.visualize import hex_to_rgb

    class Overlay(gr.AnnotatedImage):
        is_template = True

        def postprocess(self, value):
            if (
                value is None
                or not isinstance(value[0], str)
                or not all(isinstance(m, np.ndarray) for m, _ in value[1])
            ):
                return super().postprocess(value)
            base, annotations = value
            sections = []
            for mask, label in annotations:
                rgba = np.zeros((*mask.shape, 4), dtype=np.uint8)
                rgba[mask > 0, :3] = hex_to_rgb((self.color_map or {}).get(label, "#ff0000"))
                rgba[..., 3] = mask.astype(np.float64) * 255  # truncated, as Gradio's astype(np.uint8)
                with io.BytesIO() as buffer:
                    Image.fromarray(rgba).save(buffer, format="PNG", compress_level=1)
                    data = buffer.getvalue()
                folder = Path(self.GRADIO_CACHE) / processing_utils.hash_bytes(data)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "image.png").write_bytes(data)
                sections.append(Annotation(image=FileData(path=str(folder / "image.png")), label=label))
            return AnnotatedImageData(image=FileData(path=base), annotations=sections)

    return Overlay


def _photo(**kwargs):
    """A photo input handing the uploaded file's path, untouched, to the handler (see ``_photo_component``)."""
    return _photo_component()(type="filepath", image_mode=None, **kwargs)


CSS = """  /* the app's own styles: pass to launch(css=CSS) (Gradio 6 takes CSS at launch) */
#intro .swatch { font-size: 1.2em; }
.dark #chat-highlights .token.highlighted {  /* Gradio writes black on the half-transparent class color */
  color: #ffffff !important; background-image: linear-gradient(rgba(0, 0, 0, 0.35), rgba(0, 0, 0, 0.35));
}
@media (max-width: 640px) { #chat-table table, #compare-ranking table { font-size: 0.8em; } }
"""


def build_demo(
    engine, sam=None, served=None, sam_message: str = "", examples=None, max_upload_mb=MAX_UPLOAD_MB, temp_age_s=None
):
    """The Gradio Blocks for a ``QGroundEngine`` and an optional ``qground.sam.SamAnnotator`` (queue enabled).
    ``examples``: ``qground.examples.Examples`` for the Chat and Compare tabs (None: the shipped ones when present);
    ``max_upload_mb``: the upload limit it states (``launch_options`` enforces it); ``temp_age_s``: how long files
    handed to or uploaded through Gradio are kept (``qground.service.Scratch``; default ``TEMP_AGE_S``)."""
    import gradio as gr

    from qground import examples as ex
    from qground import service as svc

    served = served or svc.served_model(engine)
    if examples is None:
        try:
            examples = ex.shipped()
        except ValueError as err:  # a damaged install: serve without examples
            log.warning("no examples: %s", err)
            examples = ex.Examples()
    scratch = svc.Scratch(max_age_s=temp_age_s or svc.TEMP_AGE_S, also=[svc.gradio_temp_dir()])
    card = svc.model_card(engine)
    with gr.Blocks(title="Q-Ground") as demo:  # its temp files are swept by ``scratch``
        gr.Markdown("# Q-Ground: where does this photo lose quality?")
        gr.Markdown(intro(bool(card), max_upload_mb), elem_id="intro")
        if served.random or served.notice:
            gr.Markdown(served.footer(), elem_id="model-notice")
        with gr.Tab("Chat"):
            settings = _chat_tab(gr, svc, engine, scratch, examples.chat)
        with gr.Tab("Compare"):
            _compare_tab(gr, svc, engine, scratch, settings, examples.compare)
        with gr.Tab("Annotate"):
            _annotate_tab(gr, svc, sam, scratch, sam_message)
        with gr.Tab("API"):
            _api_tab(gr, svc, engine, sam, scratch, demo)
        if card:
            with gr.Accordion("Model card: what this model is, how it was trained, its results and limits", open=False):
                gr.Markdown(card, elem_id="model-card")
        gr.Markdown(served.footer(), elem_id="footer")
    return demo.queue(default_concurrency_limit=1, max_size=32)


def _chat_tab(gr, svc, engine, scratch, examples: list) -> list:
    """Photo + conversation + masks; returns the generation-settings sliders (shared with Compare)."""
    from qground.visualize import color_map

    thread = gr.State(svc.Thread())
    with gr.Row():
        with gr.Column(scale=2):
            photo = _photo(label="Photo", height=300, elem_id="chat-photo")
            with gr.Row():
                assess, ground = gr.Button("Assess quality"), gr.Button("Ground distortions", variant="primary")
            default = engine.policy.default_strictness
            strictness_label = "Detection strictness (0 = as trained; higher: fewer false alarms, fewer finds)"
            if default:
                strictness_label += f"; default {default:g}, chosen on validation photos"
            with gr.Accordion("Generation settings", open=False):
                max_tokens = gr.Slider(16, 1024, 256, step=16, label="Max new tokens")
                temperature = gr.Slider(0.0, 2.0, 0.0, step=0.05, label="Temperature (0 = greedy)")
                top_p = gr.Slider(0.05, 1.0, 1.0, step=0.05, label="Top-p")
                strictness = gr.Slider(
                    0.0,
                    svc.MAX_STRICTNESS,
                    default,
                    step=0.5,
                    label=strictness_label,
                    visible=engine.config.readout,  # a readout-model setting (qground-nano)
                    elem_id="strictness",
                )
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(label="Conversation", height=340, buttons=["copy"], elem_id="chatbot")
            question = gr.Textbox(placeholder="Ask about the photo's quality…", show_label=False, elem_id="chat-q")
            with gr.Row():
                send = gr.Button("Send", variant="primary", size="sm", min_width=60, elem_id="chat-send")
                stop = gr.Button("Stop", variant="stop", size="sm", min_width=60)
                retry_btn, undo_btn, clear_btn = (
                    gr.Button(n, size="sm", min_width=60, elem_id=f"chat-{n.lower()}")
                    for n in ("Retry", "Undo", "Clear")
                )
    if examples:
        gr.Examples(
            [[e.path, e.question] for e in examples],
            [photo, question],
            example_labels=[e.caption for e in examples],
            label="Examples: click one, then Send",
            elem_id="chat-examples",
        )
    with gr.Row():
        with gr.Column(scale=3):
            annotated = _overlay_component()(
                label="Distortion masks", format="png", color_map=color_map(), height=460, elem_id="chat-masks"
            )
            with gr.Row():
                shown = gr.CheckboxGroup(label="Show classes", choices=[], elem_id="chat-classes")
                opacity = gr.Slider(0.0, 1.0, 0.5, step=0.05, label="Mask opacity", elem_id="chat-opacity")
        with gr.Column(scale=2):
            mask_status = gr.Markdown(elem_id="mask-status")
            highlights = gr.HighlightedText(
                label="Answer, distortion words colored",
                color_map=color_map(),
                show_inline_category=False,
                elem_id="chat-highlights",
            )
            table = gr.Dataframe(
                headers=svc.TABLE_HEADERS, label="Per class", interactive=False, wrap=True, elem_id="chat-table"
            )
            download = gr.File(label="Masks: one PNG per class + result.json", height=90)

    def _shown(t: svc.Thread):
        """The photo overlays are drawn on: the thread's preview (the photo is not decoded again), else its path."""
        return t.preview if t.preview is not None else t.image

    def results(t: svc.Thread, alpha: float) -> tuple:
        """Outputs derived from the thread: the latest answer's words, the latest masks drawn (``Thread.drawn``)."""
        r, drawn = t.result, t.drawn
        words = svc.highlight_spans(r.text) if r is not None else []
        if drawn is None:
            return None, gr.update(choices=[], value=[]), words, [], None, svc.drawn_note(t)
        d = drawn[1]
        archive = str(svc.masks_zip(d, scratch.path("masks.zip"), os.path.basename(t.image), engine.name))
        choices = svc.class_choices(d)
        return (
            svc.annotated_image(_shown(t), d, scratch, opacity=alpha, max_side=svc.DISPLAY_MAX_SIDE),
            gr.update(choices=choices, value=[name for _, name in choices]),
            words,
            svc.table_rows(d),
            archive,
            svc.drawn_note(t),
        )

    def show(t: svc.Thread) -> tuple:
        """Outputs of ``keep_question`` for thread ``t`` (what is typed in the question box stays)."""
        return t, svc.thread_messages(t), *results(t, 0.5)

    def finished_results(on_screen: svc.Thread, new: svc.Thread, alpha: float) -> tuple:
        """``results`` of a finished answer; when it drew no masks, what shows them stays (``svc.same_drawing``)."""
        if not svc.same_drawing(on_screen, new):
            return results(new, alpha)
        words = svc.highlight_spans(new.result.text)
        return gr.skip(), gr.skip(), words, gr.skip(), gr.skip(), svc.drawn_note(new)

    def ask(t, text, max_new, temp, p, strict, alpha, on_screen=None):
        """``on_screen``: the thread whose outputs are shown (default ``t``; a retry asks from the turn before it)."""
        settings = svc.generation_settings(max_new, temp, p, strict, engine.config.readout)
        on_screen = on_screen or t
        try:  # the pending answer's note names the stage (reading the photo, answering, drawing masks)
            for new, finished in svc.chat_turn(engine, t, text, settings):
                done = finished_results(on_screen, new, alpha) if finished else [gr.skip()] * 6
                yield new, svc.thread_messages(new), "", *done
        except svc.USER_ERRORS:  # what was asked and typed stays as it was
            yield t, svc.thread_messages(t), text, *[gr.skip()] * 6
            raise

    def preset(text: str):
        def run(t, max_new, temp, p, strict, alpha):
            yield from ask(t, text, max_new, temp, p, strict, alpha)

        return run

    def retry(t, max_new, temp, p, strict, alpha):
        previous, text = svc.undo_turn(t)
        yield from ask(previous, text, max_new, temp, p, strict, alpha, on_screen=t)

    def rerender(t: svc.Thread, classes: list[str], alpha: float):
        if t.drawn is None:
            return gr.skip()
        return svc.annotated_image(_shown(t), t.drawn[1], scratch, classes, alpha, max_side=svc.DISPLAY_MAX_SIDE)

    outputs = [thread, chatbot, question, annotated, shown, highlights, table, download, mask_status]
    knobs = [max_tokens, temperature, top_p, strictness, opacity]
    buttons = [send, assess, ground, retry_btn, undo_btn, clear_btn]
    keep_question = [o for o in outputs if o is not question]
    photo.change(lambda path: show(svc.new_thread(path, engine)), photo, keep_question, **INSTANT)
    progress_on = {"show_progress_on": [chatbot], "show_progress": "minimal", "scroll_to": "chatbot"}
    runs = [
        _run(send.click, ask, [thread, question, *knobs], outputs, buttons, **progress_on),
        _run(question.submit, ask, [thread, question, *knobs], outputs, buttons, **progress_on),
        _run(assess.click, preset(QUESTIONS["describe"]), [thread, *knobs], outputs, buttons, **progress_on),
        _run(ground.click, preset(QUESTIONS["ground"]), [thread, *knobs], outputs, buttons, **progress_on),
        _run(retry_btn.click, retry, [thread, *knobs], outputs, buttons, **progress_on),
    ]
    stop.click(lambda: [gr.update(interactive=True)] * len(buttons), None, buttons, cancels=runs, **INSTANT)

    def undo(t: svc.Thread) -> tuple:
        """The thread without its last exchange; that exchange's question goes back into the box to edit."""
        previous, text = svc.undo_turn(t)
        t, messages, *rest = show(previous)
        return t, messages, text, *rest

    undo_btn.click(_ui(undo, len(outputs)), thread, outputs, **INSTANT)
    clear_btn.click(lambda t: show(svc.clear_thread(t)), thread, keep_question, **INSTANT)
    shown.input(_ui(rerender, 1), [thread, shown, opacity], annotated, **PRIVATE)
    opacity.change(_ui(rerender, 1), [thread, shown, opacity], annotated, trigger_mode="always_last", **PRIVATE)
    return knobs[:4]


def _compare_tab(gr, svc, engine, scratch, settings: list, examples: list) -> None:
    """Slots A–D, preset or free question, streamed answer + ranking, per-image masks, A/B slider."""
    with gr.Row():
        slots = [
            _photo(label=f"Image {s}", height=220, sources=["upload", "clipboard"], elem_id=f"slot-{s}")
            for s in svc.SLOTS
        ]
    with gr.Row():
        preset = gr.Radio(list(COMPARE_PRESETS), value="Overall quality", label="Preset question", elem_id="preset")
        question = gr.Textbox(COMPARE_PRESETS["Overall quality"], label="Question", scale=2, elem_id="compare-q")
    if examples:
        gr.Examples(
            [[*e.paths, *[None] * (len(slots) - len(e.paths)), e.question] for e in examples],
            [*slots, question],
            example_labels=[e.caption for e in examples],
            label="Examples: click one, then Compare",
            elem_id="compare-examples",
        )
    with gr.Row():
        compare_btn = gr.Button("Compare", variant="primary", elem_id="compare-run")
        each_btn, swap_btn = gr.Button("Ground each image", elem_id="compare-each"), gr.Button("Swap A ↔ B")
    with gr.Row():
        with gr.Column():
            answer = gr.Textbox(label="Answer", lines=3, interactive=False, elem_id="compare-answer")
            ranking = gr.Dataframe(
                headers=svc.RANKING_HEADERS, label="Ranking", interactive=False, wrap=True, elem_id="compare-ranking"
            )
            note = gr.Markdown()
        slider = gr.ImageSlider(label="A / B", type="filepath", format="png")
    PROGRESS = gr.Progress()  # noqa: N806 — the default Gradio replaces by each request's tracker
    gallery = gr.Gallery(
        label="Distortion masks per image", format="png", columns=4, object_fit="contain", elem_id="compare-gallery"
    )

    def compare_slots(text, max_new, temp, p, strict, a, b, c, d, progress=PROGRESS):
        progress(0.0, desc="Reading the photos…")
        labels, paths = svc.compare_photos([a, b, c, d])
        progress(0.5, desc="Comparing…")
        answer = ("", None)  # (text so far, the choice head's probabilities once complete)
        settings = svc.generation_settings(max_new, temp, p, strict, engine.config.readout)
        for answer in svc.compare_turn(engine, paths, text, settings):
            yield answer[0], gr.skip(), gr.skip()
        yield answer[0], *svc.compare_outcome(engine, answer[0], labels, answer[1], text)

    def ground_slots(max_new, temp, p, strict, a, b, c, d, progress=PROGRESS):
        progress(0.0, desc="Reading the photos…")
        labels, paths = svc.compare_photos([a, b, c, d])
        settings = svc.generation_settings(max_new, temp, p, strict, engine.config.readout)
        progress((0, len(labels)), desc=f"Grounding image {labels[0]}…")
        shown = svc.ground_each(engine, labels, paths, settings, scratch, max_side=svc.DISPLAY_MAX_SIDE)
        for done, gallery in enumerate(shown, 1):
            if done < len(labels):
                progress((done, len(labels)), desc=f"Grounding image {labels[done]}…")
            yield gallery

    def forget(label: str):
        """Slot ``label`` changed: its masks leave the gallery."""

        def drop(entries):
            return [(path, caption) for path, caption in entries or [] if not caption.startswith(f"{label} —")]

        return drop

    buttons = [compare_btn, each_btn]
    preset.input(lambda label: COMPARE_PRESETS.get(label), preset, question, **INSTANT)
    presets = json.dumps({" ".join(text.split()).casefold(): label for label, text in COMPARE_PRESETS.items()})
    follow = f"(q) => ({presets})[(q || '').split(/\\s+/).filter(Boolean).join(' ').toLowerCase()] ?? null"
    question.input(None, question, preset, js=follow, **INSTANT)  # in the browser: no round trip, no reordering
    _run(compare_btn.click, compare_slots, [question, *settings, *slots], [answer, ranking, note], buttons,
         show_progress_on=[answer])  # fmt: skip
    _run(each_btn.click, ground_slots, [*settings, *slots], [gallery], buttons, show_progress_on=[gallery])
    swap_btn.click(lambda a, b: (b, a), slots[:2], slots[:2], **INSTANT)
    for label, slot in zip(svc.SLOTS, slots):
        slot.change(forget(label), gallery, gallery, **INSTANT)
        slot.change(lambda path: svc.prepare_photo(engine, path), slot, None, **INSTANT)
    for slot in slots[:2]:
        slot.change(lambda a, b: (a, b) if a and b else None, slots[:2], slider, **INSTANT)


def _annotate_tab(gr, svc, sam, scratch, sam_message: str) -> None:
    """Click include/exclude points, SAM draws the region, label it; undo/delete; export/import a zip."""
    from qground import sam as annot
    from qground.taxonomy import DISTORTIONS

    if sam is None:
        gr.Markdown(f"### Click-to-segment is switched off\n{sam_message or annot.SAM_HELP}")
        return
    ann = gr.State(None)
    gr.Markdown(f"Regions are drawn by {sam.name}; each click adds an include or exclude point.")
    with gr.Row():
        canvas = _photo(
            label="Photo: click to add points", sources=["upload"], format="png",
            elem_id="annotate-canvas", scale=3,
        )  # fmt: skip
        with gr.Column(scale=2):
            mode = gr.Radio(["Include", "Exclude"], value="Include", label="A click adds an … point")
            label = gr.Dropdown([(d.display, d.name) for d in DISTORTIONS], value="blur", label="Distortion")
            with gr.Row():
                add_btn, undo_btn = gr.Button("Add region", variant="primary"), gr.Button("Undo")
            with gr.Row():
                number, delete_btn = gr.Number(1, label="Region #", precision=0, minimum=1), gr.Button("Delete region")
            status = gr.Markdown(annot.status(None), elem_id="annotate-status")
            regions = gr.Dataframe(headers=["#", "Distortion", "Points", "Area %"], interactive=False)
            with gr.Row():
                export_btn = gr.Button("Export zip")
                imported = gr.UploadButton("Import zip", file_types=[".zip"])
            exported = gr.File(label="Annotation zip: QGround-100K layout (json, photo, color mask)", visible=False)

    def view(a) -> tuple:
        return a, scratch.png(annot.render(a), "annotate.png") if a else None, annot.region_rows(a), annot.status(a)

    def click(a, point_mode: str, evt: gr.SelectData):
        if a is None:
            raise svc.UserError("Upload a photo first.")
        return view(annot.add_point(sam, a, int(evt.index[0]), int(evt.index[1]), point_mode == "Include"))

    outputs = [ann, canvas, regions, status]
    canvas.upload(_model(lambda path: view(annot.start(sam, path)), 4), canvas, outputs, **MODEL)
    canvas.select(_model(click, 4), [ann, mode], outputs, **MODEL)
    canvas.clear(lambda: view(None), None, outputs, **INSTANT)
    undo_btn.click(_model(lambda a: view(annot.undo(sam, a)), 4), ann, outputs, **MODEL)
    add_btn.click(_ui(lambda a, name: view(annot.add_region(a, name)), 4), [ann, label], outputs, **PRIVATE)
    delete_btn.click(_ui(lambda a, n: view(annot.delete_region(a, int(n))), 4), [ann, number], outputs, **PRIVATE)
    export = _ui(lambda a: gr.update(value=str(annot.export_zip(a, scratch.path("annotation.zip"))), visible=True), 1)
    export_btn.click(export, ann, exported, **PRIVATE)
    imported.upload(
        _model(lambda path: view(annot.import_zip(sam, path, scratch.folder())), 4), imported, outputs, **MODEL
    )


def _api_tab(gr, svc, engine, sam, scratch, demo) -> None:
    """Usage notes and small forms whose buttons are the public, named endpoints (plain inputs: file(s) + text)."""
    from qground import sam as annot
    from qground.inference import GenerationSettings
    from qground.visualize import color_map

    doc = gr.Markdown(api_doc(_client_address(None), sam is not None), elem_id="api-doc")

    def doc_for(request: gr.Request) -> str:
        return api_doc(_client_address(request), sam is not None)

    demo.load(doc_for, None, doc, **INSTANT)
    strictness_slider = gr.Slider(
        0.0,
        svc.MAX_STRICTNESS,
        engine.policy.default_strictness,
        step=0.5,
        label="strictness",
        visible=engine.config.readout,
    )
    with gr.Accordion("Try /ground and /describe", open=False):
        photo, ask = _photo(label="image"), gr.Textbox(label="question")
        with gr.Row():
            ground_btn, describe_btn = gr.Button("/ground"), gr.Button("/describe")
        annotated = _overlay_component()(label="masks", format="png", color_map=color_map())
        answer, table = gr.Textbox(label="answer"), gr.Dataframe(headers=svc.TABLE_HEADERS, label="per class")
        masks = gr.File(label="masks zip")
    with gr.Accordion("Try /compare", open=False):
        files = gr.File(file_count="multiple", file_types=["image"], label="images (2–4)")
        compare_q, compare_btn = (
            gr.Textbox(QUESTIONS["compare"], label="question"),
            gr.Button("/compare"),
        )
        compare_answer, ranking = gr.Textbox(label="answer"), gr.Dataframe(headers=svc.RANKING_HEADERS, label="ranking")
        ranking_note = gr.Textbox(label="how to read the ranking")

    def settings(strictness: float):
        """The default generation settings with the request's strictness (validated like the Chat tab's)."""
        d = GenerationSettings()
        return svc.generation_settings(d.max_new_tokens, d.temperature, d.top_p, strictness, engine.config.readout)

    def ground(image: str, question: str, strictness: float):
        yield from svc.ground_request(engine, image, question, settings(strictness), scratch)

    def describe(image: str, question: str, strictness: float):
        yield from svc.describe_request(engine, image, question, settings(strictness))

    def compare(images: list[str], question: str):
        labels, paths = svc.compare_photos(images or [])
        answer = ("", None)  # (text so far, the choice head's probabilities once complete)
        for answer in svc.compare_turn(engine, paths, question, GenerationSettings()):
            yield answer[0], gr.skip(), gr.skip()
        yield answer[0], *svc.compare_outcome(engine, answer[0], labels, answer[1], question)

    def segment(image: str, regions_json: str):
        done = annot.annotate(sam, image, annot.parse_regions(regions_json))
        annotations = [(r.mask.astype("float32") * 0.5, r.label) for r in done.regions]
        return (svc.load_photo(image), annotations), str(annot.export_zip(done, scratch.path("annotation.zip")))

    api = {"concurrency_id": "model"}
    ground_btn.click(
        _model(ground), [photo, ask, strictness_slider], [annotated, answer, table, masks], api_name="ground", **api
    )
    describe_btn.click(_model(describe), [photo, ask, strictness_slider], answer, api_name="describe", **api)
    compare_outputs = [compare_answer, ranking, ranking_note]
    compare_btn.click(_model(compare), [files, compare_q], compare_outputs, api_name="compare", **api)
    if sam is not None:
        with gr.Accordion("Try /segment", open=False):
            seg_image = _photo(label="image")
            regions = gr.Textbox('[{"label": "blur", "points": [[10, 10]]}]', label="regions (JSON)")
            seg_btn, seg_out = gr.Button("/segment"), _overlay_component()(label="regions", format="png")
            seg_zip = gr.File(label="annotation zip")
        seg_btn.click(_model(segment), [seg_image, regions], [seg_out, seg_zip], api_name="segment", **api)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, load the model (with fallbacks) and SAM (optional), and serve the app."""
    parser = argparse.ArgumentParser(description="Q-Ground image-quality grounding app")
    parser.add_argument(
        "--model", help=f"registry name, checkpoint folder or Hub repo id [QGROUND_MODEL; {DEFAULT_MODEL}]"
    )
    parser.add_argument("--revision", help="Hub revision: branch, tag or commit [QGROUND_REVISION]")
    parser.add_argument("--quant", choices=["4bit", "8bit", "none"], help="[QGROUND_QUANT; 4bit on CUDA, else none]")
    parser.add_argument(
        "--dtype",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="compute dtype [QGROUND_DTYPE; auto: bf16 on CUDA where supported, else fp16; fp32 on CPU]",
    )
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=float(os.environ.get("QGROUND_MAX_UPLOAD_MB") or MAX_UPLOAD_MB),
        help=f"largest file accepted, in MB [QGROUND_MAX_UPLOAD_MB; {MAX_UPLOAD_MB:g}]",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=float(os.environ.get("QGROUND_TIME_BUDGET") or TIME_BUDGET_S),
        help=f"seconds an answer may take; then the answer so far is sent [QGROUND_TIME_BUDGET; {TIME_BUDGET_S:g}; "
        "0: no limit]",
    )
    parser.add_argument("--host", help="interface to listen on [GRADIO_SERVER_NAME or 127.0.0.1]")
    parser.add_argument("--port", type=int, help="port [GRADIO_SERVER_PORT or 7860]")
    parser.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:  # ZeroGPU: ``spaces`` must come before torch, so the model can be placed on the GPU at start-up
        import spaces  # noqa: F401
    except ImportError:
        pass

    from qground.sam import SamAnnotator
    from qground.service import load_engine_from_env

    if args.max_upload_mb <= 0 or args.time_budget < 0:
        parser.error("--max-upload-mb must be positive and --time-budget at least 0")
    engine, served = load_engine_from_env(args.model, args.revision, args.quant, args.dtype)
    engine.time_budget = args.time_budget or None
    sam, sam_message = SamAnnotator.from_env()
    demo = build_demo(engine, sam, served, sam_message, max_upload_mb=args.max_upload_mb)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_options(args.max_upload_mb))
