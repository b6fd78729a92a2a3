"""The OpenAI-compatible HTTP server: FastAPI routes over :class:`.engine.Engine`.

    app = create_app({"smollm2-135m-instruct": model}, api_key=None)
    uvicorn.run(app, host="127.0.0.1", port=8080)       # what `zigllama serve` does

Routes: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``,
``GET /metrics`` (Prometheus text), and llama.cpp's ``POST /tokenize`` / ``POST /detokenize``.
Streaming is server-sent events in OpenAI's chunk format: ``data: {json}`` blocks, for chat a
role chunk first, ``data: [DONE]`` last. Errors are OpenAI's JSON (:mod:`.errors`).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..foundation.errors import ZigLlamaError
from ..models.registry import REGISTRY
from .engine import Engine, Job
from .errors import APIError
from .limits import MAX_BODY_BYTES, MAX_MESSAGES, MAX_PROMPT_CHARS, MAX_QUEUE, MAX_REQUEST_SECONDS, parse_json_body
from .params import GenParams, parse_common
DISCONNECT_POLL_S = 0.25          # how often a non-streaming request checks that its client is still there


class Histogram:
    """A Prometheus histogram: cumulative bucket counts, sum and count of observed seconds."""

    BOUNDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

    def __init__(self, name: str, help_: str):
        self.name, self.help = name, help_
        self.buckets = [0] * len(self.BOUNDS)
        self.sum, self.count = 0.0, 0

    def observe(self, seconds: float) -> None:
        for i, bound in enumerate(self.BOUNDS):
            if seconds <= bound:
                self.buckets[i] += 1
        self.sum += seconds
        self.count += 1

    def lines(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        out += [f'{self.name}_bucket{{le="{b}"}} {n}' for b, n in zip(self.BOUNDS, self.buckets)]
        return out + [f'{self.name}_bucket{{le="+Inf"}} {self.count}', f"{self.name}_sum {self.sum}",
                      f"{self.name}_count {self.count}"]


class Metrics:
    """Counters for ``GET /metrics`` (Prometheus text exposition format, written by hand: a few lines)."""

    def __init__(self):
        self.requests: dict[tuple[str, int], int] = {}
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.latency = Histogram("zigllama_request_latency_seconds", "End-to-end latency of generation requests.")
        self.ttft = Histogram("zigllama_time_to_first_token_seconds", "Time from request to its first token.")

    def count(self, path: str, status: int) -> None:
        self.requests[(path, status)] = self.requests.get((path, status), 0) + 1

    def text(self, engine: Engine) -> str:
        lines = ["# HELP zigllama_requests_total HTTP requests by route and status.",
                 "# TYPE zigllama_requests_total counter"]
        lines += [f'zigllama_requests_total{{path="{p}",status="{s}"}} {n}' for (p, s), n in sorted(self.requests.items())]
        for name, kind, value, help_ in (
                ("prompt_tokens_total", "counter", self.prompt_tokens, "Prompt tokens of accepted requests."),
                ("completion_tokens_total", "counter", self.completion_tokens, "Tokens generated for clients."),
                ("queue_depth", "gauge", engine.depth, "Generation requests waiting or running."),
                ("engine_tokens_total", "counter", engine.tokens_generated, "Tokens the engine generated."),
                ("engine_steps_total", "counter", engine.steps, "Continuous-batching steps run."),
                ("engine_running", "gauge", engine.running, "Generation requests admitted and running."),
                ("engine_batch_rows_max", "gauge", engine.max_running,
                 "The most requests decoded in one forward pass so far."),
                ("cancelled_requests_total", "counter", engine.cancelled_jobs,
                 "Generations stopped early because their client went away."),
                ("tokens_after_cancel_total", "counter", engine.tokens_after_cancel,
                 "Tokens computed after a generation was cancelled (at most one per cancelled request).")):
            lines += [f"# HELP zigllama_{name} {help_}", f"# TYPE zigllama_{name} {kind}", f"zigllama_{name} {value}"]
        return "\n".join(lines + self.latency.lines() + self.ttft.lines()) + "\n"


def model_id(name_or_path) -> str:
    """A served model's id: its registry name, or the file's stem for a path (``/m/foo.Q4_0.gguf`` -> ``foo.Q4_0``)."""
    s = str(name_or_path)
    return s if s in REGISTRY else Path(s).stem


def check_prompt(prompt, n_vocab: int) -> None:
    """A completion's ``prompt``: a string of at most MAX_PROMPT_CHARS or a list of at most that many ids."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, (str, list)) and len(prompt) > MAX_PROMPT_CHARS:
        raise APIError(400, f"'prompt' has {len(prompt)} items (at most {MAX_PROMPT_CHARS})", param="prompt")
    if isinstance(prompt, str):
        return
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        bad = [t for t in prompt if not 0 <= t < n_vocab]
        if bad:
            raise APIError(400, f"token id {bad[0]} in 'prompt' is not in [0, {n_vocab})", param="prompt")
        return
    raise APIError(400, "'prompt' must be a string or a non-empty list of token ids "
                        "(a batch of several prompts is not supported: send one request each)", param="prompt")


def check_messages(messages) -> list[dict]:
    """A chat request's ``messages``, checked; text content parts joined. Returns the messages to render."""
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list", param="messages")
    if len(messages) > MAX_MESSAGES:
        raise APIError(400, f"'messages' has {len(messages)} messages (at most {MAX_MESSAGES})", param="messages")
    out, total = [], 0
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise APIError(400, f"messages[{i}] must be an object with a 'role'", param="messages")
        content = msg.get("content")
        if isinstance(content, list):  # OpenAI's content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise APIError(400, f"messages[{i}].content: only text parts are supported", param="messages")
            msg = {**msg, "content": "".join(p["text"] for p in content)}
        elif not isinstance(content, str) and not (content is None and msg["role"] == "assistant"):
            raise APIError(400, f"messages[{i}].content must be a string", param="messages")
        total += len(msg.get("content") or "")
        if total > MAX_PROMPT_CHARS:
            raise APIError(400, f"the messages hold more than {MAX_PROMPT_CHARS} characters", param="messages")
        out.append(msg)
    return out


def _error_response(e: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else {"Retry-After": "1"} if e.status == 503 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def create_app(models: dict, api_key: str | None = None, max_body_bytes: int = MAX_BODY_BYTES,
               max_queue: int = MAX_QUEUE, engine: Engine | None = None,
               max_request_seconds: float = MAX_REQUEST_SECONDS) -> FastAPI:
    """The server for ``models`` (``{model id: LanguageModel}``, the first is the default for
    /tokenize); with ``api_key``, every route but /health needs ``Authorization: Bearer <key>``.
    More than ``max_queue`` generation requests at once get a 503 (with ``Retry-After``).
    Without ``engine`` the app runs its own on a thread while it is up; with one, the caller
    runs it (``engine.run()``). A non-streaming generation running longer than
    ``max_request_seconds`` is cancelled and answered with a 503; a stream is ended."""
    if not models:
        raise ValueError("create_app needs at least one model")
    own_engine = engine is None
    engine, metrics = engine or Engine(), Metrics()

    async def lifespan(app):
        if own_engine:
            engine.start()
        yield
        if own_engine:
            engine.stop()

    app = FastAPI(title="zigllama", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.metrics = engine, metrics

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        metrics.count(request.url.path, e.status)
        return _error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        metrics.count(request.url.path, e.status_code)
        return _error_response(APIError(e.status_code, f"{request.method} {request.url.path}: {e.detail}",
                                        code="not_found" if e.status_code == 404 else None))

    def check_auth(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        if header != f"Bearer {api_key}":
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    async def read_json(request: Request) -> dict:
        """The body as a JSON object, refusing more than ``max_body_bytes`` before reading it all."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise APIError(413, f"request body of {declared} bytes exceeds the limit of {max_body_bytes} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise APIError(413, f"request body exceeds the limit of {max_body_bytes} bytes")
            chunks.append(chunk)
        return parse_json_body(b"".join(chunks), max_body_bytes)

    def model_named(body: dict, required: bool = True):
        name = body.get("model")
        if name is None and not required:
            return next(iter(models.items()))
        if not isinstance(name, str):
            raise APIError(400, "'model' must be given, as a string: one of " + ", ".join(models), param="model")
        if name not in models:
            raise APIError(404, f"the model '{name}' does not exist; this server has: {', '.join(models)}",
                           param="model", code="model_not_found")
        return name, models[name]

    async def body_and_model(request: Request, required: bool = True):
        """Authorised request -> ``(body, model id, model)``."""
        check_auth(request)
        body = await read_json(request)
        return (body, *model_named(body, required))

    def token_ids(value, n_vocab: int, param: str) -> list[int]:
        """``value`` as a list of token ids in ``[0, n_vocab)``, else a 400 naming ``param``."""
        if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
            raise APIError(400, f"'{param}' must be a list of token ids", param=param)
        bad = [t for t in value if not 0 <= t < n_vocab]
        if bad:
            raise APIError(400, f"token id {bad[0]} in '{param}' is not in [0, {n_vocab})", param=param)
        return list(value)

    def check_context(model, n_prompt: int, max_tokens: int | None, chat: bool) -> None:
        """The prompt, and the prompt plus ``max_tokens``, must fit the context (OpenAI's rule)."""
        param = "messages" if chat else "prompt"
        if n_prompt == 0:
            raise APIError(400, "the prompt is empty", param=param)
        if n_prompt > model.n_ctx:
            raise APIError(400, f"this model's context is {model.n_ctx} tokens, but the prompt is {n_prompt} "
                                f"tokens", param=param, code="context_length_exceeded")
        if max_tokens is not None and n_prompt + max_tokens > model.n_ctx:
            raise APIError(400, f"this model's context is {model.n_ctx} tokens, but {n_prompt + max_tokens} were "
                                f"requested ({n_prompt} in the prompt, {max_tokens} for the completion): lower "
                                f"max_tokens to at most {model.n_ctx - n_prompt}",
                           param="max_tokens", code="context_length_exceeded")

    # -- plain routes ---------------------------------------------------------------
    @app.get("/health")
    async def health():
        metrics.count("/health", 200)
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models(request: Request):
        check_auth(request)
        metrics.count("/v1/models", 200)
        created = int(time.time())
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "zigllama",
                                            "n_ctx": m.n_ctx, "n_vocab": m.n_vocab} for name, m in models.items()]}

    @app.get("/metrics")
    async def get_metrics(request: Request):
        check_auth(request)
        metrics.count("/metrics", 200)
        return PlainTextResponse(metrics.text(engine), media_type="text/plain; version=0.0.4")

    @app.post("/tokenize")
    async def tokenize(request: Request):
        body, _, m = await body_and_model(request, required=False)
        content = body.get("content")
        if not isinstance(content, str):
            raise APIError(400, "'content' must be a string", param="content")
        add_special = body.get("add_special", False)
        parse_special = body.get("parse_special", True)
        if not isinstance(add_special, bool) or not isinstance(parse_special, bool):
            raise APIError(400, "'add_special' and 'parse_special' must be booleans")
        ids = m.tokenizer.encode(content, add_special=add_special, parse_special=parse_special)
        metrics.count("/tokenize", 200)
        if body.get("with_pieces"):
            return {"tokens": [{"id": t, "piece": m.tokenizer.token_bytes(t).decode("utf-8", "replace")} for t in ids]}
        return {"tokens": ids}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        body, _, m = await body_and_model(request, required=False)
        ids = token_ids(body.get("tokens"), m.n_vocab, "tokens")
        metrics.count("/detokenize", 200)
        return {"content": m.tokenizer.decode(ids)}

    # -- generation -----------------------------------------------------------------
    def prompt_ids_of(body: dict, m) -> list[int]:
        check_prompt(body.get("prompt"), m.n_vocab)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, str):
            return m.tokenizer.encode(prompt, add_special=True, parse_special=True)
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return token_ids(prompt, m.n_vocab, "prompt")
        raise APIError(400, "'prompt' must be a string or a non-empty list of token ids "
                            "(a batch of several prompts is not supported: send one request each)", param="prompt")

    def chat_ids_of(body: dict, m) -> list[int]:
        messages = check_messages(body.get("messages"))
        try:
            return m.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        except ZigLlamaError as e:
            raise APIError(400, f"the chat template could not render these messages: {e}", param="messages") from None

    async def start_job(request: Request, chat: bool) -> tuple[Job, str, list[int], GenParams]:
        body, name, m = await body_and_model(request)
        # rendering and tokenizing off the event loop: a slow hostile template (bounded at 5 s) never
        # stops the server answering other requests
        ids = await asyncio.to_thread(chat_ids_of if chat else prompt_ids_of, body, m)
        params = parse_common(body, name, m.n_vocab, chat)
        check_context(m, len(ids), params.max_tokens, chat)
        if engine.depth >= max_queue:
            raise APIError(503, f"the server is busy: {engine.depth} generation requests are queued or running "
                                f"(at most {max_queue}); retry shortly", code="server_busy")
        metrics.prompt_tokens += len(ids)
        return engine.submit(m, ids, params, asyncio.get_running_loop()), name, ids, params

    def finish_metrics(path: str, t0: float, t_first: float | None, usage: dict | None) -> None:
        metrics.count(path, 200)
        metrics.latency.observe(time.perf_counter() - t0)
        if t_first is not None:
            metrics.ttft.observe(t_first - t0)
        if usage:
            metrics.completion_tokens += usage["completion_tokens"]

    def chat_logprobs(entries: list) -> dict | None:
        return {"content": entries} if entries else None

    def completion_logprobs(entries: list, offset0: int) -> dict | None:
        if not entries:
            return None
        offsets, pos = [], offset0
        for e in entries:
            offsets.append(pos)
            pos += len(e["token"])
        return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
                "text_offset": offsets}

    async def run(request: Request, chat: bool):
        t0 = time.perf_counter()
        path = request.url.path
        job, name, ids, params = await start_job(request, chat)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        echo = job.model.tokenizer.decode(ids) if params.echo else ""

        if params.stream:
            async def sse():
                t_first, usage = None, None
                offset = len(echo)  # completions' logprobs.text_offset: characters of text before each token
                chunk = {"id": rid, "object": obj + ".chunk" if chat else obj, "created": created, "model": name}
                extra = {"usage": None} if params.include_usage else {}

                def data(choice) -> str:
                    return "data: " + json.dumps({**chunk, "choices": [choice], **extra}) + "\n\n"

                try:
                    if chat:
                        yield data({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                    "finish_reason": None})
                    elif echo:
                        yield data({"index": 0, "text": echo, "logprobs": None, "finish_reason": None})
                    deadline = t0 + max_request_seconds
                    while True:
                        try:
                            ev = await asyncio.wait_for(job.events.get(), max(0.0, deadline - time.perf_counter()))
                        except asyncio.TimeoutError:
                            yield "data: " + json.dumps(APIError(503, f"the request ran longer than the limit of "
                                                                      f"{max_request_seconds:g} s",
                                                                 code="request_timeout").body()) + "\n\n"
                            break
                        if "error" in ev:
                            err = APIError(ev.get("status", 500), ev["error"], code=ev.get("code"))
                            yield "data: " + json.dumps(err.body()) + "\n\n"
                            break
                        if ev.get("done"):
                            usage = ev["usage"]
                            final = ({"index": 0, "delta": {}, "logprobs": None, "finish_reason": ev["finish_reason"]}
                                     if chat else {"index": 0, "text": "", "logprobs": None,
                                                   "finish_reason": ev["finish_reason"]})
                            yield data(final)
                            if params.include_usage:
                                yield "data: " + json.dumps({**chunk, "choices": [], "usage": usage}) + "\n\n"
                            break
                        t_first = t_first or time.perf_counter()
                        if not ev["text"] and not ev["logprobs"]:
                            continue
                        if chat:
                            yield data({"index": 0, "delta": {"content": ev["text"]},
                                        "logprobs": chat_logprobs(ev["logprobs"]), "finish_reason": None})
                        else:
                            yield data({"index": 0, "text": ev["text"], "logprobs":
                                        completion_logprobs(ev["logprobs"], offset), "finish_reason": None})
                            offset += sum(len(e["token"]) for e in ev["logprobs"])
                    yield "data: [DONE]\n\n"
                finally:
                    job.cancel()  # a client that went away stops its generation within one token
                    finish_metrics(path, t0, t_first, usage)

            return StreamingResponse(sse(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        async def watch_disconnect():
            """Cancel the job if the client hangs up while it waits for the whole answer."""
            while not job.finished:
                if await request.is_disconnected():
                    job.cancel()
                    return
                await asyncio.sleep(DISCONNECT_POLL_S)

        watcher = asyncio.create_task(watch_disconnect())
        text, entries, t_first = [], [], None
        deadline = t0 + max_request_seconds
        try:
            while True:
                try:
                    ev = await asyncio.wait_for(job.events.get(), max(0.0, deadline - time.perf_counter()))
                except asyncio.TimeoutError:
                    job.cancel()
                    raise APIError(503, f"the request ran longer than the limit of {max_request_seconds:g} s",
                                   code="request_timeout") from None
                if ev.get("cancelled"):
                    metrics.count(path, 499)  # nginx's "client closed request": nobody is listening any more
                    return PlainTextResponse("", status_code=499)
                if "error" in ev:
                    raise APIError(ev.get("status", 500), ev["error"], code=ev.get("code"))
                if ev.get("done"):
                    break
                t_first = t_first or time.perf_counter()
                text.append(ev["text"])
                entries += ev["logprobs"]
        finally:
            watcher.cancel()
            job.cancel()
        finish_metrics(path, t0, t_first, ev["usage"])
        content = "".join(text)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": content},
                      "logprobs": chat_logprobs(entries) if params.logprobs is not None else None,
                      "finish_reason": ev["finish_reason"]}
        else:
            choice = {"index": 0, "text": echo + content,
                      "logprobs": completion_logprobs(entries, len(echo)) if params.logprobs is not None else None,
                      "finish_reason": ev["finish_reason"]}
        return {"id": rid, "object": obj, "created": created, "model": name, "choices": [choice],
                "usage": ev["usage"]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await run(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await run(request, chat=False)

    return app
