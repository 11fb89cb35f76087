"""The default questions: one table, asked by the app, the command line, the service layer and the evaluation.

``QUESTIONS`` maps an intent to its question: ``"ground"`` (segment the distortions: the exact sentence the models
were trained on, ``training.data.readers.GROUNDING_QUESTIONS[0]``), ``"describe"`` (assess the quality in words: the
app's "Assess quality" button and /describe with a blank question, ``python -m qground describe``) and ``"compare"``
(which of 2–4 images is best: the app's Compare tab and /compare default, ``python -m qground compare``). The describe
and compare questions are wordings the shipped model was trained on (``training.data.synth``). ``COMPARE_PRESETS``
are the Compare tab's preset questions by label, the first being ``QUESTIONS["compare"]``. Plain strings; nothing is
imported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["COMPARE_PRESETS", "GROUNDING_QUESTION", "QUESTIONS"]

QUESTIONS: Mapping[str, str] = MappingProxyType(
    {
        "ground": "Please segment out distorted regions in the image.",
        "describe": "Describe the quality of this image.",
        "compare": "Which image has the best overall quality?",
    }
)
GROUNDING_QUESTION = QUESTIONS["ground"]
COMPARE_PRESETS: Mapping[str, str] = MappingProxyType(
    {
        "Overall quality": QUESTIONS["compare"],
        "Sharpness": "Which image is the sharpest?",
        "Noise": "Which image has the least noise?",
        "Exposure": "Which image is the best exposed?",
    }
)
