"""The record every reader yields: images, an answered conversation and the masks its seg groups point at."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qground.prompts import Turn


class DataFormatError(ValueError):
    """A data file whose layout we do not understand; the message names the file and the field."""


@dataclass
class Sample:
    """One training example.

    ``images``: 0–8 image files (the first one is the one grounded); ``turns``: answered conversation (answers may hold
    ``class [SEG0] … [SEG5]`` groups, built with ``qground.prompts.grounding_answer``); ``masks``: one per seg group, in
    answer order — a PNG path (non-zero = region) or a bool (H, W) array in the first image's original frame;
    ``mask_labels``: the class name of each mask (same order); ``choices``: the image (index into ``images``) each
    ``[CHOICE]`` of the answers picks, in order; ``source``: which dataset/reader produced it.
    """

    id: str
    images: list[Path]
    turns: list[Turn]
    masks: list[Path | np.ndarray] = field(default_factory=list)
    mask_labels: list[str] = field(default_factory=list)
    choices: list[int] = field(default_factory=list)
    source: str = ""
