"""Typed training configuration: one YAML file per stage (``training/configs``), overridable from the command line.

Steps: ``epochs × steps_per_epoch`` optimizer steps of ``micro_batch_size × grad_accum × world_size`` samples each
(``steps_per_epoch`` None = one pass over the data per epoch).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from qground.config import ConfigError, LoraSettings, build_dataclass

TRAINABLE_GROUPS = ("projector", "lora", "token_rows", "llm", "seg_head", "pixel_decoder", "choice_head")
DATA_FORMATS = ("llava_pretrain", "llava", "coinstruct", "qground100k")
# Released evaluation files that never enter training (file name → what it is): a data source naming one is refused.
TEST_SPLITS = {
    "qground_test.json": "QGround-Test, the test split of QGround-100K",
    "q-bench2-a1-dev.jsonl": "Q-Bench2 A1 pairs, dev",
    "q-bench2-a1-test.jsonl": "Q-Bench2 A1 pairs, test",
    "q-bench2-a2.jsonl": "Q-Bench2 A2 pairs",
    "micbench_dev.json": "MICBench, dev",
}


@dataclass
class DataSource:
    """One dataset of the mixture. ``json`` and ``image_root`` are resolved relative to the config file's folder.

    ``choice_answers`` (models with a choice head): answers that only name one image of a several-image prompt ("The
    second image.", or an option's letter) are trained as a pointer, ``qground.tokens.CHOICE_ANSWER`` with that image
    as the choice head's target. ``palette`` and ``fuse_annotators`` (``qground100k``, released layout): the palette
    JSON the color masks are decoded with (None: ``qground.palette.DEFAULT_PALETTE``), and one sample per image with
    the annotators' majority masks instead of one per annotator (``training.data.readers.read_qground100k``)."""

    name: str
    format: str
    json: str
    image_root: str
    weight: float = 1.0
    mask_root: str | None = None
    choice_answers: bool = False
    palette: str | None = None
    fuse_annotators: bool = False

    def validate(self) -> None:
        """ConfigError (one line) for an unknown format, a test split (``TEST_SPLITS``), a bad weight or option."""
        split = TEST_SPLITS.get(Path(self.json).name.lower())
        if split is not None:
            raise ConfigError(f"data {self.name!r}: {self.json} is a test split ({split}) and never enters training")
        if self.format not in DATA_FORMATS:
            raise ConfigError(f"data {self.name!r}: format must be one of {DATA_FORMATS}, got {self.format!r}")
        if self.choice_answers and self.format not in ("llava", "coinstruct"):
            raise ConfigError(f"data {self.name!r}: choice_answers needs a conversation format (llava, coinstruct)")
        if (self.palette is not None or self.fuse_annotators) and self.format != "qground100k":
            raise ConfigError(f"data {self.name!r}: palette and fuse_annotators go with the qground100k format")
        if self.weight <= 0:
            raise ConfigError(f"data {self.name!r}: weight must be > 0")


@dataclass
class OptimConfig:
    """AdamW + DeepSpeed WarmupCosineLR."""

    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    grad_clip: float = 1.0


@dataclass
class TrainConfig:
    """A training stage.

    ``model``: registry name, checkpoint folder or Hub repo id to start from (stages 2–3: the previous stage's
    ``output_dir``). ``trainable``: parameter groups from ``TRAINABLE_GROUPS``; everything else is frozen.
    ``drop_duplicates``: a conversation sample (LLaVA, Q-/Co-Instruct formats) identical to one of an earlier source in
    ``data`` (same images, same conversation text: ``training.data.dataset.duplicate_key``) is dropped, the count
    printed; Co-Instruct-562K's first 200,277 records are Q-Instruct's.
    """

    stage: str
    model: str
    output_dir: str
    trainable: list[str]
    data: list[DataSource]
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    micro_batch_size: int = 1
    grad_accum: int = 1
    epochs: int = 1
    steps_per_epoch: int | None = None
    bf16: bool = False
    zero_stage: int = 2
    save_every: int = 0
    log_every: int = 1
    seed: int = 0
    max_bad_fraction: float = 0.01
    cache_images: int = 4096  # preprocessed photos kept in memory (each is read many times per run)
    drop_duplicates: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(set(self.trainable) - set(TRAINABLE_GROUPS))
        if unknown:
            raise ConfigError(f"trainable groups {unknown} unknown; choose from {TRAINABLE_GROUPS}")
        if not self.trainable:
            raise ConfigError("trainable must name at least one parameter group")
        if "token_rows" in self.trainable and "lora" not in self.trainable:
            raise ConfigError("token_rows are trained through the LoRA adapter: add 'lora' to trainable")
        if "lora" in self.trainable and "llm" in self.trainable:
            raise ConfigError("train either 'lora' or the full 'llm', not both")
        if not self.data:
            raise ConfigError("data needs at least one source")
        for d in self.data:
            d.validate()
        if min(self.micro_batch_size, self.grad_accum, self.epochs) < 1:
            raise ConfigError("micro_batch_size, grad_accum and epochs must be >= 1")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError("zero_stage must be 0–3")

    def deepspeed_config(self, total_steps: int) -> dict:
        """The DeepSpeed JSON: ZeRO stage, AdamW (torch implementation: no JIT build), WarmupCosineLR, bf16."""
        o = self.optim
        return {
            "train_micro_batch_size_per_gpu": self.micro_batch_size,
            "gradient_accumulation_steps": self.grad_accum,
            "gradient_clipping": o.grad_clip,
            "optimizer": {
                "type": "AdamW",
                "params": {"lr": o.lr, "betas": list(o.betas), "weight_decay": o.weight_decay, "torch_adam": True},
            },
            "scheduler": {
                "type": "WarmupCosineLR",
                "params": {
                    "total_num_steps": max(total_steps, 1),
                    "warmup_num_steps": min(o.warmup_steps, total_steps),
                },
            },
            "zero_optimization": {"stage": self.zero_stage, "overlap_comm": False, "contiguous_gradients": True},
            "bf16": {"enabled": self.bf16},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }


def load_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """Read a stage YAML and apply ``dotted.key=value`` overrides (values parsed as YAML). Relative data and output
    paths stay relative to the current directory, as written."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=1e-4)")
        _set(data, key.split("."), yaml.safe_load(value), item)
    try:
        return build_dataclass(TrainConfig, data, str(path))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _set(data: dict, keys: list[str], value, item: str) -> None:
    for k in keys[:-1]:
        if k.isdigit() and isinstance(data, list):
            data = data[int(k)]
            continue
        data = data.setdefault(k, {})
        if not isinstance(data, dict | list):
            raise ConfigError(f"override {item!r}: {k} is not a section")
    last = keys[-1]
    if isinstance(data, list):
        data[int(last)] = value
    else:
        data[last] = value


def to_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(_plain(dataclasses.asdict(config)), sort_keys=False)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
