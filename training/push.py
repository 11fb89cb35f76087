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
from qground.lexicon import LEXICON_NAME, Lexicon
from qground.policy import POLICY_NAME, InferencePolicy

CARD = "README.md"


def model_card(folder: Path, repo_id: str) -> str:
    """Markdown with YAML front matter for the checkpoint in ``folder`` (run files are looked up in its parent): what
    it is, how it is run (its inference policy), how it was trained, and how to load it."""
    config = QGroundConfig.load(folder)
    run = folder.parent
    train_cfg = yaml.safe_load((run / "train_config.yaml").read_text()) if (run / "train_config.yaml").exists() else {}
    lines = _header(config, train_cfg)
    lines += _policy_rows(config, InferencePolicy.load(folder), (folder / POLICY_NAME).exists())
    lexicon = Lexicon.load(folder)
    if lexicon is not None:
        n = len(lexicon.synonyms)
        lines.append(
            f"| question words | {n:,} word{'s' * (n != 1)} it never trained on read as trained ones "
            f"(`{LEXICON_NAME}`: {lexicon.source}) |"
        )
    lines += _training_rows(train_cfg, run)
    lines += [
        "",
        "```python",
        "from qground.checkpoint import load_model",
        f'model, tokenizer = load_model("{repo_id}")',
    ]
    lines += ["```", ""]
    return "\n".join(lines)


def _header(config: QGroundConfig, train_cfg: dict) -> list[str]:
    """Front matter, title, and the table's architecture rows."""
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
    if config.choice_head:
        keys = "each image's readout scores" if config.choice_keys == "readout" else "the LLM's state at each image"
        lines.append(
            "| comparisons | a choice head picks the answer's image "
            f"(`[CHOICE]`, shown as its place word; keys: {keys}) |"
        )
    return lines


def _policy_rows(config: QGroundConfig, policy: InferencePolicy, calibrated: bool) -> list[str]:
    """The table's rows on how the model is run (``inference_policy.json``)."""
    lines: list[str] = []
    if config.readout:
        source = f"chosen on validation photos, `{POLICY_NAME}`" if calibrated else "not calibrated"
        lines += [
            f"| default detection strictness | {policy.default_strictness:g} (0 = as trained; {source}) |",
            f"| readout mask weight | {policy.readout_mask_weight:g} (masks: decoder and readout coverage blended; "
            f"{source}) |",
        ]
        if policy.overexposure_needs_clipping:
            from qground.policy import CLIPPED_WHITE

            lines.append(
                "| overexposure gate | at strictness above 0, overexposure needs a clipped white pixel "
                f"(every RGB channel ≥ {CLIPPED_WHITE:g} of full scale) |"
            )
    if policy.constrained_answers:
        lines.append(
            "| answers | decoding is held to the answer grammar (`qground/answers.py`): every answer is a finished "
            "sentence; the model picks which |"
        )
    if policy.flip_average:
        lines.append(
            "| test-time views | each image is also read mirrored left-right: presence logits, readout coverage and "
            "masks are averaged over both views (chosen on validation photos, `inference_policy.json`) |"
        )
    if policy.mask_refine_radius:
        lines.append(
            f"| mask edges | guided filter on the photo (radius {policy.mask_refine_radius:g} model-input pixels, "
            f"eps {policy.mask_refine_eps:g}; per-class guides from luminance, residual and gradient energy; radius "
            "chosen on validation photos, `inference_policy.json`) |"
        )
    return lines


def _training_rows(train_cfg: dict, run: Path) -> list[str]:
    """The table's rows on training: optimizer, batch, final loss, metrics (``loss.jsonl``, ``metrics.json``)."""
    losses = (
        [json.loads(x) for x in (run / "loss.jsonl").read_text().splitlines()] if (run / "loss.jsonl").exists() else []
    )
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else {}
    lines: list[str] = []
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
    return lines


def push(folder: Path, repo_id: str, private: bool = False, revision: str | None = None) -> str:
    """Upload the folder with its model card (``README.md``: a hand-written one, such as qground-nano's, as it is;
    otherwise ``model_card`` writes one); returns the commit URL."""
    from huggingface_hub import HfApi

    if not (folder / CARD).exists():
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
