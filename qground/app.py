"""Q-Ground app: chat about a photo's quality with one mask per distortion, compare 2–4 photos, annotate with SAM.

``python app.py`` or ``python -m qground serve`` (both run ``main``) ``[--model NAME|FOLDER|REPO] [--revision REV]
[--quant 4bit|8bit|none] [--dtype auto|fp32|bf16|fp16] [--host H] [--port P] [--share]``; the environment gives the
defaults (QGROUND_MODEL, QGROUND_REVISION, QGROUND_QUANT, QGROUND_DTYPE, QGROUND_SAM). ``build_demo`` wires an engine
to the UI; the work is done in ``qground.service`` and ``qground.sam``, the default questions are
``qground.questions.QUESTIONS``. Nothing heavy runs at import.
Public endpoints for gradio_client: /ground, /describe, /compare, /segment; the UI's own handlers are private. Every
event that runs a model (Q-Ground or SAM) shares the queue ``concurrency_id="model"``.
"""

import argparse
import functools
import inspect
import logging
import os

from qground.models import DEFAULT_MODEL
from qground.questions import COMPARE_PRESETS, QUESTIONS

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

MODEL = {"concurrency_id": "model", "api_visibility": "private"}  # a private UI event that runs a model
PRIVATE = {"api_visibility": "private"}
INSTANT = {"queue": False, "api_visibility": "private"}  # cheap UI updates
API_DOC = """Every model call is a named endpoint. `pip install gradio_client`, then:
```python
from gradio_client import Client, handle_file
client = Client("http://127.0.0.1:7860")  # or the Space id, e.g. "ORG/qground"
overlay, answer, table, masks_zip = client.predict(handle_file("photo.jpg"), "", api_name="/ground")
answer = client.predict(handle_file("photo.jpg"), "How sharp is this photo?", api_name="/describe")
answer, ranking, note = client.predict([handle_file("a.jpg"), handle_file("b.jpg")], "Which is sharper?",
                                      api_name="/compare")
overlay, answer, table, masks_zip = client.predict(handle_file("photo.jpg"), "", 6.0, api_name="/ground")
regions, annotation_zip = client.predict(handle_file("photo.jpg"), '[{"label": "blur", "points": [[120, 80]]}]',
                                         api_name="/segment")
```
`/ground` returns `{"image", "annotations": [{"image", "label"}]}` (labels are class names), the answer, the rows
(class, area %, score) and a zip of one lossless PNG mask per class + `result.json`; a blank question asks the default
grounding (/ground) or assessment (/describe) question. `client.submit(...)` streams the answer (`job.outputs()`).
/ground and /describe take an optional third input, the detection strictness (0–8; models with a distortion readout
such as qground-nano; default: the model's inference policy's `default_strictness`, chosen on validation photos):
higher means fewer false alarms on clean photos, fewer distortions found; 0 = as trained. /compare ranks the images
by their evidence as read."""


def _gpu(fn):
    """``spaces.GPU`` on Hugging Face ZeroGPU Spaces (a no-op elsewhere); the function itself without ``spaces``."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(fn)


def _friendly(fn):
    """Show the service's user errors as ``gr.Error`` toasts (a generator stays a generator, for streaming)."""
    import gradio as gr

    from qground.service import USER_ERRORS

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except USER_ERRORS as err:
                raise gr.Error(str(err)) from None

        return stream

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as err:
            raise gr.Error(str(err)) from None

    return call


def _model(fn):
    """A handler that runs a model: GPU-scheduled on ZeroGPU, user errors shown as toasts."""
    return _gpu(_friendly(fn))


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


def _photo(**kwargs):
    """A photo input handing the uploaded file's path, untouched, to the handler (see ``_photo_component``)."""
    return _photo_component()(type="filepath", image_mode=None, **kwargs)


def build_demo(engine, sam=None, served=None, sam_message: str = ""):
    """The Gradio Blocks for a ``QGroundEngine`` and an optional ``qground.sam.SamAnnotator`` (queue enabled)."""
    import gradio as gr

    from qground import service as svc

    served = served or svc.served_model(engine)
    scratch = svc.Scratch()
    with gr.Blocks(title="Q-Ground", delete_cache=(1800, 3600)) as demo:
        gr.Markdown("# Q-Ground: where does this photo lose quality?")
        if served.random or served.notice:
            gr.Markdown(served.footer(), elem_id="model-notice")
        with gr.Tab("Chat"):
            settings = _chat_tab(gr, svc, engine, scratch)
        with gr.Tab("Compare"):
            _compare_tab(gr, svc, engine, scratch, settings)
        with gr.Tab("Annotate"):
            _annotate_tab(gr, svc, sam, scratch, sam_message)
        with gr.Tab("API"):
            _api_tab(gr, svc, engine, sam, scratch)
        gr.Markdown(served.footer(), elem_id="footer")
    return demo.queue(default_concurrency_limit=1, max_size=32)


def _chat_tab(gr, svc, engine, scratch) -> list:
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
                send = gr.Button("Send", variant="primary", size="sm", min_width=60)
                stop = gr.Button("Stop", variant="stop", size="sm", min_width=60)
                retry_btn, undo_btn, clear_btn = (
                    gr.Button(n, size="sm", min_width=60) for n in ("Retry", "Undo", "Clear")
                )
    with gr.Row():
        with gr.Column(scale=3):
            annotated = gr.AnnotatedImage(
                label="Distortion masks", format="png", color_map=color_map(), height=460, elem_id="chat-masks"
            )
            with gr.Row():
                shown = gr.CheckboxGroup(label="Show classes", choices=[], elem_id="chat-classes")
                opacity = gr.Slider(0.0, 1.0, 0.5, step=0.05, label="Mask opacity")
        with gr.Column(scale=2):
            mask_status = gr.Markdown(elem_id="mask-status")
            highlights = gr.HighlightedText(label="Answer, distortion words colored", color_map=color_map())
            table = gr.Dataframe(headers=svc.TABLE_HEADERS, label="Per class", interactive=False)
            download = gr.File(label="Masks: one PNG per class + result.json", height=90)

    def results(t: svc.Thread, alpha: float) -> tuple:
        """Outputs derived from the thread's last result (cleared when there is none)."""
        r = t.result
        if r is None:
            return None, gr.update(choices=[], value=[]), [], [], None, ""
        archive = None
        if r.masks:
            archive = str(svc.masks_zip(r, scratch.path("masks.zip"), os.path.basename(t.image), engine.name))
        choices = svc.class_choices(r)
        return (
            svc.annotated_image(t.image, r, scratch, opacity=alpha),
            gr.update(choices=choices, value=[name for _, name in choices]),
            svc.highlight_spans(r.text),
            svc.table_rows(r),
            archive,
            svc.mask_note(r),
        )

    def show(t: svc.Thread, text: str = "") -> tuple:
        return t, svc.thread_messages(t), text, *results(t, 0.5)

    def ask(t, text, max_new, temp, p, strict, alpha):
        settings = svc.generation_settings(max_new, temp, p, strict, engine.config.readout)
        for new, finished in svc.chat_turn(engine, t, text, settings):
            yield new, svc.thread_messages(new), "", *(results(new, alpha) if finished else [gr.skip()] * 6)

    def preset(text: str):
        def run(t, max_new, temp, p, strict, alpha):
            yield from ask(t, text, max_new, temp, p, strict, alpha)

        return run

    def retry(t, max_new, temp, p, strict, alpha):
        previous, text = svc.undo_turn(t)
        yield from ask(previous, text, max_new, temp, p, strict, alpha)

    def rerender(t: svc.Thread, classes: list[str], alpha: float):
        return svc.annotated_image(t.image, t.result, scratch, classes, alpha) if t.result else gr.skip()

    outputs = [thread, chatbot, question, annotated, shown, highlights, table, download, mask_status]
    knobs = [max_tokens, temperature, top_p, strictness, opacity]
    photo.change(lambda path: show(svc.new_thread(path)), photo, outputs, **INSTANT)
    runs = [
        send.click(_model(ask), [thread, question, *knobs], outputs, **MODEL),
        question.submit(_model(ask), [thread, question, *knobs], outputs, **MODEL),
        assess.click(_model(preset(QUESTIONS["describe"])), [thread, *knobs], outputs, **MODEL),
        ground.click(_model(preset(QUESTIONS["ground"])), [thread, *knobs], outputs, **MODEL),
        retry_btn.click(_model(retry), [thread, *knobs], outputs, **MODEL),
    ]
    stop.click(None, cancels=runs, **INSTANT)
    undo_btn.click(_friendly(lambda t: show(*svc.undo_turn(t))), thread, outputs, **INSTANT)
    clear_btn.click(lambda t: show(svc.clear_thread(t)), thread, outputs, **INSTANT)
    shown.input(_friendly(rerender), [thread, shown, opacity], annotated, **PRIVATE)
    opacity.release(_friendly(rerender), [thread, shown, opacity], annotated, **PRIVATE)
    return knobs[:4]


def _compare_tab(gr, svc, engine, scratch, settings: list) -> None:
    """Slots A–D, preset or free question, streamed answer + ranking, per-image masks, A/B slider."""
    with gr.Row():
        slots = [
            _photo(label=f"Image {s}", height=220, sources=["upload", "clipboard"], elem_id=f"slot-{s}")
            for s in svc.SLOTS
        ]
    with gr.Row():
        preset = gr.Radio(list(COMPARE_PRESETS), value="Overall quality", label="Preset question")
        question = gr.Textbox(COMPARE_PRESETS["Overall quality"], label="Question", scale=2)
    with gr.Row():
        compare_btn = gr.Button("Compare", variant="primary")
        each_btn, swap_btn = gr.Button("Ground each image"), gr.Button("Swap A ↔ B")
    with gr.Row():
        with gr.Column():
            answer = gr.Textbox(label="Answer", lines=3, interactive=False)
            ranking = gr.Dataframe(headers=svc.RANKING_HEADERS, label="Ranking", interactive=False)
            note = gr.Markdown()
        slider = gr.ImageSlider(label="A / B", type="filepath", format="png")
    gallery = gr.Gallery(label="Distortion masks per image", format="png", columns=4, object_fit="contain")

    def compare_slots(text, max_new, temp, p, strict, *paths):
        labels, photos = svc.compare_photos(paths)
        answer = ("", None)  # (text so far, the choice head's probabilities once complete)
        settings = svc.generation_settings(max_new, temp, p, strict, engine.config.readout)
        for answer in svc.compare_turn(engine, photos, text, settings):
            yield answer[0], gr.skip(), gr.skip()
        yield answer[0], *svc.ranking_rows(answer[0], labels, answer[1], text)

    def ground_slots(max_new, temp, p, strict, *paths):
        labels, photos = svc.compare_photos(paths)
        settings = svc.generation_settings(max_new, temp, p, strict, engine.config.readout)
        yield from svc.ground_each(engine, labels, photos, settings, scratch)

    preset.input(lambda label: COMPARE_PRESETS.get(label), preset, question, **INSTANT)
    compare_btn.click(_model(compare_slots), [question, *settings, *slots], [answer, ranking, note], **MODEL)
    each_btn.click(_model(ground_slots), [*settings, *slots], gallery, **MODEL)
    swap_btn.click(lambda a, b: (b, a), slots[:2], slots[:2], **INSTANT)
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
            exported = gr.File(label="Annotation zip: record.json + masks/*.png + the photo", visible=False)

    def view(a) -> tuple:
        return a, scratch.png(annot.render(a), "annotate.png") if a else None, annot.region_rows(a), annot.status(a)

    def click(a, point_mode: str, evt: gr.SelectData):
        if a is None:
            raise svc.UserError("Upload a photo first.")
        return view(annot.add_point(sam, a, int(evt.index[0]), int(evt.index[1]), point_mode == "Include"))

    outputs = [ann, canvas, regions, status]
    canvas.upload(_model(lambda path: view(annot.start(sam, path))), canvas, outputs, **MODEL)
    canvas.select(_model(click), [ann, mode], outputs, **MODEL)
    canvas.clear(lambda: view(None), None, outputs, **INSTANT)
    undo_btn.click(_model(lambda a: view(annot.undo(sam, a))), ann, outputs, **MODEL)
    add_btn.click(_friendly(lambda a, name: view(annot.add_region(a, name))), [ann, label], outputs, **PRIVATE)
    delete_btn.click(_friendly(lambda a, n: view(annot.delete_region(a, int(n)))), [ann, number], outputs, **PRIVATE)
    export = _friendly(
        lambda a: gr.update(value=str(annot.export_zip(a, scratch.path("annotation.zip"))), visible=True)
    )
    export_btn.click(export, ann, exported, **PRIVATE)
    imported.upload(
        _model(lambda path: view(annot.import_zip(sam, path, scratch.folder()))), imported, outputs, **MODEL
    )


def _api_tab(gr, svc, engine, sam, scratch) -> None:
    """Usage notes and small forms whose buttons are the public, named endpoints (plain inputs: file(s) + text)."""
    from qground import sam as annot
    from qground.inference import GenerationSettings
    from qground.visualize import color_map

    gr.Markdown(API_DOC)
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
        annotated = gr.AnnotatedImage(label="masks", format="png", color_map=color_map())
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
        labels, photos = svc.compare_photos(images or [])
        answer = ("", None)  # (text so far, the choice head's probabilities once complete)
        for answer in svc.compare_turn(engine, photos, question, GenerationSettings()):
            yield answer[0], gr.skip(), gr.skip()
        yield answer[0], *svc.ranking_rows(answer[0], labels, answer[1], question)

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
            seg_btn, seg_out = gr.Button("/segment"), gr.AnnotatedImage(label="regions", format="png")
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
    parser.add_argument("--host", help="interface to listen on [GRADIO_SERVER_NAME or 127.0.0.1]")
    parser.add_argument("--port", type=int, help="port [GRADIO_SERVER_PORT or 7860]")
    parser.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from qground.sam import SamAnnotator
    from qground.service import load_engine_from_env

    engine, served = load_engine_from_env(args.model, args.revision, args.quant, args.dtype)
    sam, sam_message = SamAnnotator.from_env()
    build_demo(engine, sam, served, sam_message).launch(server_name=args.host, server_port=args.port, share=args.share)
