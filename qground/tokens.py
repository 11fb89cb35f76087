"""Special tokens: the only place their strings are defined.

The processor inserts image tokens by id (never by parsing user text), and user text is tokenized with special-token
splitting on, so a prompt that literally contains ``<image>`` or ``[SEG0]`` cannot inject them.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_TOKEN = "<image>"
# Models with image_wrap (config.image_wrap, PixelLM-7B) put each image's tokens between these two.
IMAGE_START = "<im_start>"
IMAGE_END = "<im_end>"
# Models with a choice head (config.choice_head) answer "which image?" with this token: the head points at one image of
# the prompt from the state that predicts it, and the answer text shows that image's ordinal ("The [CHOICE] image." →
# "The second image.").
CHOICE_TOKEN = "[CHOICE]"
CHOICE_ANSWER = f"The {CHOICE_TOKEN} image."  # the one answer form a choice is trained in
SEG_LEVELS = 2
SEG_TOKENS_PER_LEVEL = 3


@dataclass(frozen=True)
class SegTokens:
    """The ``[SEG0]`` … ``[SEG{n-1}]`` group that follows each class word in a grounding answer.

    Token k of a group belongs to decoder level ``k // tokens_per_level``.
    """

    levels: int = SEG_LEVELS
    tokens_per_level: int = SEG_TOKENS_PER_LEVEL

    @property
    def count(self) -> int:
        return self.levels * self.tokens_per_level

    @property
    def strings(self) -> tuple[str, ...]:
        return tuple(f"[SEG{k}]" for k in range(self.count))

    def group_text(self) -> str:
        """The text of one group, e.g. ``"[SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5]"``."""
        return " ".join(self.strings)


def special_tokens(seg: SegTokens, choice: bool = False, image_wrap: bool = False) -> list[str]:
    """Every added special token string: image token, seg tokens, the choice token when ``choice``, then
    ``IMAGE_START`` and ``IMAGE_END`` when ``image_wrap``."""
    return [IMAGE_TOKEN, *seg.strings, *[CHOICE_TOKEN] * choice, *[IMAGE_START, IMAGE_END] * image_wrap]
