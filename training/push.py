"""Upload a checkpoint folder to the Hugging Face Hub with a model card:
``python -m training.push --folder runs/qground-7b/stage3/final --repo-id ORG/NAME [--private] [--revision BRANCH]``.

The card records base model, stage, data, hyper-parameters and metrics (read from the run folder's
``train_config.yaml``, ``loss.jsonl`` and an optional ``metrics.json``). ``HF_TOKEN`` comes from the environment and is
never printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from qground.config import QGroundConfig

CARD = "README.md"


def model_card(folder: Path, repo_id: str) -> str:
    """Markdown with YAML front matter for the checkpoint in ``folder`` (run files are looked up in its parent)."""
    config = QGroundConfig.load(folder)
    run = folder.parent
    train_cfg = yaml.safe_load((run / "train_config.yaml").read_text()) if (run / "train_config.yaml").exists() else {}
    losses = (
        [json.loads(x) for x in (run / "loss.jsonl").read_text().splitlines()] if (run / "loss.jsonl").exists() else []
    )
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else {}
    front = {"library_name": "qground", "license": "apache-2.0", "tags": ["image-quality", "grounding", "q-ground"]}
    if config.base_model_id and "/" in config.base_model_id and not Path(config.base_model_id).exists():
        front["base_model"] = config.base_model_id
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", f"# {config.name}", ""]
    lines += [
        "Q-Ground image-quality grounding model (qground checkpoint layout): the answer names distortions",
        "(blur, jitter, overexposure, low light, noise) and one mask per distortion comes back at the photo's size.",
        "",
        "| field | value |",
        "|---|---|",
        f"| base model | `{config.base_model_id}` |",
        f"| stage | {train_cfg.get('stage', 'n/a')} |",
        f"| trainable | {', '.join(train_cfg.get('trainable', [])) or 'n/a'} |",
        f"| data | {', '.join(d['name'] for d in train_cfg.get('data', [])) or 'n/a'} |",
        f"| input | {config.image_size} px, {config.num_image_tokens} image tokens"
        f"{' (1 per image in several-image prompts)' if config.multi_image_global_only else ''}, "
        f"layers {list(config.feature_layers)} |",
    ]
    if config.readout:
        from training.calibrate import CALIBRATION_NAME, CONTRAST_QUANTILE

        chosen = (folder / CALIBRATION_NAME).exists()
        source = "chosen on validation photos, `calibration.json`" if chosen else "not calibrated"
        lines += [
            f"| default detection strictness | {config.default_strictness:g} (0 = as trained; {source}) |",
            f"| readout mask weight | {config.readout_mask_weight:g} (masks: decoder and readout coverage blended; "
            f"{source}) |",
        ]
        if config.overexposure_needs_clipping:
            from qground.modeling.qground import CLIPPED_WHITE

            lines.append(
                "| overexposure gate | at strictness above 0, overexposure needs a clipped white pixel "
                f"(every RGB channel ≥ {CLIPPED_WHITE:g} of full scale) |"
            )
        if config.jitter_min_motion_signature:
            lines.append(
                "| jitter gate | at strictness above 0, jitter needs a motion-blur signature of at least "
                f"{config.jitter_min_motion_signature:g} where the readout covers it (read off the training "
                "photos' undistorted content, `calibration.json`) |"
            )
        if config.low_light_min_log_contrast:
            lines.append(
                "| low-light gate | at strictness above 0, low light needs a median log contrast of at least "
                f"{config.low_light_min_log_contrast:g} where the readout covers it (underexposure is steep in the log "
                f"domain, a well-exposed shadow is smooth; the {CONTRAST_QUANTILE:.0%} quantile of the training "
                "photos' low-light regions, `calibration.json`) |"
            )
    if config.jitter_signature_weight:
        lines.append(
            f"| jitter masks | blend in P(jitter \\| motion-blur signature s) = σ((s − "
            f"{config.jitter_signature_center:g}) / {config.jitter_signature_scale:g}) at weight "
            f"{config.jitter_signature_weight:g} (fitted on the training photos, weight chosen on validation photos, "
            "`calibration.json`) |"
        )
    if config.flip_average:
        lines.append(
            "| test-time views | each image is also read mirrored left-right: presence logits, readout coverage and "
            "masks are averaged over both views (chosen on validation photos, `calibration.json`) |"
        )
    if config.mask_refine_radius:
        lines.append(
            f"| mask edges | guided filter on the photo (radius {config.mask_refine_radius:g} model-input pixels, "
            f"eps {config.mask_refine_eps:g}; per-class guides from luminance, residual and gradient energy; radius "
            "chosen on validation photos, `calibration.json`) |"
        )
    if config.choice_head:
        keys = "each image's readout scores" if config.choice_keys == "readout" else "the LLM's state at each image"
        lines.append(
            "| comparisons | a choice head picks the answer's image "
            f"(`[CHOICE]`, shown as its place word; keys: {keys}) |"
        )
    if train_cfg:
        o = train_cfg["optim"]
        lines += [
            f"| optimizer | AdamW lr {o['lr']}, wd {o['weight_decay']}, betas {tuple(o['betas'])}, "
            f"WarmupCosine {o['warmup_steps']} warm-up steps |",
            f"| batch | {train_cfg['micro_batch_size']} × GPUs × {train_cfg['grad_accum']} accumulation, "
            f"{train_cfg['epochs']} epoch(s), ZeRO-{train_cfg['zero_stage']}, bf16 {train_cfg['bf16']} |",
        ]
    if losses:
        lines.append(f"| final loss | {losses[-1]['loss']:.4f} after {losses[-1]['step']} steps |")
    lines += [f"| {k} | {v} |" for k, v in metrics.items()]
    lines += [
        "",
        "```python",
        "from qground.checkpoint import load_model",
        f'model, tokenizer = load_model("{repo_id}")',
        "```",
        "",
    ]
    return "\n".join(lines)


def push(folder: Path, repo_id: str, private: bool = False, revision: str | None = None) -> str:
    """Write the card into ``folder`` and upload the folder; returns the commit URL."""
    from huggingface_hub import HfApi

    (folder / CARD).write_text(model_card(folder, repo_id))
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, revision=revision, commit_message=f"qground checkpoint from {folder}"
    )
    return str(info)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.push", description="upload a checkpoint to the Hub")
    parser.add_argument("--folder", required=True, type=Path)
    parser.add_argument("--repo-id", required=True)
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--revision", default=None, help="branch to upload to (created if missing)")
    args = parser.parse_args(argv)
    print(push(args.folder, args.repo_id, args.private, args.revision))
    return 0


if __name__ == "__main__":
    sys.exit(main())
