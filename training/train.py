"""One entry point for every stage: ``python -m training.train --config training/configs/stage2.yaml [key=value ...]``.

Runs under DeepSpeed (ZeRO-2 by default) on GPUs (``deepspeed --num_gpus 4 -m training.train ...``) or on this CPU
(gloo, one process or ``torchrun``). Writes into ``output_dir``: ``final/`` (our checkpoint layout), periodic
``checkpoint-NNNNNN/`` folders, ``train_state/`` (DeepSpeed optimizer/scheduler state for exact resume),
``loss.jsonl`` and ``loss.png``, and the resolved ``train_config.yaml``. A rerun resumes from the last complete state.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import torch

from qground.checkpoint import load_model, save_checkpoint
from qground.files import write_text_atomically
from qground.processor import QGroundProcessor
from training.config import TrainConfig, load_config, to_yaml
from training.data.dataset import build_order, load_sources
from training.stages import set_trainable

STATE_DIR = "train_state"
LATEST = "latest.json"
BATCH_KEYS = ("input_ids", "pixel_values", "attention_mask", "labels", "masks", "image_sizes", "choices")
LOSS_KEYS = ("loss", "ce", "bce", "dice", "choice")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int]:
    """Single-process defaults when not started by a launcher; returns (rank, world_size)."""
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def prepare_model(cfg: TrainConfig):
    """Load the starting model; point ``base_model_id`` at the weights a LoRA/heads-only save will sit on. A stage
    that trains the whole LLM saves all weights, so its checkpoint keeps the starting model's ``base_model_id`` rather
    than naming a local folder it does not need (and that exists on no other machine)."""
    model, tokenizer = load_model(cfg.model, device="cpu", dtype=torch.float32, allow_untrained=True)
    start = Path(cfg.model)
    if "llm" not in cfg.trainable and start.is_dir() and (start / "model.safetensors").exists():
        model.config = dataclasses.replace(model.config, base_model_id=str(start.resolve()))
    names = set_trainable(model, cfg.trainable, cfg.lora)
    return model, tokenizer, names


def _to_device(batch: dict, device) -> dict:
    out = {}
    for k in BATCH_KEYS:
        v = batch[k]
        if isinstance(v, torch.Tensor):
            v = v.to(device)
        elif isinstance(v, list):
            v = [t.to(device) for t in v]
        out[k] = v
    return out


def plot_losses(records: list[dict], path: Path) -> None:
    """Loss curves (total, CE, BCE, DICE) per optimizer step as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    steps = [r["step"] for r in records]
    for key in LOSS_KEYS:
        ax.plot(steps, [r[key] for r in records], label=key)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def train(cfg: TrainConfig, stop_after: int | None = None) -> Path:
    """Run (or resume) a stage; returns the ``final/`` checkpoint folder. ``stop_after`` ends the process's work
    after that many steps without a final save, as a kill would (used to test resuming)."""
    import deepspeed
    from tqdm import tqdm

    rank, world = init_distributed()
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer, trainable = prepare_model(cfg)
    processor = QGroundProcessor(tokenizer, model.config, cache_images=cfg.cache_images)
    sources, dataset = load_sources(cfg, processor)
    global_batch = cfg.micro_batch_size * cfg.grad_accum * world
    steps_per_epoch = cfg.steps_per_epoch or max(1, sum(len(s) for s in sources.values()) // global_batch)
    total_steps = cfg.epochs * steps_per_epoch
    order = build_order(sources, cfg, total_steps * global_batch)
    engine, *_ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=cfg.deepspeed_config(total_steps),
    )
    if rank == 0:
        write_text_atomically(out / "train_config.yaml", to_yaml(cfg))
    step, records = _resume(engine, out)
    log_path = out / "loss.jsonl"
    bar = tqdm(total=total_steps, initial=step, desc=cfg.stage, disable=rank != 0, dynamic_ncols=True)
    engine.train()
    while step < total_steps:
        t0 = time.perf_counter()
        sums = dict.fromkeys(LOSS_KEYS, 0.0)
        for micro in range(cfg.grad_accum):
            start = ((step * cfg.grad_accum + micro) * world + rank) * cfg.micro_batch_size
            items = [dataset[i] for i in order[start : start + cfg.micro_batch_size]]
            batch = _to_device(processor.collate(items), engine.device)
            result = engine(**batch)
            engine.backward(result["loss"])
            engine.step()
            for k in LOSS_KEYS:
                sums[k] += float(result[k].detach()) / cfg.grad_accum
        step += 1
        record = {
            "step": step,
            **sums,
            "lr": engine.get_lr()[0],
            "samples_per_s": global_batch / (time.perf_counter() - t0),
        }
        records.append(record)
        bar.update(1)
        bar.set_postfix(loss=f"{sums['loss']:.4f}", lr=f"{record['lr']:.2e}")
        if rank == 0:
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
            _save_state(engine, tokenizer, cfg, out, step, rank)
        if stop_after is not None and step >= stop_after:
            bar.close()
            return out
    bar.close()
    final = out / "final"
    if rank == 0:
        save_checkpoint(engine.module, tokenizer, final, include_base=_include_base(cfg, engine.module))
        plot_losses(records, out / "loss.png")
    return final


def _include_base(cfg: TrainConfig, model) -> bool:
    """LLaVA weights are written only when they changed or exist nowhere else."""
    return "llm" in cfg.trainable or model.config.base_model_id is None


def _save_state(engine, tokenizer, cfg: TrainConfig, out: Path, step: int, rank: int) -> None:
    """A periodic checkpoint (our layout) + DeepSpeed state; ``latest.json`` is replaced last, atomically, so a kill
    at any point leaves the previous complete state as the one to resume from."""
    tag = f"step{step:06d}"
    engine.save_checkpoint(str(out / STATE_DIR), tag=tag, save_latest=False)
    if rank != 0:
        return
    save_checkpoint(
        engine.module, tokenizer, out / f"checkpoint-{step:06d}", include_base=_include_base(cfg, engine.module)
    )
    rng = base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()
    write_text_atomically(out / STATE_DIR / LATEST, json.dumps({"step": step, "tag": tag, "torch_rng": rng}))
    for old in sorted(out.glob("checkpoint-*"))[:-2]:
        shutil.rmtree(old, ignore_errors=True)
    for old in sorted((out / STATE_DIR).glob("step*"))[:-2]:
        shutil.rmtree(old, ignore_errors=True)


def _resume(engine, out: Path) -> tuple[int, list[dict]]:
    """Restore the last complete state (weights, optimizer, scheduler, RNG) and the loss log up to it."""
    latest = out / STATE_DIR / LATEST
    log_path = out / "loss.jsonl"
    if not latest.exists():
        log_path.unlink(missing_ok=True)
        return 0, []
    state = json.loads(latest.read_text())
    engine.load_checkpoint(
        str(out / STATE_DIR), tag=state["tag"], load_optimizer_states=True, load_lr_scheduler_states=True
    )
    rng = torch.frombuffer(bytearray(base64.b64decode(state["torch_rng"])), dtype=torch.uint8)
    torch.set_rng_state(rng)
    records = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
    records = [r for r in records if r["step"] <= state["step"]]
    log_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return state["step"], records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="stage YAML, e.g. training/configs/stage2.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=1e-4")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by deepspeed launcher
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    final = train(cfg)
    print(f"saved {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
