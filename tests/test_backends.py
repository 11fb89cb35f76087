"""Model backends of the data builders (``training.backends``): the OpenAI-compatible HTTP backend against a local
server, retries, and the transformers backend and embedder on tiny random models saved to a temporary folder."""

from __future__ import annotations

import argparse
import base64
import io
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qground.tokenizer import basic_corpus, train_bpe_tokenizer
from training.backends import (
    BackendError,
    HTTPBackend,
    TransformersBackend,
    TransformersEmbedder,
    add_backend_arguments,
    backend_from_arguments,
    data_url,
    with_retries,
)

KEY_ENV = "QGROUND_TEST_API_KEY"
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def reply(text: str) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()


@dataclass
class Endpoint:
    """A local ``/chat/completions`` server: answers with ``responses`` (status, body) in turn, then 200 + "ok";
    ``requests`` holds each request's path, headers and JSON body."""

    url: str
    responses: list[tuple[int, bytes]] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    state = Endpoint("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
            status, payload = state.responses.pop(0) if state.responses else (200, reply("ok"))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1/"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def photo_path(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (200, 40, 10)).save(path)
    return path


# -- HTTP --------------------------------------------------------------------------------------------------------------
def test_http_backend_sends_model_text_images_and_key(endpoint, photo_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-123")
    backend = HTTPBackend(endpoint.url, "some-model", key_env=KEY_ENV)
    endpoint.responses.append((200, reply("The first image is sharper.")))
    assert backend.complete("Compare them.", [photo_path, photo_path]) == "The first image is sharper."
    request = endpoint.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test-123"
    body = request["body"]
    assert body["model"] == "some-model" and body["temperature"] == 0.0
    [message] = body["messages"]
    text, *images = message["content"]
    assert message["role"] == "user" and text == {"type": "text", "text": "Compare them."}
    assert len(images) == 2 and all(part["type"] == "image_url" for part in images)
    assert all(part["image_url"]["url"].startswith("data:image/jpeg;base64,") for part in images)


def test_http_backend_sends_no_authorization_without_a_key(endpoint, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    assert HTTPBackend(endpoint.url, "m", key_env=KEY_ENV).complete("Hi") == "ok"
    assert "Authorization" not in endpoint.requests[0]["headers"]
    assert endpoint.requests[0]["body"]["messages"][0]["content"] == [{"type": "text", "text": "Hi"}]


def test_server_errors_and_rate_limits_are_retried(endpoint):
    backend = HTTPBackend(endpoint.url, "m", key_env=KEY_ENV)
    endpoint.responses += [(500, b"{}"), (429, b"{}"), (200, reply("finally"))]
    waits: list[float] = []
    assert with_retries(lambda: backend.complete("Hi"), attempts=3, sleep=waits.append) == "finally"
    assert waits == [2.0, 4.0] and len(endpoint.requests) == 3
    endpoint.responses += [(503, b"{}"), (502, b"{}")]
    with pytest.raises(BackendError, match="HTTP 502"):
        with_retries(lambda: backend.complete("Hi"), attempts=2, sleep=waits.append)
    assert len(endpoint.requests) == 5


def test_a_client_error_is_not_retried(endpoint):
    backend = HTTPBackend(endpoint.url, "m", key_env=KEY_ENV)
    endpoint.responses.append((400, b'{"error": "bad model"}'))
    with pytest.raises(ValueError, match='HTTP 400: {"error": "bad model"}'):
        with_retries(lambda: backend.complete("Hi"), sleep=pytest.fail)
    assert len(endpoint.requests) == 1


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b'{"choices": []}',
        b'{"choices": [{"message": {}}]}',
        b'{"choices": [{"message": {"content": null}}]}',
    ],
)
def test_a_malformed_reply_is_a_backend_error(endpoint, payload):
    endpoint.responses.append((200, payload))
    with pytest.raises(BackendError, match="unexpected reply"):
        HTTPBackend(endpoint.url, "m", key_env=KEY_ENV).complete("Hi")


def test_an_unreachable_endpoint_is_a_backend_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BackendError, match="ConnectError"):
        HTTPBackend(f"http://127.0.0.1:{port}", "m", timeout=5).complete("Hi")


def test_with_retries_needs_an_attempt():
    with pytest.raises(ValueError, match="attempts must be ≥ 1"):
        with_retries(lambda: "never", attempts=0)


def test_data_url_is_a_shrunk_jpeg(photo_path):
    url = data_url(photo_path, max_side=20)
    assert url.startswith("data:image/jpeg;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert image.format == "JPEG" and image.size == (20, 15)


def test_backend_from_arguments():
    parser = argparse.ArgumentParser()
    add_backend_arguments(parser)
    http = backend_from_arguments(parser.parse_args(["--backend", "http", "--url", "http://h/v1", "--model", "m"]))
    assert isinstance(http, HTTPBackend) and http.url == "http://h/v1/chat/completions" and http.model == "m"
    local = backend_from_arguments(parser.parse_args(["--model", "org/model", "--revision", "abc"]))
    assert isinstance(local, TransformersBackend) and (local.model_id, local.revision) == ("org/model", "abc")
    with pytest.raises(ValueError, match="--backend http needs --url"):
        backend_from_arguments(parser.parse_args(["--backend", "http", "--model", "m"]))


# -- transformers ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A randomly initialized 2-layer ``LlamaForCausalLM`` and a small BPE tokenizer with a chat template, saved."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = train_bpe_tokenizer(basic_corpus(), vocab_size=300)
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_transformers_backend_answers_with_a_string(tiny_llama):
    backend = TransformersBackend(str(tiny_llama), max_new_tokens=4)
    answer = backend.complete("The first image is blurry. Which image is sharper?")
    assert isinstance(answer, str)
    assert backend.complete("The first image is blurry. Which image is sharper?") == answer  # greedy


def test_embedder_rows_are_unit_length_and_pooling_matters(tiny_llama):
    texts = ["noise", "The first image is blurry and dark.", "overexposure"]
    last = TransformersEmbedder(str(tiny_llama), pooling="last", batch=2).embed(texts)
    mean = TransformersEmbedder(str(tiny_llama), pooling="mean", batch=2).embed(texts)
    for rows in (last, mean):
        assert rows.shape == (3, 32) and rows.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    assert np.abs(last - mean).max() > 0.1
    alone = TransformersEmbedder(str(tiny_llama), pooling="last").embed(texts[:1])
    np.testing.assert_allclose(alone[0], last[0], atol=1e-5)  # padding in a batch does not change a row
    assert TransformersEmbedder(str(tiny_llama)).embed([]).shape == (0, 0)


def test_last_pooling_reads_the_appended_eos_state(tiny_llama):
    """E5-Mistral pools the EOS token's state; a tokenizer that does not add EOS gets it appended."""
    from transformers import AutoModel, AutoTokenizer

    embedder = TransformersEmbedder(str(tiny_llama), pooling="last", instruction="Query: ")
    tokenizer, model = AutoTokenizer.from_pretrained(tiny_llama), AutoModel.from_pretrained(tiny_llama)
    ids = tokenizer("Query: noise")["input_ids"] + [tokenizer.eos_token_id]
    with torch.inference_mode():
        state = model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
    expected = (state / state.norm()).numpy()
    np.testing.assert_allclose(embedder.embed(["noise"])[0], expected, atol=1e-5)


def test_embedder_refuses_an_unknown_pooling():
    with pytest.raises(ValueError, match="pooling must be 'last' or 'mean', got 'cls'"):
        TransformersEmbedder("any", pooling="cls")
