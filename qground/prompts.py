"""Prompt templates as objects. The processor receives one; nothing here is global state.

A template turns a conversation into alternating pieces: *prompt* text (labels -100) and *answer* text (trained on).
``<image>`` slots are marked by ``ImageSlot`` pieces so the processor can insert image tokens by id.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Turn", "ImageSlot", "Piece", "PromptStyle", "VICUNA_V1", "image_header", "ordinal"]


@dataclass(frozen=True)
class Turn:
    """One exchange. ``answer`` is None for the turn the model is asked to complete."""

    question: str
    answer: str | None = None


@dataclass(frozen=True)
class ImageSlot:
    """Where one image's tokens go."""


@dataclass(frozen=True)
class Piece:
    """A run of text; ``trainable`` pieces are answers (labels kept, end-of-sequence id appended by the processor),
    the rest are prompt (labels -100).

    ``user`` marks text typed by a person: it is tokenized with special tokens split, so it cannot inject them.
    """

    text: str
    trainable: bool = False
    user: bool = False


_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")


def ordinal(index: int) -> str:
    """The place word of image ``index`` (0-based) in a prompt: "first", "second", …"""
    if not 0 <= index < len(_ORDINALS):
        raise ValueError(f"at most {len(_ORDINALS)} images per prompt, got image index {index}")
    return _ORDINALS[index]


def image_header(num_images: int) -> list[str]:
    """Co-Instruct interleaving: ``"The first image: "`` … for several images, plain for one image."""
    if num_images == 1:
        return [""]
    if num_images > len(_ORDINALS):
        raise ValueError(f"at most {len(_ORDINALS)} images per prompt, got {num_images}")
    return [f"The {ordinal(i)} image: " for i in range(num_images)]


@dataclass(frozen=True)
class PromptStyle:
    """A LLaVA-style conversation template (``vicuna_v1`` by default).

    Layout: ``{system} USER: <image>\\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>…``; with several images
    the first user turn is ``The first image: <image>\\nThe second image: <image>\\n{q1}`` (Co-Instruct).
    """

    name: str = "vicuna_v1"
    system: str = (
        "A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions."
    )
    user_role: str = "USER"
    assistant_role: str = "ASSISTANT"

    def pieces(self, turns: list[Turn], num_images: int) -> list[Piece | ImageSlot]:
        """Split a conversation into pieces. Only the last turn may lack an answer (the generation prompt)."""
        if not turns:
            raise ValueError("a conversation needs at least one turn")
        for t in turns[:-1]:
            if t.answer is None:
                raise ValueError("only the last turn may be unanswered")
        out: list[Piece | ImageSlot] = [Piece(f"{self.system} ")]
        for i, turn in enumerate(turns):
            out.append(Piece(f"{self.user_role}: "))
            if i == 0:
                for header in image_header(num_images) if num_images else []:
                    if header:
                        out.append(Piece(header))
                    out += [ImageSlot(), Piece("\n")]
            out.append(Piece(turn.question, user=True))
            out.append(Piece(f" {self.assistant_role}:"))
            if turn.answer is not None:
                out.append(Piece(f" {turn.answer}", trainable=True))
        return out


VICUNA_V1 = PromptStyle()


def grounding_answer(classes: list[str], group_text: str) -> str:
    """Q-Ground's grounding answer (supplementary fig. 4): ``The segmentation results are: noise [SEG0] … [SEG5] ,
    blur [SEG0] …``.

    ``group_text`` is ``SegTokens.group_text()``; with no classes the answer says there is no distortion.
    """
    if not classes:
        return "There is no obvious distortion in the image."
    return "The segmentation results are: " + " , ".join(f"{name} {group_text}" for name in classes)
