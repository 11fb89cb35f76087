"""Special tokens: the only place their strings are defined.

The processor inserts image tokens by id (never by parsing user text), and user text is tokenized with special-token
splitting on, so a prompt that literally contains ``<image>`` or ``[SEG0]`` cannot inject them.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_TOKEN = "<image>"
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


def special_tokens(seg: SegTokens) -> list[str]:
    """Every added special token string, image token first."""
    return [IMAGE_TOKEN, *seg.strings]
