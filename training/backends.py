"""Model backends for the weakly supervised data builders (``training.merge2compare``, ``training.teach2compare``).

A ``TextBackend`` answers a prompt, optionally about images: ``complete(prompt, images=()) -> str``. Two are real:

- ``TransformersBackend``: a local model by Hub id (+ revision): a causal LM for text, an image-text-to-text model
  (``AutoModelForImageTextToText`` with its processor's chat template) when images are given.
- ``HTTPBackend``: an OpenAI-compatible ``/chat/completions`` endpoint; the URL and model come from arguments, the key
  from an environment variable (never from the command line); images travel as base64 ``data:`` URLs.

An ``Embedder`` maps texts to L2-normalized vectors: ``embed(texts) -> (n, d)`` float32. ``TransformersEmbedder``
pools a Hub encoder's last hidden states (E5-Mistral: the last token, after an instruction prefix).

Failures a retry may cure (timeouts, rate limits, server errors) raise ``BackendError``; ``with_retries`` retries them
with exponential backoff. Tests pass fakes that satisfy the same protocols.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

DEFAULT_EMBEDDER = "intfloat/e5-mistral-7b-instruct"
E5_INSTRUCTION = "Instruct: Given an image-quality description, retrieve descriptions of equal meaning\nQuery: "
MAX_EMBED_TOKENS = 512
T = TypeVar("T")


class BackendError(RuntimeError):
    """A model call that failed in a way a retry may cure."""


class TextBackend(Protocol):
    def complete(self, prompt: str, images: Sequence[Path] = ()) -> str: ...


class Embedder(Protocol):
    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def with_retries(
    call: Callable[[], T], attempts: int = 3, backoff: float = 2.0, sleep: Callable[[float], None] = time.sleep
) -> T:
    """``call()``, retried on ``BackendError`` up to ``attempts`` times in all, waiting backoff¹, backoff², … seconds
    between tries; the last error propagates."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except BackendError:
            if attempt == attempts:
                raise
            sleep(backoff**attempt)
    raise ValueError("attempts must be ≥ 1")


class HTTPBackend:
    """An OpenAI-compatible chat endpoint: ``url`` (e.g. ``https://api.openai.com/v1``), ``model``, the API key read
    from ``$key_env`` (none sent when unset). Greedy (temperature 0) unless told otherwise."""

    def __init__(
        self, url: str, model: str, key_env: str = "OPENAI_API_KEY", timeout: float = 120.0, temperature: float = 0.0
    ) -> None:
        self.url = url.rstrip("/") + "/chat/completions"
        self.model = model
        self.key = os.environ.get(key_env)
        self.timeout = timeout
        self.temperature = temperature

    def complete(self, prompt: str, images: Sequence[Path] = ()) -> str:
        import httpx

        content: list[dict] = [{"type": "text", "text": prompt}]
        content += [{"type": "image_url", "image_url": {"url": data_url(path)}} for path in images]
        body = {
            "model": self.model,
            "temperature": self.temperature,
            "messages": [{"role": "user", "content": content}],
        }
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        try:
            response = httpx.post(self.url, json=body, headers=headers, timeout=self.timeout)
        except httpx.HTTPError as e:
            raise BackendError(f"{self.url}: {type(e).__name__}: {e}") from None
        if response.status_code == 429 or response.status_code >= 500:
            raise BackendError(f"{self.url}: HTTP {response.status_code}")
        if response.status_code != 200:
            raise ValueError(f"{self.url}: HTTP {response.status_code}: {response.text[:200]}")
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise BackendError(f"{self.url}: unexpected reply ({type(e).__name__}: {e})") from None
        if not isinstance(content, str):
            raise BackendError(f"{self.url}: unexpected reply (the message content is {type(content).__name__})")
        return content


def data_url(path: Path, max_side: int = 1024) -> str:
    """A JPEG ``data:`` URL of the photo at ``path``, shrunk to ``max_side`` (vision APIs resize larger ones anyway)."""
    from qground.imageio import load_image

    image = load_image(path)
    image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class TransformersBackend:
    """A local Hub model at ``revision``, greedy, at most ``max_new_tokens`` new tokens. Loaded on first use."""

    def __init__(self, model_id: str, revision: str | None = None, max_new_tokens: int = 512) -> None:
        self.model_id, self.revision, self.max_new_tokens = model_id, revision, max_new_tokens
        self._parts = None

    def _load(self, vision: bool):
        if self._parts is None:
            from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

            kwargs = {"revision": self.revision, "use_safetensors": True}
            if vision:
                processor = AutoProcessor.from_pretrained(self.model_id, revision=self.revision)
                model = AutoModelForImageTextToText.from_pretrained(self.model_id, dtype="auto", **kwargs)
            else:
                processor = AutoTokenizer.from_pretrained(self.model_id, revision=self.revision)
                model = AutoModelForCausalLM.from_pretrained(self.model_id, dtype="auto", **kwargs)
            self._parts = (processor, model.to(_device()).eval(), vision)
        if self._parts[2] != vision:
            raise ValueError(f"{self.model_id} was loaded {'with' if self._parts[2] else 'without'} image support")
        return self._parts[:2]

    def complete(self, prompt: str, images: Sequence[Path] = ()) -> str:
        import torch

        processor, model = self._load(vision=bool(images))
        content = [*({"type": "image", "path": str(p)} for p in images), {"type": "text", "text": prompt}]
        messages = [{"role": "user", "content": content if images else prompt}]
        inputs = processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        ).to(model.device)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        decode = processor.decode if hasattr(processor, "decode") else processor.tokenizer.decode
        return decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


class TransformersEmbedder:
    """A Hub text encoder at ``revision``: ``pooling`` "last" (E5-Mistral: the last token's state, after
    ``instruction``) or "mean" (over the non-padding tokens); vectors L2-normalized, in batches of ``batch``."""

    def __init__(
        self,
        model_id: str = DEFAULT_EMBEDDER,
        revision: str | None = None,
        pooling: str = "last",
        instruction: str = E5_INSTRUCTION,
        batch: int = 8,
    ) -> None:
        if pooling not in ("last", "mean"):
            raise ValueError(f"pooling must be 'last' or 'mean', got {pooling!r}")
        self.model_id, self.revision, self.pooling, self.instruction, self.batch = (
            model_id,
            revision,
            pooling,
            instruction,
            batch,
        )
        self._parts = None

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), d) float32 rows of unit length; (0, 0) for no texts."""
        import torch

        tokenizer, model = self._load()
        rows = []
        for start in range(0, len(texts), self.batch):
            input_ids, mask = self._encode(tokenizer, texts[start : start + self.batch])
            with torch.inference_mode():
                output = model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device))
            hidden = output.last_hidden_state.float()
            mask = mask.to(hidden.device)
            if self.pooling == "last":
                pooled = hidden[torch.arange(len(mask)), mask.sum(1) - 1]
            else:
                pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
        return np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float32)

    def _load(self):
        if self._parts is None:
            from transformers import AutoModel, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.model_id, revision=self.revision)
            model = AutoModel.from_pretrained(self.model_id, revision=self.revision, use_safetensors=True, dtype="auto")
            self._parts = (tokenizer, model.to(_device()).eval())
        return self._parts

    def _encode(self, tokenizer, texts: Sequence[str]):
        """Right-padded (input_ids, attention_mask), each int64 (len(texts), longest), of ``instruction + text``.

        For "last" pooling every sequence ends with the EOS token, appended where the tokenizer does not add it itself
        (E5-Mistral pools the EOS state). Padding is never attended to (a causal model's real tokens do not see the
        padding after them, and the pooling masks it out), so a tokenizer without a pad token works too.
        """
        import torch

        eos = tokenizer.eos_token_id if self.pooling == "last" else None
        limit = MAX_EMBED_TOKENS - (eos is not None)
        encoded = tokenizer([self.instruction + t for t in texts], truncation=True, max_length=limit)["input_ids"]
        if eos is not None:
            encoded = [ids if ids[-1:] == [eos] else [*ids, eos] for ids in encoded]
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        return input_ids, mask


def _device() -> str:
    """Where a local model runs: the GPU when there is one."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backend transformers|http``, ``--model``, ``--revision``, ``--url``, ``--key-env``, ``--retries``,
    ``--backoff`` (``with_retries``' arguments)."""
    group = parser.add_argument_group("model backend")
    group.add_argument("--backend", choices=("transformers", "http"), default="transformers")
    group.add_argument("--model", required=True, help="Hub id (transformers) or the endpoint's model name (http)")
    group.add_argument("--revision", help="Hub revision of --model (transformers)")
    group.add_argument("--url", help="OpenAI-compatible base URL, e.g. https://api.openai.com/v1 (http)")
    group.add_argument("--key-env", default="OPENAI_API_KEY", help="environment variable holding the API key (http)")
    group.add_argument("--retries", type=int, default=3, help="attempts per request before it counts as failed")
    group.add_argument("--backoff", type=float, default=2.0, help="retry wait base in seconds (default %(default)s)")


def backend_from_arguments(args: argparse.Namespace) -> TextBackend:
    """The backend ``add_backend_arguments``' options describe; ValueError when ``--url`` is missing for http."""
    if args.backend == "http":
        if not args.url:
            raise ValueError("--backend http needs --url")
        return HTTPBackend(args.url, args.model, args.key_env)
    return TransformersBackend(args.model, args.revision)
