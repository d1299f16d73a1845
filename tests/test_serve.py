"""`lmlab serve`: the OpenAI endpoints (plain and streamed), their errors, the batching engine and the config, on
tiny GPTs through FastAPI's TestClient. The real-socket, `openai`-client and browser tests are in
test_serve_e2e.py (slow)."""

from __future__ import annotations

import json
import threading

import pytest
from fastapi.testclient import TestClient

from lmlab.generation import GenerationConfig, SamplingOptions, generate_text
from lmlab.serve import Engine, Job, QueueFull, decode_jobs
from tests.helpers.serve import CHAT_MODEL, TEXT_MODEL, chat_app, text_app


@pytest.fixture(scope="module")
def chat() -> TestClient:
    with TestClient(chat_app(context=32, max_tokens=4)) as client:
        yield client


@pytest.fixture(scope="module")
def text() -> TestClient:
    with TestClient(text_app(max_tokens=8, max_body_bytes=2000)) as client:
        yield client


def events(response) -> list:
    """The data of each server-sent event; the last must be [DONE]."""
    data = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def test_health_models_and_page(chat: TestClient) -> None:
    health = chat.get("/health").json()
    assert (health["status"], health["model"], health["chat"], health["queued"]) == ("ok", CHAT_MODEL, True, 0)
    models = chat.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [CHAT_MODEL]
    assert chat.get(f"/v1/models/{CHAT_MODEL}").json()["id"] == CHAT_MODEL
    page = chat.get("/")
    assert page.status_code == 200 and "<title>lmlab chat</title>" in page.text
    assert "http://" not in page.text.replace("http://127", "") and "https://" not in page.text  # no CDN


def test_chat_completion_and_its_stream_agree(chat: TestClient) -> None:
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi there"}], "seed": 3, "max_tokens": 4}
    plain = chat.post("/v1/chat/completions", json=body).json()
    assert plain["object"] == "chat.completion" and plain["choices"][0]["message"]["role"] == "assistant"
    assert plain["choices"][0]["finish_reason"] in ("stop", "length")
    assert plain["usage"]["prompt_tokens"] > 0 and 0 < plain["usage"]["completion_tokens"] <= 4
    streamed = chat.post(
        "/v1/chat/completions", json=body | {"stream": True, "stream_options": {"include_usage": True}}
    )
    assert streamed.headers["content-type"].startswith("text/event-stream")
    chunks = events(streamed)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert chunks[-1]["usage"] == plain["usage"] and chunks[-1]["choices"] == []


def test_completion_with_stop_seed_and_lmlab_processors(text: TestClient) -> None:
    body = {"model": TEXT_MODEL, "prompt": "the ", "max_tokens": 8, "seed": 1, "temperature": 0.9}
    first = text.post("/v1/completions", json=body).json()
    assert first["object"] == "text_completion" and first["model"] == TEXT_MODEL
    assert text.post("/v1/completions", json=body).json()["choices"][0]["text"] == first["choices"][0]["text"]
    assert first["usage"]["completion_tokens"] == 8 and first["choices"][0]["finish_reason"] == "length"
    stop = first["choices"][0]["text"][2]
    cut = text.post("/v1/completions", json=body | {"stop": [stop]}).json()["choices"][0]
    assert cut["text"] == first["choices"][0]["text"].split(stop)[0] and cut["finish_reason"] == "stop"
    extras = {
        "top_k": 3,
        "min_p": 0.05,
        "repetition_penalty": 1.3,
        "processors": [{"name": "no_repeat_ngram", "size": 2}],
    }
    assert text.post("/v1/completions", json=body | extras).status_code == 200
    past_context = text.post("/v1/completions", json=body | {"max_tokens": 80}).json()  # the window slides
    assert past_context["usage"]["completion_tokens"] == 80
    chunks = events(text.post("/v1/completions", json=body | {"stream": True, "echo": True}))
    assert "".join(c["choices"][0]["text"] for c in chunks) == "the " + first["choices"][0]["text"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b'{"model": "tiny-text", "prompt": ', 400, "invalid_json"),
        ({"model": "gpt-4o", "prompt": "the "}, 404, "model_not_found"),
        ({"model": TEXT_MODEL, "prompt": "the ", "max_tokens": -1}, 400, "invalid_value"),
        ({"model": TEXT_MODEL, "prompt": "the " * 17}, 400, "context_length_exceeded"),
        ({"model": TEXT_MODEL, "prompt": "the ", "max_tokens": 5000}, 400, "invalid_value"),
        ({"model": TEXT_MODEL, "prompt": "the " * 600}, 413, "request_too_large"),
        ({"model": TEXT_MODEL, "prompt": "héllo€"}, 400, None),  # characters the char tokenizer lacks
        ({"model": TEXT_MODEL, "prompt": "the ", "temperature": "hot"}, 400, "invalid_value"),
        ({"model": TEXT_MODEL, "prompt": "the ", "processors": [{"name": "nope"}]}, 400, "invalid_value"),
        ({"prompt": "the "}, 400, "invalid_value"),
    ],
    ids=["malformed-json", "unknown-model", "negative-max-tokens", "prompt-past-context", "max-tokens-over-limit",
         "oversized-body", "unknown-characters", "bad-type", "unknown-processor", "no-model"],
)  # fmt: skip
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(text: TestClient, body, status, code) -> None:
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = text.post("/v1/completions", **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"] and "\n" not in error["message"]
    assert code is None or error["code"] == code
    assert (
        text.post("/v1/completions", json={"model": TEXT_MODEL, "prompt": "the ", "max_tokens": 2}).status_code == 200
    )


def test_chat_on_a_model_without_template_names_the_fix(text: TestClient) -> None:
    body = {"model": TEXT_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    response = text.post("/v1/chat/completions", json=body)
    assert response.status_code == 400 and "/v1/completions" in response.json()["error"]["message"]
    assert text.get("/nowhere").json()["error"]["code"] == "404"


def test_api_key() -> None:
    with TestClient(text_app(api_key="sekret")) as client:
        body = {"model": TEXT_MODEL, "prompt": "the ", "max_tokens": 2}
        assert client.post("/v1/completions", json=body).status_code == 401
        wrong = client.post("/v1/completions", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        assert client.get("/v1/models").status_code == 401 and client.get("/health").status_code == 200
        good = client.post("/v1/completions", json=body, headers={"Authorization": "Bearer sekret"})
        assert good.status_code == 200


def test_a_full_queue_answers_429() -> None:
    with TestClient(text_app(max_queue=1)) as client:
        app_engine = client.app.state.engine
        app_engine.stop()  # no worker: the queue fills
        app_engine.submit(Job([1], 1, lambda e: None))
        response = client.post("/v1/completions", json={"model": TEXT_MODEL, "prompt": "the "})
        assert response.status_code == 429 and response.json()["error"]["type"] == "rate_limit_error"


def test_batched_jobs_give_the_text_of_one_at_a_time() -> None:
    """Rows of one batch keep their own prompt, seed, stop and budget: the text equals generate_text's alone."""
    engine: Engine = text_app().state.engine
    sampling = SamplingOptions(temperature=1.0, top_k=5)
    specs = [("the ", 5, 7, []), ("all ", 9, 3, ["e"]), ("to die", 2, 11, [])]
    outputs: list[list] = [[] for _ in specs]
    jobs = [Job(engine.tokenizer.encode(p), n, outputs[i].append, sampling, [], stop, seed)
            for i, (p, seed, n, stop) in enumerate(specs)]  # fmt: skip
    decode_jobs(engine.model, engine.tokenizer, engine.block_size, jobs)
    for (prompt, seed, n, stop), out in zip(specs, outputs, strict=True):
        config = GenerationConfig(max_new_tokens=n, sampling=sampling, stop=stop, seed=seed)
        (alone,) = generate_text(engine.model, engine.tokenizer, [prompt], config, engine.block_size)
        assert "".join(v for k, v in out if k == "text") == alone.text
        assert out[-1][0] == "done" and out[-1][1].reason == ("stop" if alone.stopped else "length")


def test_concurrent_requests_share_batches_and_all_finish() -> None:
    with TestClient(text_app(max_tokens=16)) as client:
        engine = client.app.state.engine
        results: list[int] = []

        def ask(seed: int) -> None:
            body = {"model": TEXT_MODEL, "prompt": "the ", "seed": seed, "max_tokens": 16}
            results.append(client.post("/v1/completions", json=body).status_code)

        threads = [threading.Thread(target=ask, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert results == [200] * 8 and engine.largest_batch > 1


def test_engine_refuses_past_max_queue() -> None:
    engine = Engine(None, None, 8, max_queue=2)  # type: ignore[arg-type]  (never started: no model needed)
    engine.submit(Job([1], 1, lambda e: None))
    engine.submit(Job([1], 1, lambda e: None))
    with pytest.raises(QueueFull, match="max_queue=2"):
        engine.submit(Job([1], 1, lambda e: None))


def test_the_cli_serves_a_checkpoint_with_its_settings(tmp_path) -> None:
    from lmlab.cli.serve import build_app
    from tests.helpers.chat import SYSTEM_TEMPLATE, write_chat_checkpoint
    from tests.helpers.compose import command

    ckpt = write_chat_checkpoint(tmp_path / "chat.ckpt", template=SYSTEM_TEMPLATE, ends_turn=False)
    cfg = command("serve", [f"ckpt={ckpt}", "max_tokens=3", "system=you are there", "api_key=k", "context=16"])
    with TestClient(build_app(cfg), headers={"Authorization": "Bearer k"}) as client:
        health = client.get("/health").json()
        assert (health["model"], health["chat"], health["auth"]) == ("chat.ckpt", True, True)
        body = {"model": "chat.ckpt", "messages": [{"role": "user", "content": "hi"}]}
        reply = client.post("/v1/chat/completions", json=body).json()
        assert reply["usage"]["completion_tokens"] <= 3
        assert reply["usage"]["prompt_tokens"] > 5  # the system prompt was put first
        long = {"model": "chat.ckpt", "messages": [{"role": "user", "content": "hi " * 20}]}
        assert client.post("/v1/chat/completions", json=long).json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize("family", ["lstm", "ngram"])
def test_recurrent_and_windowed_models_serve_too(family: str) -> None:
    from lmlab.models import LSTMConfig, NGramConfig, build_model
    from lmlab.serve import ServeSettings, create_app
    from lmlab.tokenizers import CharTokenizerConfig
    from tests.helpers.compose import TINY_TEXT

    tokenizer = CharTokenizerConfig().train([TINY_TEXT])
    vocab = tokenizer.vocab_size
    config = LSTMConfig(vocab, n_layer=1, n_embd=16, n_hidden=16) if family == "lstm" else NGramConfig(vocab, order=3)
    engine = Engine(build_model(config).eval(), tokenizer, getattr(config, "block_size", 64))
    with TestClient(create_app(engine, ServeSettings(family, 256))) as client:
        body = {"model": family, "prompt": "the ", "max_tokens": 5, "stream": True, "seed": 0}
        chunks = events(client.post("/v1/completions", json=body))
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        plain = client.post("/v1/completions", json=body | {"stream": False}).json()
        assert plain["usage"]["completion_tokens"] == 5
        assert "".join(c["choices"][0]["text"] for c in chunks) == plain["choices"][0]["text"]
