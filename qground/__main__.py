"""Command line: ``python -m qground {serve,info,ground,eval,describe,compare,convert} …`` (``--help`` on each).

Exit codes: 0 success; 1 some images failed (the others are still written); 2 usage errors (bad arguments, no
input images, a model that cannot be loaded).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from qground.builder import REGISTRY, build_from_registry
from qground.checkpoint import QUANT_CHOICES, CheckpointError
from qground.convert import DEFAULT_CLIP, KINDS, RELEASES, ConversionError, Hardcoded, convert, fetch
from qground.evaluate import (
    ANNOTATOR_USES,
    IMAGE_EXTENSIONS,
    TASKS,
    evaluate,
    evaluate_qground_test,
    qground_test_table,
    read_qground_test,
    report_table,
    side_by_side_table,
)
from qground.imageio import ImageLoadError, load_image
from qground.inference import MAX_STRICTNESS, GenerationSettings, GroundingResult, QGroundEngine
from qground.mcq import evaluate_mcq, mcq_table, read_mcq
from qground.models import DEFAULT_MODEL, resolve_model
from qground.palette import DEFAULT_PALETTE, Palette, PaletteError
from qground.processor import PromptTooLongError
from qground.prompts import Turn, ordinal
from qground.questions import QUESTIONS
from qground.service import load_engine
from qground.taxonomy import CLASS_NAMES, get
from qground.visualize import overlay

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A problem with the command's arguments or environment; exit code 2."""


def summary(name: str) -> str:
    """Architecture summary and parameter counts of a registry model, built on the meta device (no download)."""
    model, _ = build_from_registry(name, device="meta")
    c = model.config
    parts = {
        "vision tower (frozen)": model.vision_tower,
        "φv projector": model.projector,
        "LLM": model.language_model,
        "lm_head": model.llava.lm_head,
        "seg head": model.seg_head,
        "pixel decoder": model.pixel_decoder,
    }
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
    total = sum(p.numel() for p in model.parameters())
    lines = [
        f"{name}: {REGISTRY[name].description}",
        f"  base model     {c.base_model_id}   vision {c.vision.hub_id}",
        f"  input          {c.image_size}×{c.image_size} px, patch {c.vision.patch_size} → {c.grid}×{c.grid} patches "
        f"(native {c.vision.native_image_size})",
        f"  φv             layers {list(c.feature_layers)} → pool {c.projector_pool} → "
        f"{c.num_image_tokens} tokens/image" + (" (1 when several)" if c.multi_image_global_only else ""),
        f"  LLM            {c.llm.num_layers} layers × {c.llm.hidden_size}, vocab {c.llm.vocab_size}",
        f"  seg tokens     {c.seg_levels} levels × {c.seg_tokens_per_level} = {c.seg_count} per target",
        f"  pixel decoder  layers {list(c.decoder.layers)}, dim {c.decoder.dim}, depth {c.decoder.depth}, "
        f"masks at {4 * c.grid}×{4 * c.grid}",
        f"  loss           {c.loss.ce}·CE + {c.loss.mask}·({c.loss.bce}·BCE + {c.loss.dice}·DICE)",
        f"  LoRA           r {c.lora.r}, α {c.lora.alpha}",
        "  parameters:",
        *(f"    {k:<22}{v:>16,}" for k, v in counts.items()),
        f"    {'total':<22}{total:>16,}  ({total / 1e9:.3f} B)",
    ]
    return "\n".join(lines)


# -- ground ------------------------------------------------------------------------------------------------------------
def expand_inputs(paths: list[str]) -> list[Path]:
    """Files as given, directories as their image files (by extension, sorted, not recursive)."""
    found = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not images:
                raise UsageError(f"{path} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
            found += images
        else:
            found.append(path)
    return found


def output_names(paths: list[Path]) -> list[str]:
    """One output folder name per input: its stem, made unique with "-2", "-3"… when stems repeat."""
    used: set[str] = set()
    names = []
    for path in paths:
        name, k = path.stem, 1
        while name in used:
            k += 1
            name = f"{path.stem}-{k}"
        used.add(name)
        names.append(name)
    return names


def _load(path: Path) -> Image.Image | Exception:
    try:
        return load_image(path)
    except (ImageLoadError, OSError) as e:
        return e


def error_message(path: Path, error: Exception) -> str:
    """The message for a file that failed, "PATH: reason", naming the path once even when the reason names it."""
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return reason if str(path) in reason else f"{path}: {reason}"


def prefetch(paths: list[Path], ahead: int) -> Iterator[tuple[Path, Image.Image | Exception]]:
    """``(path, image or the error that prevented loading it)`` in order, decoding up to ``ahead`` images in
    background threads while the caller works on the current one (``ahead`` 1: no background work)."""
    if ahead <= 1:
        yield from ((p, _load(p)) for p in paths)
        return
    with ThreadPoolExecutor(max_workers=min(ahead, os.cpu_count() or 1)) as pool:
        pending: list[tuple[Path, Future]] = []
        for path in paths:
            pending.append((path, pool.submit(_load, path)))
            if len(pending) >= ahead:
                done, future = pending.pop(0)
                yield done, future.result()
        for done, future in pending:
            yield done, future.result()


def write_result(
    folder: Path, image: Image.Image, result: GroundingResult, source: Path, engine: QGroundEngine, question: str
) -> None:
    """``folder/<class key>.png`` (uint8 (H, W), 255 = the class) per class found (stale class files removed),
    ``overlay.png`` and ``result.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in CLASS_NAMES:
        stale = folder / f"{get(name).key}.png"
        if name not in result.masks and stale.exists():
            stale.unlink()
    for name, mask in result.masks.items():
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{get(name).key}.png")
    Image.fromarray(overlay(image, result.masks)).save(folder / "overlay.png")
    record = {
        "image": str(source),
        "size": {"height": image.height, "width": image.width},
        "model": engine.name,
        "question": question,
        "read_as": engine.read_question(question),  # through the model's lexicon, if any
        "answer": result.text,
        "classes": list(result.masks),
        "area_percent": {name: r.area_percent for name, r in result.regions.items()},
        "where": {name: r.where for name, r in result.regions.items()},
        "scores": result.scores,
        "strictness": result.strictness,
        "timings": result.timings,
        "warnings": result.warnings,
    }
    (folder / "result.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")


def _answer(
    engine: QGroundEngine, images: list[Image.Image], question: str, settings: GenerationSettings
) -> GroundingResult:
    """``engine.chat`` on one question; a question too long for the model is a usage error."""
    try:
        return engine.chat(images, [Turn(question)], settings)
    except PromptTooLongError as e:
        raise UsageError(str(e)) from None


def ground_one(
    engine: QGroundEngine,
    path: Path,
    loaded: Image.Image | Exception,
    folder: Path,
    question: str,
    settings: GenerationSettings,
) -> str | None:
    """Ground one loaded image and write its outputs into ``folder``; returns the error message, or None on
    success."""
    if isinstance(loaded, Exception):
        return error_message(path, loaded)
    result = _answer(engine, [loaded], question, settings)
    try:
        write_result(folder, loaded, result, path, engine, question)
    except OSError as e:
        return f"{path}: cannot write {folder}: {e.strerror or e}"
    return None


def run_ground(args: argparse.Namespace) -> int:
    """Ground every input image and write its masks, overlay and result.json under ``--out``."""
    if args.batch < 1:
        raise UsageError("--batch must be at least 1")
    paths = expand_inputs(args.inputs)
    engine, settings = load_engine_and_settings(args)
    out = Path(args.out)
    failed = 0
    with tqdm(total=len(paths), unit="image", desc="ground", dynamic_ncols=True) as bar:
        for (path, loaded), name in zip(prefetch(paths, args.batch), output_names(paths)):
            error = ground_one(engine, path, loaded, out / name, args.question, settings)
            if error is not None:
                failed += 1
                tqdm.write(f"error: {error}", file=sys.stderr)
            bar.update(1)
    print(f"{len(paths) - failed} of {len(paths)} images grounded into {out}", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


# -- eval, describe, compare -------------------------------------------------------------------------------------------
def run_eval(args: argparse.Namespace) -> int:
    """Evaluate on a synthetic folder (``--data``), a multiple-choice benchmark file (``--mcq``) or QGround-Test
    (``--qground-test``); print the table and write the JSON report."""
    if args.qground_test is not None:
        return run_qground_test(args)
    given = [f"--{name}" for name in ("masks", "palette", "annotators") if getattr(args, name) is not None]
    if given:
        raise UsageError(f"{', '.join(given)} go{'es' * (len(given) == 1)} with --qground-test only")
    if args.mcq is not None:
        return run_mcq(args)
    if args.images is not None:
        raise UsageError("--images goes with --mcq or --qground-test, not --data")
    tasks = [t.strip() for t in (",".join(TASKS) if args.tasks is None else args.tasks).split(",") if t.strip()]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown or not tasks:
        raise UsageError(f"--tasks takes a comma-separated subset of {','.join(TASKS)}, got {args.tasks!r}")
    if not (Path(args.data) / "images").is_dir():
        raise UsageError(f"{args.data} is not an evaluation folder: it has no images/ folder")
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    if args.jpeg is not None and not 1 <= args.jpeg <= 95:
        raise UsageError(f"--jpeg takes a JPEG quality in 1–95, got {args.jpeg}")
    engine, settings = load_engine_and_settings(args)
    try:
        report = evaluate(engine, args.data, tasks, args.limit, settings=settings, jpeg=args.jpeg)
    except (ValueError, FileNotFoundError) as e:  # malformed data (ImageLoadError and JSON errors included)
        raise UsageError(f"{args.data}: {e}") from None
    print(report_table(report))
    reports = {engine.name: report}
    for other in args.against:  # each at its own default strictness, on the same items
        try:
            rival = load_engine(resolve_model(other), revision=None, quant=args.quant)
        except CheckpointError as e:
            raise UsageError(f"--against: cannot load the model {other!r}: {e}") from None
        rival_settings = GenerationSettings(strictness=rival.policy.default_strictness)
        reports[rival.name] = evaluate(rival, args.data, tasks, args.limit, settings=rival_settings, jpeg=args.jpeg)
    if args.against:
        report["against"] = {name: r for name, r in reports.items() if name != engine.name}
        print("\n" + side_by_side_table(reports))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return EXIT_OK


def run_mcq(args: argparse.Namespace) -> int:
    """``eval --mcq FILE``: the model's accuracy on a MICBench / Q-Bench-pair multiple-choice file
    (``qground.mcq``); print the table and write the JSON report."""
    _check_file_eval(args, "--mcq")
    try:
        bench = read_mcq(args.mcq, args.images)
    except OSError as e:
        raise UsageError(error_message(Path(args.mcq), e)) from None
    except ValueError as e:  # MCQFormatError: one line naming the file, record and field
        raise UsageError(str(e)) from None
    missing = next((p for item in bench.items[: args.limit] for p in item.images if not p.is_file()), None)
    if missing is not None:
        raise UsageError(f"{args.mcq}: no image {missing} (--images DIR: the folder its image paths are relative to)")
    engine, settings = load_engine_and_settings(args)
    try:
        report = evaluate_mcq(engine, bench, args.limit, settings=settings)
    except ValueError as e:  # an image that cannot be read (ImageLoadError), a prompt too long for the model
        raise UsageError(f"{args.mcq}: {e}") from None
    return _report(mcq_table(report), report, args.out)


def run_qground_test(args: argparse.Namespace) -> int:
    """``eval --qground-test FILE``: the model's masks on QGround-Test scored against the annotators' color masks
    (``qground.evaluate.evaluate_qground_test``); print the table and write the JSON report. The split, its files and
    the palette are checked before the model is loaded."""
    _check_file_eval(args, "--qground-test")
    try:
        palette = Palette.load(args.palette or DEFAULT_PALETTE)
        items = read_qground_test(args.qground_test, args.images, args.masks)[: args.limit]
    except OSError as e:
        raise UsageError(error_message(Path(args.qground_test), e)) from None
    except ValueError as e:  # PaletteError, or a layout error naming the file, record and field
        raise UsageError(str(e)) from None
    missing = next(
        (p for item in items for p in (item.image, *(r.mask for r in item.references)) if not p.is_file()), None
    )
    if missing is not None:
        raise UsageError(f"{args.qground_test}: no file {missing} (--images DIR / --masks DIR: the folders it names)")
    engine, settings = load_engine_and_settings(args)
    try:
        report = evaluate_qground_test(
            engine, items, palette, args.annotators or "each", settings=settings, data=args.qground_test
        )
    except (ValueError, PaletteError) as e:  # an unreadable image or mask, a mask of another size or palette
        raise UsageError(str(e)) from None
    return _report(qground_test_table(report), report, args.out)


def _check_file_eval(args: argparse.Namespace, flag: str) -> None:
    """Options an evaluation of one benchmark file (``flag``) cannot take."""
    if args.tasks is not None or args.against or args.jpeg is not None:
        raise UsageError(f"--tasks, --against and --jpeg go with --data, not {flag}")
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")


def _report(table: str, report: dict, out: str | None) -> int:
    """Print ``table``; write ``report`` as JSON to ``out`` when given."""
    print(table)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return EXIT_OK


def run_chat(args: argparse.Namespace) -> int:
    """``describe`` / ``compare``: print the model's answer about the given image(s), then for each image the answer
    points at with a choice head, the head's probability of every image."""
    images = []
    for path in map(Path, args.images):
        try:
            images.append(load_image(path))
        except (ImageLoadError, OSError) as e:
            print(f"error: {error_message(path, e)}", file=sys.stderr)
            return EXIT_SOME_FAILED
    engine, settings = load_engine_and_settings(args)
    result = _answer(engine, images, args.question, settings)
    print(result.text)
    for probs in result.choices:
        print("choice probability: " + ", ".join(f"{ordinal(k)} image {p:.2f}" for k, p in enumerate(probs)))
    return EXIT_OK


# -- parser ------------------------------------------------------------------------------------------------------------
def run_convert(args: argparse.Namespace) -> int:
    """``convert KIND SRC --out DIR``: exit 0 with the folder written, 2 (one-line error) when it cannot be done."""
    release = RELEASES.get(args.source)
    subfolder = args.subfolder if args.subfolder is not None else (release.subfolder if release else "")
    clip = args.clip or (release.clip if release else DEFAULT_CLIP)
    try:
        layers = tuple(int(x) for x in args.decoder_layers.split(","))
        if len(layers) != 2:
            raise ValueError
    except ValueError:
        raise UsageError(f"--decoder-layers takes two comma-separated indices, got {args.decoder_layers!r}") from None
    try:
        source = fetch(args.source, args.revision, subfolder, allow_bin=args.allow_bin)
        clip_folder = fetch(clip, args.clip_revision, allow_bin=args.allow_bin)
        convert(
            args.kind,
            source,
            clip_folder,
            Path(args.out),
            allow_bin=args.allow_bin,
            hardcoded=Hardcoded(args.decoder_heads, layers),
            origin=args.source,
            revision=args.revision,
            licence=release.licence if release else "",
        )
    except (ConversionError, CheckpointError) as e:
        raise UsageError(str(e)) from None
    return EXIT_OK


def _add_model_options(parser: argparse.ArgumentParser, strictness: bool = True) -> None:
    """--model, --revision, --quant, and --strictness for commands about one image at a time (comparisons rank images
    by their evidence as read)."""
    parser.add_argument(
        "--model",
        help=f"registry name, checkpoint folder or Hub repo id (default: $QGROUND_MODEL, else {DEFAULT_MODEL})",
    )
    parser.add_argument("--revision", default=os.environ.get("QGROUND_REVISION"), help="Hub revision (tag/commit)")
    parser.add_argument("--quant", choices=QUANT_CHOICES, default="none", help="load the LLM in 4 or 8 bits")
    if not strictness:
        parser.set_defaults(strictness=None)
        return
    parser.add_argument(
        "--strictness",
        type=float,
        help=f"0–{MAX_STRICTNESS:g}, models with a distortion readout (qground-nano): higher = fewer false alarms on "
        "clean photos, fewer distortions found (default: the model's default_strictness, chosen on validation photos; "
        "0 = as trained)",
    )


def load_engine_and_settings(args: argparse.Namespace) -> tuple[QGroundEngine, GenerationSettings]:
    """The model of ``--model`` (a registry name, checkpoint folder or Hub repo id; without it ``$QGROUND_MODEL``, else
    ``DEFAULT_MODEL``: ``qground.models.resolve_model``) and the generation settings of the command line, checked
    against each other; UsageError with what to set when the model cannot be loaded. Without ``--strictness`` the
    model's ``default_strictness`` applies."""
    try:  # checked before the (slow) model load
        requested = None if args.strictness is None else GenerationSettings(strictness=args.strictness)
    except ValueError as e:
        raise UsageError(f"--strictness: {e}") from None
    chosen = resolve_model(args.model)  # --model, else $QGROUND_MODEL, else the default
    try:
        engine = load_engine(chosen, revision=args.revision, quant=args.quant)
    except CheckpointError as e:
        hint = (
            ""
            if args.model
            else " — pass --model NAME_OR_FOLDER_OR_REPO or set QGROUND_MODEL to a checkpoint folder or Hub repo id"
        )
        raise UsageError(f"cannot load the model {chosen!r}: {e}{hint}") from None
    settings = requested or GenerationSettings(strictness=engine.policy.default_strictness)
    try:
        settings.check_model(engine.config.readout)
    except ValueError as e:
        raise UsageError(f"--{e}; {engine.name} has none") from None
    return engine, settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m qground", description="Q-Ground image-quality grounding")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the Gradio app (same options as `python app.py`)")
    info = sub.add_parser("info", help="architecture summary and parameter counts (no download)")
    info.add_argument("name", choices=sorted(REGISTRY))

    ground = sub.add_parser("ground", help="segment the distortions of images; write masks, overlays, result.json")
    ground.add_argument("inputs", nargs="+", metavar="IMG_OR_DIR", help="image files and/or folders of images")
    ground.add_argument("--out", required=True, help="output folder: OUT/STEM/<class>.png, overlay.png, result.json")
    ground.add_argument("--question", default=QUESTIONS["ground"])
    ground.add_argument("--batch", type=int, default=1, help="images decoded ahead while the model runs (default 1)")
    _add_model_options(ground)

    ev = sub.add_parser(
        "eval",
        help="metrics on an evaluation folder (model vs classical baseline vs all-empty) or on QGround-Test, or "
        "accuracy on a multiple-choice benchmark file",
    )
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="folder with images/, gt/, optional describe.json, compare.json")
    source.add_argument(
        "--mcq",
        metavar="FILE",
        help="a MICBench / Q-Bench(-pair) multiple-choice file, JSON or JSON lines (layouts: qground.mcq)",
    )
    source.add_argument(
        "--qground-test",
        metavar="FILE",
        help="QGround-100K's test split (qground_dataset/qground_test.json): mIoU, mAcc against its annotators' masks",
    )
    ev.add_argument(
        "--images",
        metavar="DIR",
        help="with --mcq: the folder its image paths are relative to (default: the file's folder); with "
        "--qground-test: the image folder (default: images/ beside the file)",
    )
    ev.add_argument(
        "--masks", metavar="DIR", help="with --qground-test: the mask folder (default: masks/ beside the file)"
    )
    ev.add_argument(
        "--palette",
        metavar="FILE",
        help="with --qground-test: the classes' mask colors, a JSON palette (qground.palette; default: "
        f"assets/palettes/{DEFAULT_PALETTE.name})",
    )
    ev.add_argument(
        "--annotators",
        choices=ANNOTATOR_USES,
        help="with --qground-test: each annotator's mask a reference of its own (each, default) or one majority mask",
    )
    ev.add_argument("--tasks", help=f"with --data: comma-separated subset of {','.join(TASKS)} (default: all)")
    ev.add_argument(
        "--limit",
        type=int,
        help="at most N items per task (with --mcq: the first N questions; with --qground-test: images)",
    )
    ev.add_argument("--out", help="write the JSON report here")
    ev.add_argument(
        "--against",
        action="append",
        default=[],
        metavar="MODEL",
        help="also evaluate this model (name, folder or Hub repo id; repeatable) on the same items, each at its own "
        "default strictness, and print the models side by side",
    )
    ev.add_argument(
        "--jpeg",
        type=int,
        metavar="QUALITY",
        help="with --data: every image goes through one JPEG save at this quality (1–95, 4:2:0) before the models "
        "see it, as a camera's or the web's photos have",
    )
    _add_model_options(ev)

    describe = sub.add_parser("describe", help="describe the quality of one image")
    describe.add_argument("images", nargs=1, metavar="IMG")
    describe.add_argument("--question", default=QUESTIONS["describe"])
    _add_model_options(describe)

    convert = sub.add_parser(
        "convert", help="convert a released PixelLM or Q-Ground checkpoint into a folder qground serves"
    )
    convert.add_argument("kind", choices=KINDS, help="pixellm (PixelLM-7B/13B) or qground (chaofengc/qg_model_*)")
    convert.add_argument("source", metavar="SRC", help="the release: a folder or a Hub repo id")
    convert.add_argument(
        "--clip",
        metavar="CLIP_SRC",
        help="its CLIP tower: a folder or Hub repo id (default: the release's, else openai/clip-vit-large-patch14-336)",
    )
    convert.add_argument("--out", required=True, help="output folder (new, or an earlier conversion)")
    convert.add_argument("--revision", help="Hub revision of SRC")
    convert.add_argument("--clip-revision", help="Hub revision of CLIP_SRC")
    convert.add_argument("--subfolder", help="where the weights sit in SRC (PixelLM's Hub repos: hf_model)")
    convert.add_argument(
        "--allow-bin",
        action="store_true",
        help="read pickled .bin shards (with torch.load(weights_only=True), which rebuilds tensors only)",
    )
    convert.add_argument(
        "--decoder-heads",
        type=int,
        default=Hardcoded.decoder_heads,
        help="attention heads of the pixel decoder (fixed in PixelLM's code: 8)",
    )
    convert.add_argument(
        "--decoder-layers",
        default=",".join(map(str, Hardcoded.decoder_layers)),
        help="vision hidden states feeding decoder levels 0,1 (fixed in PixelLM's code: -2,-11)",
    )

    compare = sub.add_parser("compare", help="compare the quality of 2–4 images")
    compare.add_argument("images", nargs="+", metavar="IMG")
    compare.add_argument("--question", default=QUESTIONS["compare"])
    _add_model_options(compare, strictness=False)
    return parser


def serve(argv: list[str]) -> int:
    """``python -m qground serve [app options]`` = ``python app.py [app options]`` (both run ``qground.app.main``)."""
    from qground.app import main as app_main  # gradio is imported only to serve

    app_main(argv)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return serve(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "compare" and not 2 <= len(args.images) <= 4:
        parser.error("compare takes 2 to 4 images")
    if args.command in QUESTIONS and not args.question.strip():
        args.question = QUESTIONS[args.command]  # a blank --question asks the default one, as the app does
    try:
        if args.command == "info":
            print(summary(args.name))
            return EXIT_OK
        if args.command == "ground":
            return run_ground(args)
        if args.command == "eval":
            return run_eval(args)
        if args.command == "convert":
            return run_convert(args)
        return run_chat(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
