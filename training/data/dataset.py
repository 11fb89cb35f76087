"""From config data sources to processor-ready samples, in a deterministic mixture order."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
from PIL import Image

from qground.naming import parse_choice, question_options
from qground.processor import QGroundProcessor
from qground.prompts import Turn
from qground.tokens import CHOICE_ANSWER
from training.config import DataSource, TrainConfig
from training.data.readers import (
    MixtureSampler,
    ReadResult,
    read_coinstruct,
    read_llava_instruct,
    read_llava_pretrain,
    read_qground100k,
)
from training.data.sample import Sample

READERS = {"llava_pretrain": read_llava_pretrain, "llava": read_llava_instruct, "coinstruct": read_coinstruct}
CONVERSATION_FORMATS = tuple(READERS)  # the formats whose samples are compared for duplicates


# An answer that only names an image: "The second image.", "the 2nd one", "B", "(B)", "B." (any case).
_ONLY_A_NAME = re.compile(r"^\s*(?:the\s+\w+\s+(?:image|one)|\(?[A-Ha-h]\)?)\s*\.?\s*$", re.I)


def as_choice(sample: Sample) -> Sample:
    """``sample`` with every answer that only names one of its (≥ 2) images replaced by ``CHOICE_ANSWER`` and that
    image appended to ``choices`` (option letters read through the question's options); other samples unchanged."""
    n = len(sample.images)
    if n < 2:
        return sample
    turns, choices, options = [], list(sample.choices), {}
    for turn in sample.turns:
        options = question_options(turn.question, n) or options  # a follow-up may answer the options asked before
        picked = parse_choice(turn.answer, n, options) if turn.answer and _ONLY_A_NAME.match(turn.answer) else None
        if picked is None:
            turns.append(turn)
            continue
        turns.append(Turn(turn.question, CHOICE_ANSWER))
        choices.append(picked)
    return dataclasses.replace(sample, turns=turns, choices=choices)


def read_source(src: DataSource, max_bad_fraction: float) -> ReadResult:
    """Read one data source with the reader for its format (problems past the threshold raise); with
    ``src.choice_answers`` its one-image answers become choice-head targets (``as_choice``). A test split is refused
    (``DataSource.validate``) however the source was made."""
    src.validate()
    if src.format == "qground100k":
        return read_qground100k(
            src.json,
            src.image_root,
            src.mask_root,
            max_bad_fraction=max_bad_fraction,
            palette=src.palette,
            fuse_annotators=src.fuse_annotators,
        )
    result = READERS[src.format](src.json, src.image_root, max_bad_fraction=max_bad_fraction)
    if src.choice_answers:
        result = result._replace(samples=[as_choice(s) for s in result.samples])
    return result


def load_mask(mask: Path | np.ndarray) -> np.ndarray:
    """A PNG path (non-zero = region) or an array → bool (H, W)."""
    if isinstance(mask, np.ndarray):
        return mask.astype(bool)
    with Image.open(mask) as img:
        return np.asarray(img.convert("L")) > 0


class SampleDataset:
    """Indexable view over several sources: index ``i`` of the concatenation → processor sample dict."""

    def __init__(self, sources: dict[str, list[Sample]], processor: QGroundProcessor) -> None:
        self.names = list(sources)
        self.samples = [s for name in self.names for s in sources[name]]
        self.processor = processor

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        s = self.samples[i]
        try:
            return self.processor(list(s.images), s.turns, masks=[load_mask(m) for m in s.masks], choices=s.choices)
        except Exception as e:
            raise RuntimeError(f"sample {s.id!r} from {s.source!r}: {e}") from e


def load_sources(cfg: TrainConfig, processor: QGroundProcessor) -> tuple[dict[str, list[Sample]], SampleDataset]:
    """Read every configured source (reports printed), drop duplicates across conversation sources when
    ``cfg.drop_duplicates`` (counts printed) and wrap them for training."""
    sources = {}
    for src in cfg.data:
        result = read_source(src, cfg.max_bad_fraction)
        if result.report.bad:
            print(f"[{src.name}] {result.report.summary()}")
        sources[src.name] = result.samples
    if cfg.drop_duplicates:
        sources = drop_duplicates(sources, cfg.data)
    return sources, SampleDataset(sources, processor)


def duplicate_key(sample: Sample, image_root: Path) -> tuple:
    """What makes two conversation samples the same: their images, each by its last two path components below
    ``image_root`` (``spaq_koniq/07454.jpg``: the releases put their images under different roots and leading folders),
    and the text of every turn, whitespace collapsed (image placeholders are already removed by the readers)."""
    images = tuple("/".join(_relative(path, image_root).parts[-2:]) for path in sample.images)
    turns = tuple((" ".join(t.question.split()), " ".join((t.answer or "").split())) for t in sample.turns)
    return images, turns


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.relative_to(root)
    except ValueError:
        return path


def drop_duplicates(sources: dict[str, list[Sample]], data: list[DataSource]) -> dict[str, list[Sample]]:
    """``sources`` without the conversation samples (``CONVERSATION_FORMATS``) whose ``duplicate_key`` an earlier source
    of ``data`` holds: the first source listed keeps a sample (duplicates within one source are left alone). Prints
    one line per source that lost samples and the total; ValueError when a source loses them all."""
    seen: dict[tuple, str] = {}
    kept: dict[str, list[Sample]] = {}
    dropped: dict[str, dict[str, int]] = {}
    for src in data:
        samples = sources[src.name]
        if src.format not in CONVERSATION_FORMATS:
            kept[src.name] = samples
            continue
        keys = [duplicate_key(s, Path(src.image_root)) for s in samples]
        kept[src.name] = [s for s, key in zip(samples, keys) if seen.get(key, src.name) == src.name]
        for key in keys:
            owner = seen.setdefault(key, src.name)
            if owner != src.name:
                dropped.setdefault(src.name, {}).setdefault(owner, 0)
                dropped[src.name][owner] += 1
        if samples and not kept[src.name]:
            raise ValueError(f"data {src.name!r}: every sample is already in {sorted(dropped[src.name])}")
    for name, owners in dropped.items():
        listing = ", ".join(f"{n} already in {owner!r}" for owner, n in owners.items())
        print(f"[{name}] dropped {sum(owners.values())} of {len(sources[name])} samples as duplicates: {listing}")
    if dropped:
        print(f"duplicates dropped across sources: {sum(sum(o.values()) for o in dropped.values())}")
    return kept


def build_order(sources: dict[str, list[Sample]], cfg: TrainConfig, num_samples: int) -> list[int]:
    """``num_samples`` indices into ``SampleDataset`` drawn with the configured mixture weights (seeded)."""
    weights = {src.name: src.weight for src in cfg.data}
    sampler = MixtureSampler(sources, weights, num_samples, seed=cfg.seed)
    offsets = dict(zip(list(sources), np.cumsum([0] + [len(v) for v in sources.values()])))
    return [int(offsets[name] + idx) for name, idx in sampler]
