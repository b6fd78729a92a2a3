"""One engine, many clients: a worker thread runs generations one request at a time, in arrival order.

    engine = Engine(); engine.start()
    job = engine.submit(model, prompt_ids, params, loop)   # from the event loop; returns at once
    event = await job.events.get()                          # {"text", "tokens", "logprobs"} ... then
                                                            # {"done": True, "finish_reason", "usage"}
    job.cancel()                                            # the client left: stops within one token

The event loop never runs a forward pass: it only moves events. The queue is FIFO, which is fair
for one-at-a-time serving; continuous batching (the layer 6 issue) replaces :meth:`Engine._run`
with a scheduler that advances many jobs per step and keeps this interface. ``zigllama serve``
runs the engine on its main thread (:meth:`Engine.run`) and uvicorn's event loop on another.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass, field

from ..inference.generation import GenerationConfig, generate_steps, make_sampler
from ..inference.sampling import LogitBias, log_softmax, top_logprobs
from ..inference.streaming import Utf8Stream
from ..models.decoder import numerics_named
from .params import GenParams
from .stop import StopMatcher


@dataclass
class Job:
    model: object                      # LanguageModel
    prompt_ids: list[int]
    params: GenParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: bool = False             # the worker is done with this job

    def cancel(self) -> None:
        self.cancelled.set()

    def emit(self, event: dict) -> None:
        """Hand ``event`` to the event loop's queue (called from the worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed: the server is shutting down
            self.cancel()


def token_logprob_entry(tokenizer, logits, token: int, n_top: int) -> dict:
    """The chosen token's log-probability and the ``n_top`` most likely, as the wire needs them."""
    lp = log_softmax(logits)

    def item(t, value):
        raw = tokenizer.token_bytes(int(t), render_special=True)
        return {"token": raw.decode("utf-8", "replace"), "logprob": float(value), "bytes": list(raw)}

    ids, values = top_logprobs(logits, n_top, log_probs=lp)
    return {**item(token, lp[token]), "top_logprobs": [item(t, v) for t, v in zip(ids, values)]}


class Engine:
    """The generation worker. ``start()`` runs it on a thread of its own; ``run()`` on the calling
    thread (what ``zigllama serve`` does with its main thread, the one that loaded the models:
    with Numba's OpenMP layer each thread that launches parallel kernels gets a worker team of
    its own, and two teams spin against each other on the same cores: on 2 cores, decode on a
    second thread was slower, and back on the first thread it slowed to a crawl)."""

    def __init__(self):
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.running = 0
        self.tokens_generated = 0     # over all jobs
        self.cancelled_jobs = 0       # jobs stopped early because their client left
        self.tokens_after_cancel = 0  # tokens whose forward pass finished after their job's cancel(): at most
                                      # one per cancelled job, the step that was in flight

    @property
    def depth(self) -> int:
        """Requests waiting plus the one being generated."""
        return self._queue.qsize() + self.running

    def start(self) -> None:
        """Run the worker on a new daemon thread."""
        self._thread = threading.Thread(target=self.run, name="zigllama-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish the job at hand, then stop (joins the worker thread if :meth:`start` made one)."""
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def run(self, keep_going=lambda: True, poll_s: float = 0.5) -> None:
        """The worker loop on this thread, until :meth:`stop` or ``keep_going()`` turns false
        (asked every ``poll_s`` seconds while idle)."""
        while True:
            try:
                job = self._queue.get(timeout=poll_s)
            except queue.Empty:
                if not keep_going():
                    return
                continue
            if job is None:
                return
            self._serve(job)

    def submit(self, model, prompt_ids: list[int], params: GenParams, loop) -> Job:
        job = Job(model, list(prompt_ids), params, loop)
        self._queue.put(job)
        return job

    def _serve(self, job: Job) -> None:
        self.running = 1
        try:
            if job.cancelled.is_set():  # its client left while it waited: no forward pass at all
                self.cancelled_jobs += 1
                job.emit({"done": True, "finish_reason": None, "cancelled": True, "usage": None})
            else:
                self._run(job)
        except Exception as e:  # a bug must not kill the worker: the request gets a 500
            job.emit({"error": f"{type(e).__name__}: {e}"})
        finally:
            job.finished = True
            self.running = 0

    def _run(self, job: Job) -> None:
        m, p = job.model, job.params
        n_prompt = len(job.prompt_ids)
        max_tokens = p.max_tokens if p.max_tokens is not None else max(1, m.n_ctx - n_prompt)
        sampler = make_sampler(p.temperature, p.top_k, p.top_p, p.min_p, p.seed)
        bias = LogitBias(p.logit_bias, m.n_vocab) if p.logit_bias else None
        stats: dict = {}
        steps = generate_steps(m.decoder, job.prompt_ids, sampler, numerics_named(m.numerics), m.n_ctx,
                               m.tokenizer.is_eog, GenerationConfig(max_tokens=max_tokens), stats, bias)
        utf8, stops = Utf8Stream(), StopMatcher(p.stop)
        n_generated, finish = 0, None
        for step in steps:
            self.tokens_generated += 1
            if job.cancelled.is_set():
                self.cancelled_jobs += 1
                self.tokens_after_cancel += 1
                break
            n_generated += 1
            text, stopped = stops.push(utf8.push(m.tokenizer.token_bytes(step.token, render_special=False)))
            entry = (token_logprob_entry(m.tokenizer, step.logits, step.token, p.logprobs)
                     if p.logprobs is not None else None)
            job.emit({"text": text, "tokens": [step.token], "logprobs": [entry] if entry else []})
            if stopped:
                finish = "stop"
                break
        steps.close()
        if finish is None:
            tail, stopped = stops.push(utf8.flush())
            tail += "" if stopped else stops.flush()
            if tail:
                job.emit({"text": tail, "tokens": [], "logprobs": []})
            finish = "stop" if stopped or stats.get("stop_reason") == "eog" else "length"
        job.emit({"done": True, "finish_reason": finish, "cancelled": job.cancelled.is_set(),
                  "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_generated,
                            "total_tokens": n_prompt + n_generated}})
