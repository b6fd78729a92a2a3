"""`zigllama serve` as a user meets it: a real uvicorn subprocess on 127.0.0.1, driven by the
official ``openai`` client and by raw HTTP (httpx) for what the client would refuse to send.

Oracles: the in-process model (``model.chat`` / ``model.generate``, greedy) for the text; hand maths
(``math.fsum`` log-softmax) for logprobs; llama.cpp's tokenizer for /tokenize; ``prometheus_client``'s
parser for /metrics; OpenAI's error shape for the 4xx cases. Every request has a timeout, and the
server is started with one, so nothing here can hang the suite.
"""

from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from oracles import require_module

from zigllama_lib.inference.generation import GenerationConfig, generate_steps, make_sampler
from zigllama_lib.models.decoder import numerics_named
from zigllama_lib.serve.process import ServerProcess

openai = require_module("openai")
prometheus_parser = require_module("prometheus_client.parser")

SMOLLM = "smollm2-135m-instruct"
API_KEY = "sk-zigllama-test"
N_CTX = 512
REQUEST_TIMEOUT_S = 120
AUTH = {"Authorization": f"Bearer {API_KEY}"}
HELLO = [{"role": "user", "content": "Hi! What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(gemma_path):
    env = {**os.environ, "ZIGLLAMA_API_KEY": API_KEY}  # the key from the environment, as a user would set it
    with ServerProcess.zigllama(["--model", SMOLLM, "--model", str(gemma_path), "--n-ctx", str(N_CTX),
                                 "--threads", "2", "--max-body-bytes", str(1024 * 1024)], env=env) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, timeout=REQUEST_TIMEOUT_S, max_retries=0)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=REQUEST_TIMEOUT_S) as c:
        yield c


@pytest.fixture(scope="module")
def gemma(gemma_path):
    import zigllama_lib as zl

    return zl.load(gemma_path, n_ctx=N_CTX, progress=False)


def metrics_of(http) -> dict[str, float]:
    """/metrics parsed by prometheus_client: ``{sample name (with labels): value}``."""
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in prometheus_parser.text_string_to_metric_families(r.text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return out


def wait_idle(http, timeout_s: float = 15.0) -> dict[str, float]:
    """Metrics once the engine has nothing queued or running (fails after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        m = metrics_of(http)
        if m["zigllama_queue_depth"] == 0:
            return m
        assert time.monotonic() < deadline, f"the engine is still busy after {timeout_s} s: {m}"
        time.sleep(0.05)


def sse_events(response) -> list:
    """The ``data:`` payloads of an SSE response, JSON-decoded ("[DONE]" kept as the string)."""
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line[len("data: "):]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
        else:
            assert line == "", f"unexpected SSE line {line!r}"
    return out


def greedy_chat(model, messages, max_tokens):
    ids = list(model.chat_ids(messages, max_tokens=max_tokens, temperature=0.0))
    return model.tokenizer.decode(ids), len(ids), "stop" if len(ids) < max_tokens else "length"


def greedy_completion(model, prompt, max_tokens):
    ids = model.tokenizer.encode(prompt, add_special=True, parse_special=True)
    out = list(model.generate_ids(ids, max_tokens=max_tokens, temperature=0.0))
    text = "".join(model.generate(prompt, max_tokens=max_tokens, temperature=0.0, parse_special=True))
    return text, len(ids), len(out), "stop" if len(out) < max_tokens else "length"


# -- models, health ---------------------------------------------------------------------------
def test_models_lists_the_registry_name_and_the_file_stem(client, gemma_path):
    ids = [m.id for m in client.models.list().data]
    assert ids == [SMOLLM, gemma_path.stem]


def test_health_needs_no_key(server):
    r = httpx.get(server.url + "/health", timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "ok"}


# -- chat ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("messages", [
    HELLO,
    [{"role": "system", "content": "You answer in one short sentence."},
     {"role": "user", "content": "Name a colour."},
     {"role": "assistant", "content": "Blue."},
     {"role": "user", "content": "And another one?"}],
], ids=["one-turn", "system-multi-turn"])
def test_chat_greedy_equals_model_chat_with_usage(client, smollm, messages):
    expected, n_completion, finish = greedy_chat(smollm, messages, 40)
    r = client.chat.completions.create(model=SMOLLM, messages=messages, temperature=0, max_tokens=40)
    assert r.object == "chat.completion" and r.model == SMOLLM
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == expected
    assert r.choices[0].finish_reason == finish
    n_prompt = len(smollm.chat_prompt_ids(messages))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == \
        (n_prompt, n_completion, n_prompt + n_completion)


def test_chat_stream_equals_non_stream(client, smollm):
    whole = client.chat.completions.create(model=SMOLLM, messages=HELLO, temperature=0, max_tokens=40)
    chunks = list(client.chat.completions.create(model=SMOLLM, messages=HELLO, temperature=0, max_tokens=40,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_on_the_second_model_uses_its_own_template(client, gemma, gemma_path):
    expected, n_completion, finish = greedy_chat(gemma, HELLO, 24)
    r = client.chat.completions.create(model=gemma_path.stem, messages=HELLO, temperature=0, max_tokens=24)
    assert r.choices[0].message.content == expected and r.usage.completion_tokens == n_completion
    assert r.usage.prompt_tokens == len(gemma.chat_prompt_ids(HELLO))


def test_chat_text_content_parts_are_joined(client, smollm):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hi! What is the capital "},
                                          {"type": "text", "text": "of France?"}]}]
    a = client.chat.completions.create(model=SMOLLM, messages=parts, temperature=0, max_tokens=12)
    assert a.choices[0].message.content == greedy_chat(smollm, HELLO, 12)[0]


# -- completions --------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt", ["The capital of France is", "The Japanese word for thank you is"])
def test_completion_greedy_equals_generate_stream_and_not(client, smollm, prompt):
    expected, n_prompt, n_completion, finish = greedy_completion(smollm, prompt, 24)
    r = client.completions.create(model=SMOLLM, prompt=prompt, temperature=0, max_tokens=24)
    assert r.object == "text_completion"
    assert r.choices[0].text == expected and r.choices[0].finish_reason == finish
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (n_prompt, n_completion)
    chunks = list(client.completions.create(model=SMOLLM, prompt=prompt, temperature=0, max_tokens=24, stream=True))
    pieces = [c.choices[0].text for c in chunks]
    assert "".join(pieces) == expected
    assert "\ufffd" not in "".join(pieces)  # no chunk ends inside a UTF-8 character (the Japanese prompt tests it)


def test_completion_of_token_ids_equals_the_text_prompt(client, smollm):
    prompt = "The capital of France is"
    ids = smollm.tokenizer.encode(prompt, add_special=True, parse_special=True)
    a = client.completions.create(model=SMOLLM, prompt=prompt, temperature=0, max_tokens=8)
    b = client.completions.create(model=SMOLLM, prompt=ids, temperature=0, max_tokens=8)
    assert a.choices[0].text == b.choices[0].text and b.usage.prompt_tokens == len(ids)


def test_default_max_tokens_of_completions_is_16(client):
    r = client.completions.create(model=SMOLLM, prompt="Once upon a time", temperature=0)
    assert r.usage.completion_tokens <= 16
    assert r.choices[0].finish_reason == "length" or r.usage.completion_tokens < 16


def test_echo_puts_the_prompt_first(client, smollm):
    prompt = "The capital of France is"
    expected = greedy_completion(smollm, prompt, 6)[0]
    r = client.completions.create(model=SMOLLM, prompt=prompt, temperature=0, max_tokens=6, echo=True)
    assert r.choices[0].text == prompt + expected
    r0 = client.completions.create(model=SMOLLM, prompt=prompt, temperature=0, max_tokens=0, echo=True)
    assert r0.choices[0].text == prompt and r0.usage.completion_tokens == 0


# -- stop strings -------------------------------------------------------------------------------
def test_stop_strings_cut_before_the_match_and_are_never_emitted(client, smollm):
    prompt = "Once upon a time"
    text = greedy_completion(smollm, prompt, 32)[0]
    words = text.split()
    assert len(words) > 6, text
    mid = len(text) // 2
    for stop in (words[4], text[mid:mid + 5]):  # a whole word, and five characters likely across tokens
        expected = text[:text.find(stop)]
        for stream in (False, True):
            kw = dict(model=SMOLLM, prompt=prompt, temperature=0, max_tokens=32, stop=[stop, "never-appears-xyz"])
            if stream:
                chunks = list(client.completions.create(stream=True, **kw))
                got = "".join(c.choices[0].text for c in chunks)
                finish = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
            else:
                r = client.completions.create(**kw)
                got, finish = r.choices[0].text, [r.choices[0].finish_reason]
            assert got == expected, (stop, stream)
            assert finish == ["stop"]


def test_chat_stop_string(client, smollm):
    text = greedy_chat(smollm, HELLO, 40)[0]
    stop = text.split()[2]
    r = client.chat.completions.create(model=SMOLLM, messages=HELLO, temperature=0, max_tokens=40, stop=stop)
    assert r.choices[0].message.content == text[:text.find(stop)]
    assert r.choices[0].finish_reason == "stop"


# -- logprobs -----------------------------------------------------------------------------------
def hand_log_softmax(z) -> list[float]:
    z = [float(v) for v in z]
    m = max(z)
    log_sum = math.log(math.fsum(math.exp(v - m) for v in z))
    return [v - m - log_sum for v in z]


def greedy_steps(model, ids, n):
    """The greedy generation's (token, logits) per step, exactly as the server's engine sees them."""
    steps = generate_steps(model.decoder, list(ids), make_sampler(0.0, 40, 0.95, 0.05, None),
                           numerics_named(model.numerics), model.n_ctx, model.tokenizer.is_eog,
                           GenerationConfig(max_tokens=n), {})
    return [(s.token, np.array(s.logits, dtype=np.float32)) for s in steps]


def piece(model, t) -> str:
    return model.tokenizer.token_bytes(int(t), render_special=True).decode("utf-8", "replace")


def top_ids(z, n):
    return sorted(range(len(z)), key=lambda i: (-float(z[i]), i))[:n]


def test_chat_logprobs_are_the_log_softmax_of_the_logits(client, smollm):
    steps = greedy_steps(smollm, smollm.chat_prompt_ids(HELLO), 6)
    r = client.chat.completions.create(model=SMOLLM, messages=HELLO, temperature=0, max_tokens=6, logprobs=True,
                                       top_logprobs=3)
    entries = r.choices[0].logprobs.content
    assert len(entries) == len(steps)
    for entry, (token, z) in zip(entries, steps):
        lp = hand_log_softmax(z)
        assert entry.token == piece(smollm, token) and entry.bytes == list(smollm.tokenizer.token_bytes(token))
        assert entry.logprob == pytest.approx(lp[token], abs=1e-9)
        assert [t.token for t in entry.top_logprobs] == [piece(smollm, i) for i in top_ids(z, 3)]
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx([lp[i] for i in top_ids(z, 3)], abs=1e-9)


def test_completion_logprobs_offsets_and_stream(client, smollm):
    prompt = "The capital of France is"
    steps = greedy_steps(smollm, smollm.tokenizer.encode(prompt, add_special=True, parse_special=True), 5)
    kw = dict(model=SMOLLM, prompt=prompt, temperature=0, max_tokens=5, logprobs=2)
    lp = client.completions.create(**kw).choices[0].logprobs
    assert lp.tokens == [piece(smollm, t) for t, _ in steps]
    assert lp.token_logprobs == pytest.approx([hand_log_softmax(z)[t] for t, z in steps], abs=1e-9)
    assert [list(d) for d in lp.top_logprobs] == [[piece(smollm, i) for i in top_ids(z, 2)] for _, z in steps]
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(lp.tokens))]
    streamed = [c.choices[0].logprobs for c in client.completions.create(stream=True, **kw) if c.choices[0].logprobs]
    assert sum((s.tokens for s in streamed), []) == lp.tokens
    assert sum((s.text_offset for s in streamed), []) == lp.text_offset


def test_logit_bias_bans_the_greedy_token(client, smollm):
    prompt = "The capital of France is"
    (first, z), = greedy_steps(smollm, smollm.tokenizer.encode(prompt, add_special=True, parse_special=True), 1)
    runner_up = top_ids(z, 2)[1]
    r = client.completions.create(model=SMOLLM, prompt=prompt, temperature=0, max_tokens=1,
                                  logit_bias={str(first): -100})
    assert r.choices[0].text == smollm.tokenizer.decode([runner_up])


def test_seeded_sampling_repeats(client):
    kw = dict(model=SMOLLM, messages=HELLO, temperature=1.0, max_tokens=16, seed=1234)
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = client.chat.completions.create(**kw).choices[0].message.content
    assert a == b


# -- tokenize / detokenize --------------------------------------------------------------------
def test_tokenize_matches_llama_cpp_and_round_trips(http, llama_cpp, smollm_path):
    text = "Hello world! <|im_start|>user ünïcödé 123"
    llm = llama_cpp.Llama(model_path=str(smollm_path), vocab_only=True, verbose=False)
    expected = llm.tokenize(text.encode(), add_bos=False, special=True)
    r = http.post("/tokenize", json={"content": text})
    assert r.status_code == 200 and r.json()["tokens"] == expected
    pieces = http.post("/tokenize", json={"content": text, "with_pieces": True}).json()["tokens"]
    assert [p["id"] for p in pieces] == expected
    back = http.post("/detokenize", json={"tokens": expected})
    assert back.status_code == 200 and back.json()["content"] == text


# -- metrics ------------------------------------------------------------------------------------
def test_metrics_count_requests_and_tokens(client, http):
    before = wait_idle(http)
    r = client.chat.completions.create(model=SMOLLM, messages=HELLO, temperature=0, max_tokens=8)
    after = wait_idle(http)
    key = 'zigllama_requests_total{path="/v1/chat/completions",status="200"}'
    assert after[key] - before.get(key, 0) == 1
    assert after["zigllama_completion_tokens_total"] - before["zigllama_completion_tokens_total"] == \
        r.usage.completion_tokens
    assert after["zigllama_prompt_tokens_total"] - before["zigllama_prompt_tokens_total"] == r.usage.prompt_tokens
    assert after["zigllama_request_latency_seconds_count"] - before["zigllama_request_latency_seconds_count"] == 1
    assert after["zigllama_request_latency_seconds_sum"] > before["zigllama_request_latency_seconds_sum"]
    assert after['zigllama_request_latency_seconds_bucket{le="+Inf"}'] == after["zigllama_request_latency_seconds_count"]
    assert after["zigllama_time_to_first_token_seconds_count"] - before["zigllama_time_to_first_token_seconds_count"] == 1


# -- bad input: a 4xx in OpenAI's shape, and the next request is answered ----------------------
CHAT = "/v1/chat/completions"
BAD_REQUESTS = [
    # (name, path, body (bytes or JSON), status, param or None, words the message must contain)
    ("malformed-json", CHAT, b'{"model": "x", "messages": [', 400, None, ["JSON"]),
    ("not-an-object", CHAT, b"[1, 2]", 400, None, ["object"]),
    ("no-model", CHAT, {"messages": HELLO}, 400, "model", ["model"]),
    ("unknown-model", CHAT, {"model": "gpt-9", "messages": HELLO}, 404, "model", ["gpt-9"]),
    ("no-messages", CHAT, {"model": SMOLLM}, 400, "messages", ["messages"]),
    ("messages-not-list", CHAT, {"model": SMOLLM, "messages": "hi"}, 400, "messages", ["messages"]),
    ("message-without-role", CHAT, {"model": SMOLLM, "messages": [{"content": "hi"}]}, 400, "messages", ["role"]),
    ("temperature-string", CHAT, {"model": SMOLLM, "messages": HELLO, "temperature": "hot"}, 400, "temperature",
     ["temperature"]),
    ("temperature-too-high", CHAT, {"model": SMOLLM, "messages": HELLO, "temperature": 7}, 400, "temperature",
     ["temperature"]),
    ("negative-max-tokens", CHAT, {"model": SMOLLM, "messages": HELLO, "max_tokens": -1}, 400, "max_tokens",
     ["max_tokens"]),
    ("huge-max-tokens", CHAT, {"model": SMOLLM, "messages": HELLO, "max_tokens": 10 ** 12}, 400, "max_tokens",
     [str(N_CTX)]),
    ("float-max-tokens", CHAT, {"model": SMOLLM, "messages": HELLO, "max_tokens": 1.5}, 400, "max_tokens",
     ["max_tokens"]),
    ("stop-not-strings", CHAT, {"model": SMOLLM, "messages": HELLO, "stop": [1]}, 400, "stop", ["stop"]),
    ("five-stops", CHAT, {"model": SMOLLM, "messages": HELLO, "stop": list("abcde")}, 400, "stop", ["4"]),
    ("n-2", CHAT, {"model": SMOLLM, "messages": HELLO, "n": 2}, 400, "n", ["n"]),
    ("presence-penalty", CHAT, {"model": SMOLLM, "messages": HELLO, "presence_penalty": 5}, 400,
     "presence_penalty", ["presence_penalty"]),
    ("json-mode-unknown", CHAT, {"model": SMOLLM, "messages": HELLO, "response_format": {"type": "xml"}}, 400,
     "response_format", ["response_format"]),
    ("grammar-malformed", CHAT, {"model": SMOLLM, "messages": HELLO, "grammar": 'root ::= ("a" | "b"\n'}, 400,
     "grammar", ["line 2, column 1"]),
    ("mirostat-3", CHAT, {"model": SMOLLM, "messages": HELLO, "mirostat": 3}, 400, "mirostat", ["mirostat"]),
    ("bias-out-of-vocab", CHAT, {"model": SMOLLM, "messages": HELLO, "logit_bias": {"999999": 1}}, 400,
     "logit_bias", ["999999"]),
    ("top-logprobs-21", CHAT, {"model": SMOLLM, "messages": HELLO, "logprobs": True, "top_logprobs": 21}, 400,
     "top_logprobs", ["top_logprobs"]),
    ("prompt-ids-out-of-vocab", "/v1/completions", {"model": SMOLLM, "prompt": [1, 2, 10 ** 9]}, 400, "prompt",
     ["1000000000"]),
    ("empty-prompt", "/v1/completions", {"model": SMOLLM, "prompt": ""}, 400, "prompt", ["empty"]),
    ("prompt-batch", "/v1/completions", {"model": SMOLLM, "prompt": ["a", "b"]}, 400, "prompt", ["prompt"]),
    ("detokenize-strings", "/detokenize", {"tokens": ["a"]}, 400, "tokens", ["tokens"]),
]


@pytest.mark.parametrize("name,path,body,status,param,words", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(http, name, path, body, status, param, words):
    before = wait_idle(http)["zigllama_engine_tokens_total"]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = http.post(path, content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param
    assert err["type"] == "invalid_request_error"  # OpenAI's type for 400, 404 (model_not_found) and 413
    for w in words:
        assert w in err["message"], err["message"]
    assert wait_idle(http)["zigllama_engine_tokens_total"] == before  # no work was done
    assert http.post("/v1/completions", json={"model": SMOLLM, "prompt": "Hi", "max_tokens": 1}).status_code == 200


def test_prompt_longer_than_the_context_names_both_numbers(client, smollm):
    prompt = "hello " * 700
    n = len(smollm.tokenizer.encode(prompt, add_special=True, parse_special=True))
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=SMOLLM, prompt=prompt, max_tokens=1)
    body = e.value.body
    assert body["code"] == "context_length_exceeded" and str(N_CTX) in body["message"] and str(n) in body["message"]


def test_a_10_mb_body_is_a_413(http):
    r = http.post(CHAT, content=b'{"model": "' + b"x" * (10 * 1024 * 1024) + b'"}',
                  headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    assert http.get("/v1/models").status_code == 200


def test_unknown_route_and_wrong_method_are_json_errors(http):
    r = http.get("/v1/nothing-here")
    assert r.status_code == 404 and "error" in r.json()
    r = http.get(CHAT)
    assert r.status_code == 405 and "error" in r.json()


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}],
                         ids=["no-key", "wrong-key", "no-bearer"])
def test_a_missing_or_wrong_key_is_a_401_and_no_work(server, http, headers):
    before = wait_idle(http)["zigllama_engine_tokens_total"]
    for path, body in ((CHAT, {"model": SMOLLM, "messages": HELLO}), ("/v1/completions", {"model": SMOLLM,
                                                                                          "prompt": "Hi"}),
                       ("/tokenize", {"content": "hi"})):
        r = httpx.post(server.url + path, json=body, headers=headers, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(server.url + "/v1/models", headers=headers, timeout=30).status_code == 401
    assert wait_idle(http)["zigllama_engine_tokens_total"] == before


def test_the_openai_client_raises_its_own_errors(server, client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-wrong", timeout=30, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=SMOLLM, messages=HELLO)


# -- disconnects and many clients ----------------------------------------------------------------
LONG = {"model": SMOLLM, "prompt": "Once upon a time, in a land far away,", "temperature": 0, "max_tokens": 400}


def test_a_streaming_client_that_leaves_stops_its_generation(server, http):
    before = wait_idle(http)
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        with c.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as r:
            got = 0
            for line in r.iter_lines():
                got += line.startswith("data: ")
                if got == 3:
                    break
    after = wait_idle(http, timeout_s=10)
    assert after["zigllama_cancelled_requests_total"] - before["zigllama_cancelled_requests_total"] == 1
    assert after["zigllama_tokens_after_cancel_total"] - before["zigllama_tokens_after_cancel_total"] <= 1
    assert after["zigllama_engine_tokens_total"] - before["zigllama_engine_tokens_total"] < LONG["max_tokens"] // 2


def test_a_waiting_client_that_leaves_stops_its_generation(server, http):
    before = wait_idle(http)
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=httpx.Timeout(60, read=0.5)) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.post("/v1/completions", json=LONG)
    after = wait_idle(http, timeout_s=10)
    assert after["zigllama_cancelled_requests_total"] - before["zigllama_cancelled_requests_total"] == 1
    assert after["zigllama_engine_tokens_total"] - before["zigllama_engine_tokens_total"] < LONG["max_tokens"]


def stream_deltas(server, body, leave_after: int | None = None) -> tuple[list[str], float]:
    """The content deltas of one streamed chat request and the seconds to its first one; with
    ``leave_after``, hang up after that many deltas."""
    deltas, ttft, t0 = [], None, time.monotonic()
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=REQUEST_TIMEOUT_S) as c:
        with c.stream("POST", CHAT, json={**body, "stream": True}) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choices = json.loads(line[6:])["choices"]
                if choices and choices[0]["delta"].get("content"):
                    ttft = ttft or time.monotonic() - t0
                    deltas.append(choices[0]["delta"]["content"])
                    if leave_after is not None and len(deltas) >= leave_after:
                        break
    return deltas, ttft


def test_32_concurrent_streams_a_third_leaving(server, http):
    """Each completed stream equals the same request alone; nobody starves (a request waits at most
    about as long as the requests that arrived before it take); memory returns to its baseline."""
    questions = ["What is 2+2?", "Name a fruit.", "Say hello.", "What colour is the sky?"]
    bodies = [{"model": SMOLLM, "messages": [{"role": "user", "content": q}], "temperature": 0, "max_tokens": 10}
              for q in questions]
    t0 = time.monotonic()
    alone = [stream_deltas(server, b)[0] for b in bodies]
    slowest_alone = (time.monotonic() - t0) / len(bodies) * 2  # generous: a busy machine
    wait_idle(http)
    baseline = server.rss()
    before = metrics_of(http)

    def one(i):
        time.sleep(0.04 * i)  # arrival order i
        return stream_deltas(server, bodies[i % 4], leave_after=1 if i % 3 == 2 else None)

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(32)))
    for i, (deltas, ttft) in enumerate(results):
        assert deltas == (alone[i % 4][:1] if i % 3 == 2 else alone[i % 4]), i
        assert ttft < (i + 1) * slowest_alone + 5.0, f"request {i} waited {ttft:.1f} s for its first token"
    after = wait_idle(http)
    key = 'zigllama_requests_total{path="/v1/chat/completions",status="200"}'
    assert after[key] - before[key] == 32
    assert http.get("/health").status_code == 200
    assert server.rss() < baseline + 64 * 1024 * 1024


@pytest.mark.parametrize("model_id", [SMOLLM, "gemma3-270m"])
def test_eight_concurrent_requests_batched_each_as_alone(server, client, http, model_id, gemma_path):
    """Continuous batching in the server: 8 concurrent greedy completions of different lengths are
    decoded together (the engine's widest batch reaches 8 rows) and each text equals the same request
    sent alone."""
    name = SMOLLM if model_id == SMOLLM else gemma_path.stem
    prompts = ["The capital of France is", "Once upon a time", "def fib(n):", "1, 2, 3, 4,", "Water boils at",
               "The quick brown fox", "In 1492, Columbus", "Photosynthesis is"]

    def complete(k):
        r = client.completions.create(model=name, prompt=prompts[k], max_tokens=24 + 4 * k, temperature=0)
        return r.choices[0].text

    alone = [complete(k) for k in range(8)]
    before = wait_idle(http)
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(complete, range(8)))
    assert together == alone
    after = wait_idle(http)
    assert after["zigllama_engine_batch_rows_max"] == 8
    steps = after["zigllama_engine_steps_total"] - before["zigllama_engine_steps_total"]
    tokens = after["zigllama_engine_tokens_total"] - before["zigllama_engine_tokens_total"]
    assert steps < tokens / 2, f"{steps} steps for {tokens} tokens: the requests were not batched"
