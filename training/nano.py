"""The qground-nano recipe, end to end on a CPU: ``python -m training.nano --out runs/nano --install``.

1. synthetic data from package photos (``training.data.synth``): train, held-out eval and validation splits; with
   ``--vision-images N`` (default 9,600) also a set of N images of the training photos for the vision pretraining
   alone (``data/vision``; its first images are the train split's, linked rather than generated again; 0: the train
   split). v3's tower saw the 2,400 train images 32 times and recalled them (docs/experiments/2026-12-05-nano-v4.md);
   the shipped v5 saw 9,600 images 16 times (docs/experiments/2026-12-05-nano-v5.md);
2. a byte-level BPE tokenizer trained on that data's text, and the random ``qground-nano`` model (``init/``);
3. vision-tower pretraining (``training.pretrain_vision``, each image drawn under a random symmetry of the square:
   v8's tower, shown every image 16 times as it is, recalled them), then the tower is frozen (``vision/``).
   With ``--vision-large N`` the tower also trains on ``data/vision_large``, N images of the training photos at 1,600–
   4,096 px (``synth --large``; docs/experiments/2026-12-06-nano-v17.md);
4. stages 0–3 with ``training.train`` under DeepSpeed ZeRO-2 (``training/configs/nano_stage{0,1,2,3}.yaml``; stage 0
   trains comparisons only, answered through the choice head, before the paper's stage 1);
5. with ``--refine-large N`` (default 1,200; the shipped v18, docs/experiments/2026-12-07-nano-v18.md): the stage-3
   tower and readout trained ``--refine-epochs`` more on the train split and N images of the training photos at
   1,600–4,096 px (``data/vision_large``, ``synth --large``) → ``refined/``, put into the stage-3 model
   (``swap_vision``: φv, LLM and choice head kept), its seg head and pixel decoder trained again
   (``training/configs/nano_decoder.yaml``) and saved whole (``decoder/merged``). With ``--llm-from DIR`` instead of
   stages 0–3: the step-3 tower put into DIR's model the same way (``--vision-from DIR``: step 3 starts from DIR's
   tower and readout instead of a random init);
6. ``training.calibrate``: the default detection strictness and mask weight chosen on the validation split (480
   images: 120 moved a model's mIoU by about 0.05 with the draw, docs/experiments/2026-12-05-nano-v5.md), then the
   clipping rule, the mirrored second view and the mask refinement radius;
7. ``training.lexicon``: the question lexicon (``lexicon.json``: words the model never trained on read as trained
   words of the same sense, from WordNet; docs/experiments/2026-12-07-question-lexicon.md);
8. with ``--install``, the final checkpoint copied to ``assets/qground-nano``. Evaluation on the held-out split is
   its own command: ``python -m qground eval --data runs/nano/data/eval --out runs/nano/metrics.json``.
Each step is skipped when its output exists, so a rerun continues where a killed run stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from qground.builder import ASSETS, build_model, config_nano
from qground.checkpoint import load_model, save_checkpoint
from qground.config import CONFIG_NAME
from qground.lexicon import LEXICON_NAME
from qground.policy import POLICY_NAME
from qground.tokenizer import basic_corpus, bind_tokenizer, train_bpe_tokenizer
from training.config import load_config
from training.train import train

CONFIGS = Path(__file__).resolve().parent / "configs"
REFINE_LARGE = 1200  # large images the stage-3 tower trains further on (docs/experiments/2026-12-07-nano-v18.md)


def corpus(data_dir: Path) -> list[str]:
    """Every question and answer text of the synthetic data (LLaVA-schema JSON files) + the built-in corpus."""
    texts = basic_corpus()
    for name in ("caption.json", "describe.json", "compare.json"):
        for record in json.loads((data_dir / name).read_text()):
            texts += [turn["value"].replace("<image>", "") for turn in record["conversations"]]
    return texts


def make_init(data_dir: Path, out: Path, seed: int) -> None:
    config = config_nano()
    tokenizer = train_bpe_tokenizer(corpus(data_dir), vocab_size=config.llm.vocab_size - 16)
    config = bind_tokenizer(config, tokenizer)
    save_checkpoint(build_model(config, seed=seed), tokenizer, out)


# What a tower swap keeps from the model it swaps into must fit the new tower: the same inputs and readout.
SWAP_MUST_MATCH = (
    "vision",
    "image_size",
    "detail_channels",
    "chroma_noise_channel",
    "image_mean",
    "image_std",
    "readout",
)


def swap_vision(start: Path, vision: Path, out: Path) -> None:
    """``start``'s checkpoint with the vision tower and readout (and its ``readout_confidence``) of ``vision``, a
    ``training.pretrain_vision`` output with the same inputs → ``out``. φv and the choice head read the readout's
    scores, whose meaning is the same for every tower, so ``start``'s φv, LLM and choice head keep working; the seg
    head and pixel decoder read the tower's patch maps and must be trained again. Reading sizes stay ``start``'s."""
    model, tokenizer = load_model(start, device="cpu", dtype=torch.float32)
    donor, _ = load_model(vision, device="cpu", dtype=torch.float32)
    differ = [k for k in SWAP_MUST_MATCH if getattr(model.config, k) != getattr(donor.config, k)]
    if differ or model.readout is None:
        raise ValueError(f"cannot put {vision}'s tower into {start}: {differ or ['readout']} differ")
    model.vision_tower.load_state_dict(donor.vision_tower.state_dict())
    model.readout.load_state_dict(donor.readout.state_dict())
    model.config = dataclasses.replace(model.config, readout_confidence=donor.config.readout_confidence)
    save_checkpoint(model, tokenizer, out)


def save_whole(heads: Path, out: Path) -> None:
    """A heads-only checkpoint (its LLaVA weights named by ``base_model_id``) saved with every weight in ``out``."""
    model, tokenizer = load_model(heads, device="cpu", dtype=torch.float32)
    model.config = dataclasses.replace(model.config, base_model_id=None)
    save_checkpoint(model, tokenizer, out)


def stage_config(name: str, root: Path, scale: float):
    """The nano stage config ``training/configs/{name}.yaml`` with every ``runs/nano`` path moved under ``root`` and
    its steps scaled."""
    text = (CONFIGS / f"{name}.yaml").read_text().replace("runs/nano", str(root))
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    cfg = load_config(f.name)
    Path(f.name).unlink()
    cfg.steps_per_epoch = max(2, round(cfg.steps_per_epoch * scale))
    cfg.save_every = max(1, round(cfg.save_every * scale))
    cfg.optim.warmup_steps = min(cfg.optim.warmup_steps, cfg.steps_per_epoch // 2)
    return cfg


def _done(folder: Path) -> bool:
    return (folder / CONFIG_NAME).exists()


def run(args: argparse.Namespace) -> Path:
    """Every step of the recipe that has not run yet (``main``'s arguments) → the final checkpoint's folder."""
    from training.data import synth

    out: Path = args.out
    timings_file = out / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}  # seconds per step that ran

    def record(step: str, t0: float) -> None:  # written after every step, so a killed run keeps what finished
        timings[step] = time.perf_counter() - t0
        timings_file.parent.mkdir(parents=True, exist_ok=True)
        timings_file.write_text(json.dumps(timings, indent=2))

    sets = [  # folder, split, images, comparison groups, earlier folder whose images it starts with
        ("train", "train", args.train_images, args.comparisons_per_image * args.train_images, None),
        ("eval", "eval", args.eval_images, args.comparisons_per_image * args.eval_images, None),
        ("val", "val", args.val_images, args.comparisons_per_image * args.val_images, None),
    ]
    if args.vision_images:  # images of the training photos for the vision pretraining (its comparisons are not read)
        sets.append(("vision", "train", args.vision_images, 1, "train"))
    if args.vision_large or args.refine_large:
        sets.append(("vision_large", "train", args.vision_large or args.refine_large, 1, None))
    for folder, split, num, comparisons, reuse in sets:
        data = out / "data" / folder
        if not (data / "qground.json").exists():
            t0 = time.perf_counter()
            synth.main(
                [
                    *("--out", str(data), "--num", str(num), "--split", split, "--seed", str(args.seed)),
                    *("--workers", str(args.workers), "--comparisons", str(comparisons)),
                    *(("--reuse", str(out / "data" / reuse)) if reuse else ()),
                    *(("--large",) if folder == "vision_large" else ()),
                ]
            )
            record(f"synth_{folder}", t0)
    final = build(args, record)
    finish(args, final, record)
    return final


def build(args: argparse.Namespace, record) -> Path:
    """Tokenizer and random init, vision pretraining, then stages 0–3 (and with ``--refine-large`` the tower trained
    further and put in), or with ``--llm-from`` the new tower put into that model → the model to calibrate."""
    out: Path = args.out
    start = args.vision_from or out / "init"  # the tower trained further, or a random one
    if args.vision_from is None and not _done(out / "init"):
        make_init(out / "data" / "train", out / "init", args.seed)
    first = out / "data" / ("vision" if args.vision_images else "train")
    vision = [first, *([out / "data" / "vision_large"] if args.vision_large else [])]
    epochs, lr, crops = args.vision_epochs, args.vision_lr, args.vision_crops
    pretrain(start, vision, out / "vision", epochs, lr, args.vision_symmetries, crops, record, "vision")
    if args.llm_from:
        return refit_decoder(args.llm_from, out / "vision", out, args.scale, record)
    for i in (0, 1, 2, 3):
        cfg = stage_config(f"nano_stage{i}", out, args.scale)
        if not _done(Path(cfg.output_dir) / "final"):
            t0 = time.perf_counter()
            train(cfg)
            record(f"stage{i}", t0)
        final = Path(cfg.output_dir) / "final"
    if args.refine_large:  # the tower and readout trained further on large photos too, put into the stage-3 model
        large = [out / "data" / "train", out / "data" / "vision_large"]
        epochs, lr, crops = args.refine_epochs, args.refine_lr, args.refine_crops
        pretrain(final, large, out / "refined", epochs, lr, args.vision_symmetries, crops, record, "refine")
        final = refit_decoder(final, out / "refined", out, args.scale, record)
    return final


def pretrain(
    start: Path,
    data: list[Path],
    out: Path,
    epochs: int,
    lr: float | None,
    symmetries: bool,
    crops: float,
    record,
    step: str,
) -> None:
    """``training.pretrain_vision`` of ``start``'s tower and readout on ``data`` folders → ``out`` (skipped when it
    exists); its time recorded as ``step``."""
    from training.pretrain_vision import main as pretrain_vision

    if _done(out):
        return
    t0 = time.perf_counter()
    pretrain_vision(
        [
            *("--model", str(start), "--data", *map(str, data), "--out", str(out), "--epochs", str(epochs)),
            *(["--lr", str(lr)] if lr else []),
            *(["--symmetries"] if symmetries else []),
            *(["--crops", str(crops)] if crops else []),
        ]
    )
    record(step, t0)


def refit_decoder(llm_from: Path, tower: Path, out: Path, scale: float, record) -> Path:
    """``llm_from``'s model with ``tower``'s vision tower and readout (``swap_vision``), its seg head and pixel
    decoder trained again (``nano_decoder.yaml``) and saved with every weight → that folder (``decoder/merged``)."""
    if not _done(out / "swapped"):
        swap_vision(llm_from, tower, out / "swapped")
    cfg = stage_config("nano_decoder", out, scale)
    if not _done(Path(cfg.output_dir) / "final"):
        t0 = time.perf_counter()
        train(cfg)
        record("decoder", t0)
    merged = Path(cfg.output_dir) / "merged"
    if not _done(merged):
        save_whole(Path(cfg.output_dir) / "final", merged)
    return merged


def finish(args: argparse.Namespace, final: Path, record) -> None:
    """Calibrate ``final`` on the validation split and write its lexicon (each unless done) and, with ``--install``,
    copy it to the assets."""
    from training.calibrate import main as calibrate
    from training.lexicon import main as write_lexicon

    out: Path = args.out
    if not (final / POLICY_NAME).exists():
        t0 = time.perf_counter()
        calibrate(["--model", str(final), "--data", str(out / "data" / "val")])
        record("calibrate", t0)
    if not (final / LEXICON_NAME).exists():
        write_lexicon(["--out", str(final)] + (["--wordnet", str(args.wordnet)] if args.wordnet else []))
    if args.install:
        target = ASSETS / "qground-nano"
        card = (target / "README.md").read_text() if (target / "README.md").exists() else None
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(final, target, ignore=shutil.ignore_patterns("README.md"))
        if card is not None:  # the hand-written model card stays
            (target / "README.md").write_text(card)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.nano", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/nano"))
    parser.add_argument("--train-images", type=int, default=2400)
    parser.add_argument("--eval-images", type=int, default=300)
    parser.add_argument(
        "--val-images", type=int, default=480, help="validation images (the inference policy is chosen on them)"
    )
    parser.add_argument("--comparisons-per-image", type=int, default=3, help="comparison groups per generated image")
    parser.add_argument(
        "--vision-images", type=int, default=9600, help="images of a vision set of their own (0: the train split)"
    )
    parser.add_argument("--vision-epochs", type=int, default=16)
    parser.add_argument(
        "--vision-lr",
        type=float,
        help="peak learning rate of the vision pretraining (default: training.pretrain_vision's)",
    )
    parser.add_argument(
        "--vision-from",
        type=Path,
        default=None,
        help="train this checkpoint's vision tower and readout further instead of a new one's (with --llm-from)",
    )
    parser.add_argument(
        "--vision-symmetries",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show the vision pretraining each image under a random symmetry of the square (training.pretrain_vision)",
    )
    parser.add_argument(
        "--vision-crops",
        type=float,
        default=0.0,
        help="share of the vision pretraining's drawn images cropped at their own scale (training.pretrain_vision)",
    )
    parser.add_argument(
        "--vision-large",
        type=int,
        default=0,
        help="large images (1,600–4,096 px, synth --large) the vision pretraining also trains on",
    )
    parser.add_argument(
        "--llm-from",
        type=Path,
        default=None,
        help="keep this checkpoint's φv, LLM, choice head; train its seg head, pixel decoder on the new tower",
    )
    parser.add_argument(
        "--refine-large",
        type=int,
        default=None,
        help="after stage 3, train the tower and readout further on the train split and this many large images "
        "(synth --large), put them in and train the seg head and pixel decoder again; 0: stop after stage 3 "
        "(default 1200, 0 with --llm-from or --vision-large)",
    )
    parser.add_argument("--refine-epochs", type=int, default=8, help="epochs of that further training")
    parser.add_argument("--refine-lr", type=float, default=3e-4, help="its peak learning rate")
    parser.add_argument("--refine-crops", type=float, default=0.5, help="its share of crops at the photos' own scale")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every stage's steps (0.02: smoke run)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--install", action="store_true", help="copy the result to assets/qground-nano")
    parser.add_argument(
        "--wordnet", type=Path, help="WordNet 3.0's dict folder for the lexicon (default: Debian's wordnet-base)"
    )
    args = parser.parse_args(argv)
    if args.vision_from and not args.llm_from:
        parser.error("--vision-from goes with --llm-from: stages 0-3 build a new model from a random init")
    if args.refine_large is None:
        args.refine_large = 0 if args.llm_from or args.vision_large else REFINE_LARGE
    elif args.refine_large and (args.llm_from or args.vision_large):
        parser.error("--refine-large trains the stage-3 tower further: not with --llm-from or --vision-large")
    final = run(args)
    print(f"qground-nano: {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
