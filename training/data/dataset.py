"""From config data sources to processor-ready samples, in a deterministic mixture order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from qground.processor import QGroundProcessor
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


def read_source(src: DataSource, max_bad_fraction: float) -> ReadResult:
    """Read one data source with the reader for its format (problems past the threshold raise)."""
    if src.format == "qground100k":
        return read_qground100k(src.json, src.image_root, src.mask_root, max_bad_fraction=max_bad_fraction)
    return READERS[src.format](src.json, src.image_root, max_bad_fraction=max_bad_fraction)


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
            return self.processor(list(s.images), s.turns, masks=[load_mask(m) for m in s.masks])
        except Exception as e:
            raise RuntimeError(f"sample {s.id!r} from {s.source!r}: {e}") from e


def load_sources(cfg: TrainConfig, processor: QGroundProcessor) -> tuple[dict[str, list[Sample]], SampleDataset]:
    """Read every configured source (reports printed) and wrap them for training."""
    sources = {}
    for src in cfg.data:
        result = read_source(src, cfg.max_bad_fraction)
        if result.report.bad:
            print(f"[{src.name}] {result.report.summary()}")
        sources[src.name] = result.samples
    return sources, SampleDataset(sources, processor)


def build_order(sources: dict[str, list[Sample]], cfg: TrainConfig, num_samples: int) -> list[int]:
    """``num_samples`` indices into ``SampleDataset`` drawn with the configured mixture weights (seeded)."""
    weights = {src.name: src.weight for src in cfg.data}
    sampler = MixtureSampler(sources, weights, num_samples, seed=cfg.seed)
    offsets = dict(zip(list(sources), np.cumsum([0] + [len(v) for v in sources.values()])))
    return [int(offsets[name] + idx) for name, idx in sampler]
