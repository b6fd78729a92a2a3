"""``zigllama bench-serve``: our HTTP server and llama.cpp's llama-server under the same load, in one run.

    result = run("smollm2-135m-instruct", threads=2, n_ctx=512, clients=[1, 4, 16], requests=4,
                 max_tokens=64, llama_server="/path/to/llama-server")
    print(format_markdown(result))

Each server is a subprocess on a free 127.0.0.1 port, serving the same GGUF file with the same thread
count and the same context per request; all of them are started (one after another, each ready
before the next starts) before any load, and all are killed at the end. For each concurrency level
the servers take turns on the identical workload: ``clients`` asyncio clients, each sending
``requests`` streaming chat completions back to back (temperature 0, fixed ``max_tokens``, the same
prompts in the same order), counting completion tokens from the final ``usage`` chunk.

Measured per request (client side, ``time.perf_counter``):

* TTFT: request sent -> first SSE chunk with non-empty ``delta.content``;
* ITL: the gaps between consecutive content chunks (pooled over the level's requests);
* E2E: request sent -> ``data: [DONE]``.

Per level: completion tokens/s and requests/s over the level's wall time (first request sent ->
last request finished), failures (non-200, error chunks, no ``[DONE]``, no tokens, timeouts), and
the CPU seconds each server process and everything else on the machine used meanwhile (the idle
servers' share shows they did not compete; "others" shows whether the machine was quiet).

Ours runs with ``--max-batch M`` (continuous batching, ``--max-batch``, default 8) and, with
``--also-unbatched``, with ``--max-batch 1`` (one request at a time). llama-server runs twice:
``--parallel 1`` (one request at a time) and ``--parallel N`` with N the largest client count (its
continuous batching), each slot getting the same context as ours. Its prompt cache is off (``--no-cache-prompt --cache-ram 0``): the
benchmark repeats prompts, and our server has no prompt cache, so reuse would time a cache hit
against a prefill.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..foundation.errors import ZigLlamaError
from ..foundation.threads import available_cores
from .process import ServerProcess, free_port

STARTUP_TIMEOUT_S = 300.0     # a server not answering /health with 200 by then is a failure
REQUEST_TIMEOUT_S = 300.0     # one request, connect to [DONE]
PERCENTILES = (50, 90, 99)
DEFAULT_CLIENTS = "1,4,16"
DEFAULT_REQUESTS = 6          # per client: smollm2-135m, 2 cores, three rows: about 6-8 minutes in all
DEFAULT_MAX_TOKENS = 64
DEFAULT_N_CTX = 512
ANCHOR_LLAMA_SERVER = ("llama-server (cmake build of llama-cpp-python 0.3.36's vendored llama.cpp, "
                       "-DGGML_NATIVE=ON)")
ANCHOR_PYTHON_SERVER = "llama-cpp-python's server (python -m llama_cpp.server, llama-cpp-python 0.3.36)"
OURS = "zigllama serve"

# Prompts that ask for long answers: neither server can be told to ignore EOS, so the replies
# should run to max_tokens; the tokens actually generated are what is counted.
PROMPTS = [
    "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle.",
    "Explain step by step, in great detail, how a bicycle works, covering every part.",
    "Describe the history of the printing press at length, from its origins to the present day.",
    "Write a detailed travel guide to a fictional island, describing its towns, food and festivals.",
    "Explain in depth how plants turn sunlight into food, as if teaching a long class.",
    "Write a long letter from a sailor to his family describing a year at sea.",
    "Describe, in as much detail as you can, how to bake bread from scratch, step by step.",
    "Write a detailed essay on why the sky is blue and why sunsets are red.",
]


class ServeBenchError(ZigLlamaError):
    """A server did not start, died, or the benchmark could not be set up."""


# -- pure parts: SSE lines, per-request timings, percentiles -------------------------------------
DONE = "[DONE]"


def parse_sse_line(line: str):
    """One line of an SSE stream -> the ``data:`` JSON object, :data:`DONE`, or None (blank lines,
    comments, ``event:``/``id:`` fields). Invalid JSON after ``data:`` raises ``ValueError``."""
    line = line.rstrip("\r\n")
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if payload == DONE:
        return DONE
    if not payload:
        return None
    return json.loads(payload)


def chunk_content(obj: dict) -> str:
    """The text a chat (``delta.content``) or completion (``text``) chunk carries; '' for none."""
    choices = obj.get("choices") or []
    if not choices:
        return ""
    c = choices[0]
    return (c.get("delta") or {}).get("content") or c.get("text") or ""


@dataclass
class RequestRecord:
    """One request as the client saw it: times are ``perf_counter`` seconds."""
    client: int
    index: int
    prompt: int                     # index into PROMPTS
    t_start: float
    t_end: float | None = None
    chunk_times: list[float] = field(default_factory=list)   # arrivals of content chunks
    completion_tokens: int | None = None                     # from usage; None if the server sent none
    prompt_tokens: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def tokens(self) -> int:
        """Completion tokens: the server's usage count, else the number of content chunks."""
        return self.completion_tokens if self.completion_tokens is not None else len(self.chunk_times)


def request_latencies(t_start: float, chunk_times: list[float], t_end: float) -> dict:
    """TTFT (first content chunk - start), ITLs (gaps between content chunks) and E2E (end - start)."""
    ttft = chunk_times[0] - t_start if chunk_times else None
    return {"ttft": ttft, "itl": np.diff(np.asarray(chunk_times, dtype=float)).tolist(), "e2e": t_end - t_start}


def percentiles(values, qs=PERCENTILES) -> dict:
    """``{"p50": ..., "p90": ..., "p99": ...}`` (numpy's linear interpolation), None values if empty."""
    if len(values) == 0:
        return {f"p{q}": None for q in qs}
    v = np.percentile(np.asarray(values, dtype=float), qs)
    return {f"p{q}": float(x) for q, x in zip(qs, v)}


def summarize_level(records: list[RequestRecord], wall_s: float) -> dict:
    """Throughput over the level's wall time and latency percentiles over its successful requests."""
    ok = [r for r in records if r.ok]
    ttft, itl, e2e = [], [], []
    for r in ok:
        lat = request_latencies(r.t_start, r.chunk_times, r.t_end)
        ttft.append(lat["ttft"])
        itl += lat["itl"]
        e2e.append(lat["e2e"])
    tokens = sum(r.tokens for r in ok)
    errors: dict[str, int] = {}
    for r in records:
        if not r.ok:
            errors[r.error] = errors.get(r.error, 0) + 1
    return {"requests": len(records), "ok": len(ok), "failures": len(records) - len(ok), "errors": errors,
            "completion_tokens": tokens, "tokens_from_usage": all(r.completion_tokens is not None for r in ok),
            "prompt_tokens": sorted({r.prompt_tokens for r in ok if r.prompt_tokens is not None}),
            "wall_s": wall_s, "tok_per_s": tokens / wall_s if wall_s > 0 else None,
            "req_per_s": len(ok) / wall_s if wall_s > 0 else None,
            "ttft_s": percentiles(ttft), "itl_s": percentiles(itl), "e2e_s": percentiles(e2e),
            "n_itl_samples": len(itl)}


# -- the machine ----------------------------------------------------------------------------------
def cpu_info() -> dict:
    """The CPU model and whether its flags include avx2 / avx512f (from /proc/cpuinfo)."""
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and model is None:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": model or "unknown", "avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
            "n_cores": os.cpu_count(), "n_cores_available": available_cores()}


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def system_busy_s() -> float | None:
    """CPU seconds all processes have run (user+nice+system+irq+softirq+steal), from /proc/stat."""
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user+system, all threads) process ``pid`` has used, from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(rest[11]) + int(rest[12])) / _CLK_TCK  # fields 14 and 15: utime, stime


def source_state() -> dict:
    """The git commit of the zigllama sources being benchmarked and the tracked files changed since."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        changed = subprocess.run(["git", "-C", str(root), "diff", "--name-only", "HEAD"], capture_output=True,
                                 text=True, timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "changed": []}
    return {"commit": commit or None, "changed": changed}


def self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


# -- servers --------------------------------------------------------------------------------------
@dataclass
class ServerSpec:
    """How to start one server: ``argv`` with ``{port}`` where the port goes."""
    label: str
    argv: list[str]
    health_path: str = "/health"
    slots: int = 1

    def command(self, port: int) -> list[str]:
        return [a.replace("{port}", str(port)) for a in self.argv]


class BenchServer(ServerProcess):
    """A :class:`.process.ServerProcess` started from a :class:`ServerSpec` on a free port."""

    def __init__(self, spec: ServerSpec, startup_timeout: float = STARTUP_TIMEOUT_S):
        port = free_port()
        super().__init__(spec.command(port), port, name=spec.label, startup_timeout=startup_timeout,
                         health_path=spec.health_path)
        self.spec, self.base_url = spec, self.url


def ours_spec(model: str, threads: int, n_ctx: int, max_batch: int = 8, label: str = OURS) -> ServerSpec:
    return ServerSpec(label, [sys.executable, "-m", "zigllama_lib.cli", "serve", "--model", str(model),
                              "--host", "127.0.0.1", "--port", "{port}", "--n-ctx", str(n_ctx),
                              "--threads", str(threads), "--max-batch", str(max_batch)], slots=max_batch)


def llama_server_spec(binary: str, gguf: Path, threads: int, n_ctx: int, slots: int) -> ServerSpec:
    """llama-server with ``slots`` slots of ``n_ctx`` tokens each (its context is split across slots)."""
    return ServerSpec(f"llama-server --parallel {slots}",
                      [binary, "-m", str(gguf), "--host", "127.0.0.1", "--port", "{port}", "-t", str(threads),
                       "-tb", str(threads), "-c", str(n_ctx * slots), "--parallel", str(slots), "--no-kv-unified",
                       "--no-cache-prompt", "--cache-ram", "0"], slots=slots)


def python_server_spec(gguf: Path, model_id: str, threads: int, n_ctx: int) -> ServerSpec:
    return ServerSpec("llama_cpp.server", [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
                                           "--model_alias", model_id, "--host", "127.0.0.1", "--port", "{port}",
                                           "--n_threads", str(threads), "--n_threads_batch", str(threads),
                                           "--n_ctx", str(n_ctx)], health_path="/v1/models")


def find_llama_server() -> str:
    """The path scripts/build_llama_server.sh prints (building llama-server once), or 'python-server'.
    Refuses to start a second build while one is under way."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "build_llama_server.sh"
    if not script.exists():
        raise ServeBenchError(f"{script} not found: pass --llama-server PATH (or 'none')")
    cache = Path(os.environ.get("ZIGLLAMA_CACHE", Path.home() / ".cache" / "zigllama"))
    built = sorted(cache.glob("llama-server-*/bin/llama-server"))
    if not built:
        for log in cache.glob(".llama-server-build-*/build.log"):
            if time.time() - log.stat().st_mtime < 120:
                raise ServeBenchError(f"a llama-server build is under way ({log}); wait for it to finish, "
                                      f"or pass --llama-server PATH / none")
    out = subprocess.run(["bash", str(script)], stdout=subprocess.PIPE, text=True, timeout=3600)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise ServeBenchError(f"{script} found no llama-server (exit {out.returncode}): pass --llama-server PATH "
                              f"or 'none'")
    return lines[-1].strip()


def anchor_info(binary: str) -> dict:
    """The anchor's label and, for a script-built llama-server, its BUILD_INFO."""
    if binary == "python-server":
        return {"label": ANCHOR_PYTHON_SERVER, "binary": binary, "build_info": None}
    info = Path(binary).resolve().parent.parent / "BUILD_INFO"
    return {"label": ANCHOR_LLAMA_SERVER, "binary": binary,
            "build_info": info.read_text(encoding="utf-8").strip() if info.exists() else None}


# -- the load generator ---------------------------------------------------------------------------
def request_body(model_id: str, prompt: str, max_tokens: int) -> dict:
    return {"model": model_id, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}


async def one_request(client, url: str, body: dict, record: RequestRecord, timeout_s: float) -> RequestRecord:
    """Send one streaming chat completion and fill ``record`` with its chunk arrival times and usage."""
    async def stream():
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode("utf-8", "replace")
                record.error = f"HTTP {resp.status_code}: {text[:200]}"
                return
            done = False
            async for line in resp.aiter_lines():
                now = time.perf_counter()
                obj = parse_sse_line(line)
                if obj is None:
                    continue
                if isinstance(obj, str):  # DONE
                    done = True
                    break
                if "error" in obj:
                    record.error = f"error chunk: {json.dumps(obj['error'])[:200]}"
                    return
                if chunk_content(obj):
                    record.chunk_times.append(now)
                usage = obj.get("usage")
                if usage:
                    record.completion_tokens = usage.get("completion_tokens")
                    record.prompt_tokens = usage.get("prompt_tokens")
            if not done:
                record.error = "the stream ended without data: [DONE]"
            elif not record.chunk_times:
                record.error = "no content chunks"

    try:
        await asyncio.wait_for(stream(), timeout_s)
    except asyncio.TimeoutError:
        record.error = f"timed out after {timeout_s:.0f} s"
    except Exception as e:  # noqa: BLE001 - every failure is counted, with its type
        record.error = f"{type(e).__name__}: {e}"[:200]
    record.t_end = time.perf_counter()
    return record


async def run_level(base_url: str, model_id: str, n_clients: int, n_requests: int, max_tokens: int,
                    timeout_s: float = REQUEST_TIMEOUT_S) -> tuple[list[RequestRecord], float]:
    """``n_clients`` clients, each sending ``n_requests`` requests back to back; client ``c``'s
    ``r``-th request uses prompt ``(c * n_requests + r) % len(PROMPTS)``. Returns the records and the
    wall time from the first request sent to the last one finished."""
    import httpx

    url = base_url + "/v1/chat/completions"
    timeout = httpx.Timeout(timeout_s, connect=10.0)
    limits = httpx.Limits(max_connections=n_clients + 2, max_keepalive_connections=n_clients + 2)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        async def client_loop(c: int) -> list[RequestRecord]:
            out = []
            for r in range(n_requests):
                p = (c * n_requests + r) % len(PROMPTS)
                rec = RequestRecord(client=c, index=r, prompt=p, t_start=time.perf_counter())
                out.append(await one_request(client, url, request_body(model_id, PROMPTS[p], max_tokens),
                                             rec, timeout_s))
            return out

        t0 = time.perf_counter()
        per_client = await asyncio.gather(*(client_loop(c) for c in range(n_clients)))
        wall = time.perf_counter() - t0
    return [r for recs in per_client for r in recs], wall


def _record_json(r: RequestRecord) -> dict:
    lat = request_latencies(r.t_start, r.chunk_times, r.t_end) if r.ok else None
    return {"client": r.client, "index": r.index, "prompt": r.prompt, "ok": r.ok, "error": r.error,
            "completion_tokens": r.tokens, "prompt_tokens": r.prompt_tokens, "n_content_chunks": len(r.chunk_times),
            "ttft_s": lat and lat["ttft"], "e2e_s": lat and lat["e2e"],
            "itl_median_s": lat and (float(np.median(lat["itl"])) if lat["itl"] else None)}


# -- the run --------------------------------------------------------------------------------------
def parse_clients(text: str) -> list[int]:
    try:
        clients = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        clients = []
    if not clients or any(c < 1 for c in clients):
        raise ServeBenchError(f"--clients takes positive integers separated by commas, got {text!r}")
    return clients


def run(model: str, threads: int, n_ctx: int, clients: list[int], requests: int, max_tokens: int,
        llama_server: str | None, command: str = "", startup_timeout: float = STARTUP_TIMEOUT_S,
        request_timeout: float = REQUEST_TIMEOUT_S, log=print, max_batch: int = 8,
        also_unbatched: bool = False) -> dict:
    """Start the servers, run every concurrency level on each in turn, stop them; the result dict.

    Ours runs with ``--max-batch max_batch``; ``also_unbatched`` adds ours with ``--max-batch 1`` (one
    request at a time: the server before continuous batching)."""
    from ..models.registry import resolve
    from .app import model_id as served_id

    gguf = resolve(model, progress=False)
    mid = served_id(model)
    specs = [ours_spec(model, threads, n_ctx, max_batch)]
    if also_unbatched:
        specs.append(ours_spec(model, threads, n_ctx, 1, f"{OURS} --max-batch 1"))
    anchor = None
    if llama_server and llama_server != "none":
        anchor = anchor_info(llama_server)
        if llama_server == "python-server":
            specs.append(python_server_spec(gguf, mid, threads, n_ctx))
        else:
            if not os.access(llama_server, os.X_OK):
                raise ServeBenchError(f"--llama-server {llama_server!r} is not an executable file")
            specs.append(llama_server_spec(llama_server, gguf, threads, n_ctx, 1))
            if max(clients) > 1:
                specs.append(llama_server_spec(llama_server, gguf, threads, n_ctx, max(clients)))
    result = {"command": command, "model": str(model), "gguf": str(gguf), "model_id": mid, "threads": threads,
              "n_ctx": n_ctx, "clients": clients, "requests_per_client": requests, "max_tokens": max_tokens,
              "prompts": PROMPTS, "anchor": anchor, "machine": cpu_info(), "source": source_state(),
              "load_average_start": os.getloadavg(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "servers": [], "levels": []}
    with contextlib.ExitStack() as stack:
        servers = []
        for spec in specs:
            log(f"bench-serve: starting {spec.label}", file=sys.stderr)
            srv = stack.enter_context(BenchServer(spec, startup_timeout))
            servers.append(srv)
            result["servers"].append({"label": spec.label, "command": shlex.join(spec.command(srv.port)),
                                      "startup_s": srv.startup_s, "slots": spec.slots})
            warm, _ = asyncio.run(run_level(srv.base_url, mid, 1, 1, max_tokens, request_timeout))  # untimed
            if not warm[0].ok:
                raise ServeBenchError(f"{spec.label}: the warm-up request failed: {warm[0].error}\n"
                                      f"last lines of its stderr:\n{srv.stderr()}")
        for i, n_clients in enumerate(clients):
            order = servers if i % 2 == 0 else servers[::-1]  # alternate who goes first
            for srv in order:
                log(f"bench-serve: {srv.spec.label}, {n_clients} clients x {requests} requests", file=sys.stderr)
                cpu0 = {s.spec.label: process_cpu_s(s.pid) for s in servers}
                busy0, self0 = system_busy_s(), self_cpu_s()
                records, wall = asyncio.run(run_level(srv.base_url, mid, n_clients, requests, max_tokens,
                                                      request_timeout))
                cpu1 = {s.spec.label: process_cpu_s(s.pid) for s in servers}
                busy1, self1 = system_busy_s(), self_cpu_s()
                server_cpu = {k: (cpu1[k] - cpu0[k]) if None not in (cpu0[k], cpu1[k]) else None for k in cpu0}
                others = None
                if busy0 is not None and busy1 is not None and None not in server_cpu.values():
                    others = (busy1 - busy0) - (self1 - self0) - sum(server_cpu.values())
                summary = summarize_level(records, wall)
                summary.update(server=srv.spec.label, clients=n_clients, load_average=os.getloadavg()[0],
                               cpu_s={"server": server_cpu[srv.spec.label], "client": self1 - self0,
                                      "idle_servers": {k: v for k, v in server_cpu.items() if k != srv.spec.label},
                                      "others": others},
                               records=[_record_json(r) for r in records])
                result["levels"].append(summary)
                if summary["failures"]:
                    log(f"bench-serve: {summary['failures']} failed: {summary['errors']}; the server's last "
                        f"stderr lines:\n{srv.stderr()}", file=sys.stderr)
    return result


# -- the report -----------------------------------------------------------------------------------
def _ms(x) -> str:
    return "-" if x is None else f"{x * 1e3:.0f}"


def _sec(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _num(x, digits=1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _triple(p: dict, fmt) -> str:
    return " / ".join(fmt(p[f"p{q}"]) for q in PERCENTILES)


def _row_order(result: dict) -> list[dict]:
    labels = [s["label"] for s in result["servers"]]
    return sorted(result["levels"], key=lambda lv: (lv["clients"], labels.index(lv["server"])))


def throughput_ratios(result: dict) -> dict:
    """``{anchor label: {clients: ours tok/s / anchor tok/s}}``."""
    by = {(lv["server"], lv["clients"]): lv["tok_per_s"] for lv in result["levels"]}
    out = {}
    for s in result["servers"]:
        if s["label"] == OURS:
            continue
        out[s["label"]] = {c: (by[(OURS, c)] / by[(s["label"], c)]
                               if by.get((OURS, c)) and by.get((s["label"], c)) else None)
                           for c in result["clients"]}
    return out


def format_markdown(result: dict) -> str:
    """The reproducing command, the machine, the servers' command lines, one row per server x
    concurrency level, and ours / anchor throughput per level."""
    mc = result["machine"]
    parts = [f"```\n{result['command']}\n```\n"] if result.get("command") else []
    flags = ", ".join(f"{f} {'yes' if mc[f] else 'no'}" for f in ("avx2", "avx512f"))
    la = result["load_average_start"]
    parts.append(f"{Path(result['gguf']).name}, {result['threads']} threads per server, context {result['n_ctx']} "
                 f"tokens per request, {', '.join(map(str, result['clients']))} concurrent clients x "
                 f"{result['requests_per_client']} streaming chat requests each, max_tokens {result['max_tokens']}, "
                 f"temperature 0. Machine: {mc['cpu']} ({flags}), {mc['n_cores_available']} cores; "
                 f"{result['date']}. Load average before the run (1/5/15 min): {la[0]:.2f} / {la[1]:.2f} / "
                 f"{la[2]:.2f}.\n")
    src = result.get("source") or {}
    if src.get("commit"):
        parts.append(f"zigllama at commit {src['commit']}" + (f", with uncommitted changes to "
                                                             f"{', '.join(src['changed'])}" if src["changed"] else "")
                     + ".\n")
    if result.get("anchor"):
        a = result["anchor"]
        parts.append(f"Anchor: {a['label']}." + (f" BUILD_INFO: {'; '.join(a['build_info'].splitlines())}."
                                                  if a.get("build_info") else "") + "\n")
    parts.append("Servers (ports vary per run):\n\n" + "\n".join(f"- {s['label']}: `{s['command']}` "
                                                                  f"(ready in {s['startup_s']:.1f} s)"
                                                                  for s in result["servers"]) + "\n")
    lines = ["| server | clients | ok / sent | tokens | tok/s | req/s | TTFT p50 / p90 / p99 (s) | "
             "ITL p50 / p90 / p99 (ms) | E2E p50 / p90 / p99 (s) | server CPU s | failures |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for lv in _row_order(result):
        lines.append(f"| {lv['server']} | {lv['clients']} | {lv['ok']} / {lv['requests']} | "
                     f"{lv['completion_tokens']} | {_num(lv['tok_per_s'])} | {_num(lv['req_per_s'], 2)} | "
                     f"{_triple(lv['ttft_s'], _sec)} | {_triple(lv['itl_s'], _ms)} | {_triple(lv['e2e_s'], _sec)} | "
                     f"{_num(lv['cpu_s']['server'])} | {lv['failures']} |")
    parts.append("\n".join(lines) + "\n")
    ratios = throughput_ratios(result)
    for label, by_c in ratios.items():
        parts.append(f"Throughput, ours / {label}: " + ", ".join(
            f"{c} client{'s' if c > 1 else ''} {'-' if r is None else f'{r:.2f}x'}" for c, r in by_c.items()) + ".\n")
    failed = [lv for lv in result["levels"] if lv["failures"]]
    if failed:
        parts.append("Failures:\n\n" + "\n".join(f"- {lv['server']}, {lv['clients']} clients: "
                                                 + "; ".join(f"{n}x {e}" for e, n in lv["errors"].items())
                                                 for lv in failed) + "\n")
    idle = max((v for lv in result["levels"] for v in lv["cpu_s"]["idle_servers"].values() if v is not None),
               default=None)
    others = [lv["cpu_s"]["others"] for lv in result["levels"] if lv["cpu_s"]["others"] is not None]
    wall = sum(lv["wall_s"] for lv in result["levels"])
    notes = ["tok/s: completion tokens (from each response's `usage`) of the level's successful requests over "
             "its wall time, first request sent to last one finished; req/s likewise. TTFT: request sent to the "
             "first non-empty content chunk; ITL: gaps between consecutive content chunks, pooled over the "
             "level's requests; E2E: request sent to `data: [DONE]`; percentiles are numpy's (linear). "
             "Measured by the client, an asyncio httpx process on the same cores. Server CPU s: CPU time the "
             "measured server used during the level."]
    if idle is not None:
        notes.append(f"All servers stay up for the whole run and take turns per level (order alternating); "
                     f"the most CPU any idle server used during another's level was {idle:.2f} s.")
    if others:
        notes.append(f"CPU used by everything else on the machine during the {wall:.0f} s of measuring "
                     f"(/proc/stat minus the servers and the client, 10 ms ticks): {max(sum(others), 0):.1f} s "
                     f"(at most {max(max(others), 0):.1f} s in one level).")
    if not all(lv["tokens_from_usage"] for lv in result["levels"] if lv["ok"]):
        notes.append("Some server sent no `usage`: its tokens are counted as content chunks.")
    tokens_per_req = {lv["server"]: [] for lv in result["levels"]}
    for lv in result["levels"]:
        tokens_per_req[lv["server"]].append(lv["completion_tokens"] / max(lv["ok"], 1))
    prompt_tokens = sorted({n for lv in result["levels"] for n in lv["prompt_tokens"]})
    if prompt_tokens:
        notes.append(f"Prompt tokens per request (chat template applied, from `usage`): {prompt_tokens[0]} to "
                     f"{prompt_tokens[-1]}.")
    notes.append("Mean completion tokens per request: " + ", ".join(
        f"{k} {np.mean(v):.1f}" for k, v in tokens_per_req.items()) + f" (max_tokens {result['max_tokens']}; "
        "fewer means a reply ended at end-of-sequence).")
    parts.append(" ".join(notes) + "\n")
    return "\n".join(parts)


# -- the command ----------------------------------------------------------------------------------
def reproducing_command(args, threads: int, llama_server: str) -> str:
    cmd = ["zigllama", "bench-serve", "--model", str(args.model), "--threads", str(threads), "--n-ctx",
           str(args.n_ctx), "--clients", args.clients, "--requests", str(args.requests), "--max-tokens",
           str(args.max_tokens), "--llama-server", llama_server, "--max-batch", str(args.max_batch)]
    cmd += ["--also-unbatched"] if args.also_unbatched else []
    for flag in ("json", "markdown"):
        if getattr(args, flag):
            cmd += [f"--{flag}", getattr(args, flag)]
    return shlex.join(cmd)


def cmd_bench_serve(args) -> int:
    threads = args.threads or available_cores()
    clients = parse_clients(args.clients)
    llama_server = args.llama_server
    if llama_server == "auto":
        llama_server = find_llama_server()
    result = run(args.model, threads=threads, n_ctx=args.n_ctx, clients=clients, requests=args.requests,
                 max_tokens=args.max_tokens, llama_server=llama_server,
                 command=reproducing_command(args, threads, llama_server), startup_timeout=args.startup_timeout,
                 request_timeout=args.request_timeout, max_batch=args.max_batch,
                 also_unbatched=args.also_unbatched)
    text = format_markdown(result)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(text)
    return 1 if any(lv["failures"] for lv in result["levels"]) else 0


def add_parser(subparsers):
    """Define ``bench-serve`` on an argparse ``subparsers`` object; returns the subparser."""
    from ..cli import _positive_int as _positive  # the CLI's argparse type; cli is loaded when it calls us
    from ..models.registry import REGISTRY

    p = subparsers.add_parser("bench-serve", help="our HTTP server vs llama.cpp's llama-server under concurrent "
                                                  "streaming load (tok/s, TTFT, inter-token latency)")
    p.add_argument("--model", "-m", default="smollm2-135m-instruct",
                   help=f"registry name ({', '.join(sorted(REGISTRY))}) or path to a .gguf")
    p.add_argument("--threads", "-t", type=_positive, default=None, help="threads per server (default: all cores)")
    p.add_argument("--n-ctx", type=_positive, default=DEFAULT_N_CTX,
                   help=f"context per request (llama-server: per slot) (default: {DEFAULT_N_CTX})")
    p.add_argument("--clients", default=DEFAULT_CLIENTS,
                   help=f"concurrency levels, comma-separated (default: {DEFAULT_CLIENTS})")
    p.add_argument("--requests", type=_positive, default=DEFAULT_REQUESTS,
                   help=f"requests each client sends back to back (default: {DEFAULT_REQUESTS})")
    p.add_argument("--max-tokens", type=_positive, default=DEFAULT_MAX_TOKENS,
                   help=f"max_tokens of every request (default: {DEFAULT_MAX_TOKENS})")
    p.add_argument("--llama-server", default="auto", metavar="PATH",
                   help="the llama-server binary; 'auto' (default): what scripts/build_llama_server.sh prints; "
                        "'python-server': llama-cpp-python's server; 'none': only ours")
    p.add_argument("--startup-timeout", type=float, default=STARTUP_TIMEOUT_S,
                   help=f"seconds a server may take to answer /health (default: {STARTUP_TIMEOUT_S:.0f})")
    p.add_argument("--request-timeout", type=float, default=REQUEST_TIMEOUT_S,
                   help=f"seconds one request may take (default: {REQUEST_TIMEOUT_S:.0f})")
    p.add_argument("--max-batch", type=_positive, default=8,
                   help="our server's --max-batch (requests decoded together; default 8)")
    p.add_argument("--also-unbatched", action="store_true",
                   help="also run our server with --max-batch 1 (one request at a time: before batching)")
    p.add_argument("--json", help="also write the result (every request's timings) as JSON to this file")
    p.add_argument("--markdown", help="also write the markdown report to this file")
    p.set_defaults(func=cmd_bench_serve)
    return p
