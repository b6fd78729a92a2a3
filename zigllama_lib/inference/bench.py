"""Benchmarks: our engine against llama.cpp on the same GGUF file, same threads, one run.

What is measured (``zigllama bench``, :func:`run`):

* **prefill** -- a prompt of ``n_prompt`` tokens in one forward pass (fresh cache);
* **decode** -- ``n_decode`` greedy tokens, one forward pass each, after an 8-token prompt;
  each ``reps`` times: median and min-max tokens/s, and the ratio
  ``ours / llama.cpp`` of the medians per phase (> 1: we are faster). With
  llama.cpp the repetitions alternate (one of ours, one of llama.cpp in a fresh
  child, ...), so slow drift of a shared machine hits both; each round's own
  ratio is reported too;
* **load** -- ours: the wall time of ``load(path)`` (GGUF header, tokenizer,
  weight views; the weights are memory-mapped, not read); llama.cpp: the
  construction of ``llama_cpp.Llama`` (also memory-mapped). Page cache warm;
* **memory** -- the peak resident set size (``VmHWM``; ``getrusage`` ``ru_maxrss``
  is also recorded, but in a child it counts the parent's RSS) of the process
  that ran each engine: ours in this process, llama.cpp in a child
  process of its own, so neither counts the other. It includes the Python
  interpreter and the engine's imports (``rss_before_load``, read just before
  the model is loaded) and the pages of the memory-mapped file that were
  touched (file-backed, shared with the page cache). If :func:`run` is given a
  loaded model instead of a path, our peak is that of the whole process so far;
* **startup** (optional, ``--startup``: the cold run takes minutes) -- wall
  time from launching a fresh ``python`` that imports the package, loads the
  model and produces one token, to that token: *warm* with the Numba cache as
  it is (one untimed run first fills it), *cold* with ``NUMBA_CACHE_DIR``
  pointed at an empty directory, so every kernel the path needs is compiled.
  With ``--vs llama.cpp`` the same for ``llama_cpp`` (no JIT: warm only).

Absolute figures drift on shared machines; the ratio in one run is what counts.
The result is a JSON-able dict (:func:`run`) with the machine it ran on;
:func:`format_markdown` renders it, headed by the command that produced it.
"""

from __future__ import annotations

import datetime
import inspect
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..foundation.errors import ConfigError, ZigLlamaError
from ..foundation.threads import available_cores
from ..models.decoder import NUMERICS, numerics_named

STARTUP_PROMPT = "The capital of France is"


class BenchError(ZigLlamaError):
    """A benchmark child process failed (its stderr is in the message)."""


def default_numerics() -> str:
    """``"fast"`` if the decoder offers it, else ``"llama.cpp"``."""
    return "fast" if "fast" in NUMERICS else "llama.cpp"


@dataclass
class Measurement:
    engine: str
    phase: str  # "prefill" or "decode"
    n_tokens: int
    seconds: list[float] = field(default_factory=list)

    @property
    def tok_per_s(self) -> list[float]:
        return [self.n_tokens / s for s in self.seconds]

    @property
    def median(self) -> float:
        return statistics.median(self.tok_per_s)

    def summary(self) -> dict:
        t = self.tok_per_s
        return {"engine": self.engine, "phase": self.phase, "n_tokens": self.n_tokens,
                "median_tok_s": self.median, "min_tok_s": min(t), "max_tok_s": max(t), "reps": len(t),
                "seconds": list(self.seconds)}


# -- the machine and the process --------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def load_average() -> float | None:
    """The 1-minute load average (runnable threads, averaged): before a run, how busy others kept the CPU."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def machine_info(n_threads: int) -> dict:
    """CPU model, cores, threads used, library versions, the date (UTC) and the load average at the start."""
    return {"load_average_start": load_average(), "cpu": _cpu_model(), "n_cores": os.cpu_count(),
            "n_cores_available": available_cores(),
            "n_threads": n_threads, "python": platform.python_version(), "platform": platform.platform(),
            "numpy": np.__version__, "numba": _version("numba"), "llama_cpp_python": _version("llama_cpp_python"),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def ru_maxrss_bytes() -> int:
    """``getrusage`` ``ru_maxrss`` in bytes (KiB on Linux, bytes on macOS).

    On Linux a process started by ``subprocess`` (fork or vfork, then exec)
    inherits its parent's RSS at exec in this figure, so a child's is never
    below its parent's: :func:`peak_rss_bytes` prefers ``VmHWM``.
    """
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def rss_now() -> dict:
    """``VmHWM`` (peak), ``VmRSS`` and its anonymous / file-backed parts, in bytes (``/proc/self/status``; else {})."""
    out = {}
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                    out[key] = int(val.split()[0]) * 1024
    except OSError:
        pass
    return out


def peak_rss_bytes() -> int:
    """This process's peak resident set size: ``VmHWM`` (since its exec) where Linux has it, else ``ru_maxrss``."""
    return rss_now().get("VmHWM") or ru_maxrss_bytes()


# -- the prompt -------------------------------------------------------------------------------
def _bench_prompt(tokenizer, n_tokens: int) -> list[int]:
    """A deterministic prompt of exactly ``n_tokens`` ids (English text, repeated as needed)."""
    text = ("The history of computing is a story of people finding ways to make machines do arithmetic "
            "faster, and then finding new problems that need even more arithmetic. ")
    ids: list[int] = []
    while len(ids) < n_tokens:
        ids += tokenizer.encode(text, add_special=False)
    return ids[:n_tokens]


def _check_positive(**kwargs) -> None:
    for name, v in kwargs.items():
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")


# -- our engine ---------------------------------------------------------------------------------
def bench_ours(model, n_prompt: int, n_decode: int, reps: int, numerics: str | None = None) -> list[Measurement]:
    """Prefill and decode tokens/s of ``model`` (a :class:`LanguageModel`), ``reps`` times each, after a warm-up."""
    _check_positive(n_prompt=n_prompt, n_decode=n_decode, reps=reps)
    nm = numerics_named(numerics or default_numerics())
    dec = model.decoder
    prompt = _bench_prompt(model.tokenizer, n_prompt)
    short = prompt[:8]
    # warm-up: compile / load kernels, page in weights, build packed planes
    cache = dec.new_cache(n_prompt + n_decode + 8, nm)
    dec.forward(short, cache, nm)
    dec.forward(short[:1], cache, nm)
    pre = Measurement("zigllama", "prefill", n_prompt)
    dcd = Measurement("zigllama", "decode", n_decode)
    for _ in range(reps):
        cache = dec.new_cache(n_prompt + 1, nm)
        t0 = time.perf_counter()
        dec.forward(prompt, cache, nm)
        pre.seconds.append(time.perf_counter() - t0)
    for _ in range(reps):
        cache = dec.new_cache(len(short) + n_decode + 1, nm)
        token = int(np.argmax(dec.forward(short, cache, nm)[-1]))
        t0 = time.perf_counter()
        for _ in range(n_decode):
            token = int(np.argmax(dec.forward([token], cache, nm)[-1]))
        dcd.seconds.append(time.perf_counter() - t0)
    return [pre, dcd]


# -- llama.cpp, in a child process of its own ---------------------------------------------------
# The child's memory figures: VmHWM is the peak of the child's own image (reset at exec); its
# ru_maxrss starts at the parent's RSS on Linux, so it is recorded but not used as the peak.
_CHILD_RSS = "import json, resource, sys\n\n" + "\n\n".join(
    inspect.getsource(f) for f in (rss_now, ru_maxrss_bytes, peak_rss_bytes))  # the functions above, verbatim

# Reads {"path", "prompt", "n_decode", "reps", "n_threads"} as JSON on stdin; prints one JSON line.
# Imports only numpy and llama_cpp, so its RSS is llama.cpp's plus an interpreter's.
_LLAMA_CPP_CHILD = _CHILD_RSS + r"""
import time
import numpy as np
import llama_cpp

a = json.load(sys.stdin)
prompt, short, n_decode, reps = a["prompt"], a["prompt"][:8], a["n_decode"], a["reps"]
before = rss_now()
t0 = time.perf_counter()
llm = llama_cpp.Llama(model_path=a["path"], n_ctx=max(len(prompt), 8 + n_decode) + 16,
                      n_batch=max(512, len(prompt)), n_threads=a["n_threads"], n_threads_batch=a["n_threads"],
                      verbose=False)
load_s = time.perf_counter() - t0

def last_token():
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
    return int(np.argmax(logits))

llm.reset(); llm.eval(short)  # warm-up
prefill, decode = [], []
for _ in range(reps):
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    prefill.append(time.perf_counter() - t0)
for _ in range(reps):
    llm.reset()
    llm.eval(short)
    token = last_token()
    t0 = time.perf_counter()
    for _ in range(n_decode):
        llm.eval([token])
        token = last_token()
    decode.append(time.perf_counter() - t0)
end = rss_now()
print(json.dumps({"load_s": load_s, "prefill_s": prefill, "decode_s": decode,
                  "peak_rss_bytes": peak_rss_bytes(), "ru_maxrss_bytes": ru_maxrss_bytes(),
                  "rss_before_load_bytes": before.get("VmRSS"), "rss_anon_bytes": end.get("RssAnon"),
                  "rss_file_bytes": end.get("RssFile")}))
"""


# the host's AVX-512 kernels without -march=native (so without AMX): what a native build on an AVX-512 VM
# that advertises AMX without enabling it should be (ran there, Xeon model 207, 2026-12-06)
NO_AMX_NATIVE_CMAKE_ARGS = ("-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "
                            "-DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON "
                            "-DGGML_AVX_VNNI=ON -DGGML_BMI2=ON")


def _signal_hint(returncode: int) -> str:
    """What a child's negative exit code (killed by a signal) means; for SIGILL, the cause we have seen."""
    if returncode >= 0:
        return ""
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        return f", killed by signal {-returncode}"
    if name == "SIGILL":
        return (", SIGILL: an instruction this CPU or VM refuses. Seen with a -march=native llama.cpp on a VM "
                "that advertises AMX without enabling it (it traps at its first tileloadd; -DGGML_AMX_*=OFF does "
                "not help while -march=native enables AMX). Rebuild without AMX (verified on such a VM): "
                f"ZIGLLAMA_NATIVE_CMAKE_ARGS=\"{NO_AMX_NATIVE_CMAKE_ARGS}\" scripts/install_oracle.sh --native; "
                "or compare with the pinned build: --llama-cpp installed")
    return f", killed by {name}"


def _run_child(code: str, payload: dict | None = None, env: dict | None = None, timeout: float = 3600) -> dict:
    """Run ``python -c code`` (``payload`` as JSON on stdin); return the JSON of its last stdout line."""
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(payload or {}), capture_output=True,
                         text=True, env=env, timeout=timeout)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise BenchError(f"benchmark child process failed (exit {out.returncode}{_signal_hint(out.returncode)}): "
                         f"{out.stderr.strip()[-2000:]}")
    return json.loads(lines[-1])


def bench_llama_cpp(path, prompt: list[int], n_decode: int, reps: int,
                    n_threads: int, env: dict | None = None) -> tuple[list[Measurement], dict]:
    """llama.cpp's prefill of ``prompt`` and ``n_decode`` greedy steps (after its first 8 tokens), in a child.

    Returns the two measurements and ``{"load_s", "peak_rss_bytes", "rss_before_load_bytes", ...}``
    of the child process.
    """
    _check_positive(n_decode=n_decode, reps=reps, n_threads=n_threads)
    r = _run_child(_LLAMA_CPP_CHILD, {"path": str(path), "prompt": [int(t) for t in prompt], "n_decode": n_decode,
                                      "reps": reps, "n_threads": n_threads}, env=env)
    pre = Measurement("llama.cpp", "prefill", len(prompt), r.pop("prefill_s"))
    dcd = Measurement("llama.cpp", "decode", n_decode, r.pop("decode_s"))
    return [pre, dcd], r


def _interleaved(model, path, n_prompt, n_decode, reps, numerics, n_threads, env=None):
    """``reps`` rounds of one repetition of ours then one of llama.cpp (a fresh child each round), so
    that both engines meet the machine in the same state: on a shared machine speed drifts over
    minutes, and ``reps`` of one engine followed by ``reps`` of the other turn that drift into a
    bias of the ratio. Returns our and llama.cpp's measurements, the last child's info (its peak
    RSS the largest of all rounds) and each round's ratio per phase."""
    prompt = _bench_prompt(model.tokenizer, n_prompt)
    ours = llama = None
    info, paired = {}, {"prefill": [], "decode": []}
    for _ in range(reps):
        o = bench_ours(model, n_prompt, n_decode, 1, numerics)
        ll, i = bench_llama_cpp(path, prompt, n_decode, 1, n_threads, env)
        for m_o, m_l in zip(o, ll):
            paired[m_o.phase].append(m_o.median / m_l.median)
        if ours is None:
            ours, llama, info = o, ll, i
        else:
            for acc, new in zip(ours + llama, o + ll):
                acc.seconds.extend(new.seconds)
            info["peak_rss_bytes"] = max(info["peak_rss_bytes"], i["peak_rss_bytes"])  # load_s: the first round's
    return ours, llama, info, paired


# -- startup: a fresh process to its first token ------------------------------------------------
_OURS_STARTUP_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
a = json.load(sys.stdin)
import zigllama_lib as zl
t1 = time.perf_counter()
model = zl.load(a["path"], n_threads=a["n_threads"], numerics=a["numerics"], progress=False)
t2 = time.perf_counter()
ids = model.tokenizer.encode(a["prompt"], add_special=True)
token = next(iter(model.generate_ids(ids, max_tokens=1, temperature=0.0, stop_at_eog=False)))
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_token_s": t3 - t2, "token": int(token)}), flush=True)
"""

_LLAMA_CPP_STARTUP_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
a = json.load(sys.stdin)
import numpy as np
import llama_cpp
t1 = time.perf_counter()
llm = llama_cpp.Llama(model_path=a["path"], n_ctx=64, n_threads=a["n_threads"], n_threads_batch=a["n_threads"],
                      verbose=False)
t2 = time.perf_counter()
llm.eval(llm.tokenize(a["prompt"].encode(), add_bos=True))
token = int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))))
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_token_s": t3 - t2, "token": token}), flush=True)
"""


def _startup_once(code: str, payload: dict, env: dict | None = None) -> dict:
    """Wall time from launching ``python -c code`` to the line it prints after its first token, plus its own split."""
    with tempfile.TemporaryFile("w+", encoding="utf-8") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=err, text=True, env=env)
        p.stdin.write(json.dumps(payload))
        p.stdin.close()
        line = p.stdout.readline()
        wall = time.perf_counter() - t0
        p.stdout.read()
        rc = p.wait()
        if rc != 0 or not line.strip():
            err.seek(0)
            raise BenchError(f"startup child process failed (exit {rc}): {err.read().strip()[-2000:]}")
    return {"wall_s": wall, **json.loads(line)}


def measure_startup(path, numerics: str, n_threads: int, reps: int = 1, cold: bool = True,
                    vs_llama_cpp: bool = False, llama_cpp_env: dict | None = None) -> dict:
    """Fresh process to first token: ``zigllama_warm`` (median of ``reps``, after one untimed run that fills
    the Numba cache), ``zigllama_cold`` (one run, empty ``NUMBA_CACHE_DIR``), ``llama.cpp_warm`` if asked."""
    _check_positive(reps=reps, n_threads=n_threads)
    payload = {"path": str(path), "numerics": numerics, "n_threads": n_threads, "prompt": STARTUP_PROMPT}

    def warm(code, label, env=None):
        _startup_once(code, payload, env)  # untimed: fills caches (Numba's, the page cache)
        runs = [_startup_once(code, payload, env) for _ in range(reps)]
        walls = [r["wall_s"] for r in runs]
        best = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
        return {**best, "wall_s": statistics.median(walls), "wall_s_all": walls, "reps": reps, "what": label}

    out = {"prompt": STARTUP_PROMPT,
           "zigllama_warm": warm(_OURS_STARTUP_CHILD, "fresh python: import zigllama_lib, load, first token; "
                                                       "Numba cache warm")}
    if cold:
        cache_dir = tempfile.mkdtemp(prefix="zigllama-numba-cold-")
        try:
            env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
            r = _startup_once(_OURS_STARTUP_CHILD, payload, env=env)
        finally:
            shutil.rmtree(cache_dir, ignore_errors=True)
        out["zigllama_cold"] = {**r, "wall_s_all": [r["wall_s"]], "reps": 1,
                                "what": "same, NUMBA_CACHE_DIR empty: every kernel on the path compiled"}
    if vs_llama_cpp:
        out["llama.cpp_warm"] = warm(_LLAMA_CPP_STARTUP_CHILD, "fresh python: import llama_cpp, Llama(), "
                                                               "first token", llama_cpp_env)
    return out


# -- the whole run ------------------------------------------------------------------------------
def run(model, n_prompt: int = 128, n_decode: int = 128, reps: int = 5, vs_llama_cpp: bool = False,
        n_threads: int | None = None, numerics: str | None = None, startup: bool = False,
        startup_cold: bool = True, command: str | None = None, llama_cpp: str = "auto") -> dict:
    """Run the benchmark; returns a JSON-able dict with every measurement, the ratios and the machine.

    ``model``: a registry name or ``.gguf`` path (then its load is timed and our
    memory is counted from before it), or a loaded :class:`LanguageModel`.
    ``llama_cpp``: which llama.cpp build to time against (:mod:`.llama_cpp_builds`):
    ``"auto"`` (the native build if ``scripts/install_oracle.sh --native`` installed
    one -- what pip gives a user on this machine -- else the installed one),
    ``"native"``, ``"installed"`` or a folder holding ``llama_cpp``.
    """
    from .engine import LanguageModel, load

    numerics = numerics or default_numerics()
    numerics_named(numerics)
    _check_positive(n_prompt=n_prompt, n_decode=n_decode, reps=reps)
    if n_threads is None:
        n_threads = available_cores()
    _check_positive(n_threads=n_threads)
    machine = machine_info(n_threads)
    if isinstance(model, LanguageModel):
        load_s, rss_before = None, None
    else:
        rss_before = rss_now().get("VmRSS")
        t0 = time.perf_counter()
        model = load(model, n_threads=n_threads, numerics=numerics, progress=False)
        load_s = time.perf_counter() - t0
    path = Path(model.path)
    file_bytes = path.stat().st_size
    if n_prompt > model.spec.n_ctx_train or 8 + n_decode > model.spec.n_ctx_train:
        raise ConfigError(f"n_prompt={n_prompt} / 8 + n_decode={8 + n_decode} exceed the model's training "
                          f"context of {model.spec.n_ctx_train} tokens")

    build = build_info = None
    if vs_llama_cpp:
        from .llama_cpp_builds import describe, resolve

        build = resolve(llama_cpp)
        build_info = describe(build)
        results, llama, info, paired = _interleaved(model, path, n_prompt, n_decode, reps, numerics, n_threads,
                                                    build.env())
    else:
        results = bench_ours(model, n_prompt, n_decode, reps, numerics)
    end = rss_now()
    memory = {"zigllama": {"peak_rss_bytes": peak_rss_bytes(), "ru_maxrss_bytes": ru_maxrss_bytes(),
                           "rss_before_load_bytes": rss_before,
                           "rss_anon_bytes": end.get("RssAnon"), "rss_file_bytes": end.get("RssFile"),
                           "process": "this process" + ("" if load_s is not None else
                                                        " (model loaded earlier: peak includes all it did)")}}
    load_times = {"zigllama": {"seconds": load_s, "what": "load(path): header, tokenizer, weight views (mmap)"}}
    if vs_llama_cpp:
        results += llama
        load_times["llama.cpp"] = {"seconds": info.pop("load_s"), "what": "llama_cpp.Llama(path) (mmap)"}
        memory["llama.cpp"] = {**info, "process": "child process running only llama.cpp"}
    for m in memory.values():
        m["file_bytes"] = file_bytes
        m["peak_rss_over_file"] = m["peak_rss_bytes"] / file_bytes

    out = {"command": command, "machine": machine, "model": str(path), "file_bytes": file_bytes,
           "n_threads": n_threads, "numerics": numerics, "n_prompt": n_prompt, "n_decode": n_decode, "reps": reps,
           "measurements": [m.summary() for m in results], "ratios": {}, "load": load_times, "memory": memory,
           "startup": None, "paired_ratios": {}, "llama_cpp_build": build_info}
    by = {(m.engine, m.phase): m for m in results}
    for phase in ("prefill", "decode"):
        if ("llama.cpp", phase) in by:
            out["ratios"][phase] = by[("zigllama", phase)].median / by[("llama.cpp", phase)].median
            out["paired_ratios"][phase] = paired[phase]
    if startup:
        out["startup"] = measure_startup(path, numerics, n_threads, reps=min(reps, 3), cold=startup_cold,
                                         vs_llama_cpp=vs_llama_cpp,
                                         llama_cpp_env=build.env() if build else None)
    out["machine"]["load_average_end"] = load_average()
    return out


# -- markdown -----------------------------------------------------------------------------------
def _mb(n) -> str:
    return "-" if n is None else f"{n / 1e6:.0f} MB"


def _s(x) -> str:
    return "-" if x is None else f"{x:.2f} s"


def _load_note(mc: dict) -> str:
    """The load average before the run (the one after includes the run's own threads: JSON only)."""
    start = mc.get("load_average_start")
    if start is None:
        return ""
    note = f"Load average (1 min) before the run: {start:.2f}"
    if start >= 1.0:
        note += " (other work was using about a core or more: figures are noisy, see the min-max ranges)"
    return note + "."


def format_table(result: dict) -> str:
    """The throughput table (one row per engine and phase) and the ratio lines."""
    lines = ["| engine | phase | tokens | median tok/s | min-max tok/s |", "|---|---|---|---|---|"]
    for m in result["measurements"]:
        lines.append(f"| {m['engine']} | {m['phase']} | {m['n_tokens']} | {m['median_tok_s']:.1f} | "
                     f"{m['min_tok_s']:.1f}-{m['max_tok_s']:.1f} |")
    for phase, r in result["ratios"].items():
        lines.append(f"\nratio ours / llama.cpp, {phase}: {r:.2f}")
        paired = result.get("paired_ratios", {}).get(phase)
        if paired:
            lines[-1] += (f" (repetitions interleaved, ours then llama.cpp; the {len(paired)} per-round ratios: "
                          f"{min(paired):.2f}-{max(paired):.2f})")
    return "\n".join(lines)


def format_markdown(result: dict) -> str:
    """The command, the machine, throughput, load time and memory, and startup if measured."""
    mc = result["machine"]
    parts = []
    if result.get("command"):
        parts.append(f"```\n{result['command']}\n```\n")
    parts.append(f"{Path(result['model']).name} ({_mb(result['file_bytes'])}), numerics `{result['numerics']}`, "
                 f"{result['n_threads']} threads, median of {result['reps']} reps. Machine: {mc['cpu']}, "
                 f"{mc['n_cores_available']} cores; numba {mc['numba']}, llama-cpp-python "
                 f"{mc['llama_cpp_python'] or '-'}; {mc['date']}. {_load_note(mc)}\n")
    if result.get("llama_cpp_build"):
        parts.append(f"llama.cpp timed: {result['llama_cpp_build']['label']}.\n")
    parts.append(format_table(result) + "\n")
    lines = ["| engine | load time | peak RSS | RSS before load | peak RSS / file size | RSS at end: anon + file |",
             "|---|---|---|---|---|---|"]
    for engine, mem in result["memory"].items():
        lines.append(f"| {engine} | {_s(result['load'][engine]['seconds'])} | {_mb(mem['peak_rss_bytes'])} | "
                     f"{_mb(mem['rss_before_load_bytes'])} | {mem['peak_rss_over_file']:.2f} | "
                     f"{_mb(mem['rss_anon_bytes'])} + {_mb(mem['rss_file_bytes'])} |")
    parts.append("\n".join(lines) + "\n")
    parts.append("Peak RSS: `VmHWM` of the process that ran the engine (ours: the benchmark process; "
                 "llama.cpp: a child running only it), interpreter and imports included (RSS before load); "
                 "touched pages of the memory-mapped model count too. At end: anon = the process's own "
                 "allocations (repacked weights, KV cache, buffers); file = resident pages of mapped files: the "
                 "model's and the shared libraries' (Numba's libLLVM, libllama), shared with the page cache. "
                 "Load: page cache warm.\n")
    st = result.get("startup")
    if st:
        lines = ["| startup (fresh process to first token) | wall | import | load | first token |",
                 "|---|---|---|---|---|"]
        for key in ("zigllama_warm", "zigllama_cold", "llama.cpp_warm"):
            if key in st:
                r = st[key]
                lines.append(f"| {key.replace('_', ', ')}: {r['what']} | {_s(r['wall_s'])} | {_s(r['import_s'])} | "
                             f"{_s(r['load_s'])} | {_s(r['first_token_s'])} |")
        parts.append("\n".join(lines) + "\n")
        parts.append(f"Prompt {st['prompt']!r}; warm: median of {st['zigllama_warm']['reps']} after an untimed run; "
                     "cold: one run. Wall: launch to the first token (interpreter start included); `import "
                     "zigllama_lib` is lazy, so the layers' imports (Numba's included) count in its load.\n")
    return "\n".join(parts)


__all__ = ["Measurement", "BenchError", "run", "format_table", "format_markdown", "machine_info",
           "measure_startup", "bench_ours", "bench_llama_cpp", "default_numerics", "peak_rss_bytes", "ru_maxrss_bytes",
           "rss_now",
           "asdict"]
