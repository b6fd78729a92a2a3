"""Which llama.cpp: the pinned oracle build, a native build, and how far we agree with each.

Our ``numerics="llama.cpp"`` mirrors one build bit for bit: **llama-cpp-python
0.3.36, x86-64 AVX2 build** (``PINNED_CMAKE_ARGS``: no ``-march=native``,
generic tuning, AVX2 + FMA + F16C, no AVX-512), the same machine code on every
x86-64 CPU with AVX2. ``scripts/install_oracle.sh`` builds it into the project's
cache and installs it; the tests run against it.

What pip builds on a user's machine is a **native** build: on an AVX-512 CPU
ggml's float code then takes other paths (16-lane vectors, other tinyBLAS
tiles, VNNI kernels), rounds differently, and its logits differ from the pinned
build's in the last bits -- which the 8-bit activation path turns into other
tokens after a while. ``scripts/install_oracle.sh --native`` puts such a build
beside the pinned one (``$ZIGLLAMA_CACHE/llama-cpp-native-0.3.36``), and
:func:`parity_report` / ``zigllama parity --llama-cpp native`` says how far we
agree with it; ``zigllama bench --vs llama.cpp`` times against it when present.

A build is chosen by name:

* ``"installed"`` -- whatever ``import llama_cpp`` finds (the pinned build in
  the project's test environment);
* ``"native"`` -- the native build installed by ``install_oracle.sh --native``;
* a folder holding a ``llama_cpp`` package (put first on the child's path).

Every comparison runs llama.cpp in a child process, so several builds can be
compared from one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..foundation.errors import ConfigError, ZigLlamaError

PINNED_VERSION = "0.3.36"
PINNED_CMAKE_ARGS = ("-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "
                     "-DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF")
PINNED_NAME = f"llama.cpp {PINNED_VERSION}, x86-64 AVX2 build (CMAKE_ARGS=\"{PINNED_CMAKE_ARGS}\")"
# What the pinned build's llama_print_system_info() reports of the CPU features it was compiled
# for (compile-time, the same on every machine): these on, no AVX-512 / VNNI / AMX. A native build
# on an AVX2-only CPU reports the same, so the features alone cannot tell it from the pinned one:
# the build's provenance (the wheel it was installed from, and the BUILD_INFO that
# install_oracle.sh wrote beside it) and a canary of logits (tests/test_oracle_build.py) do.
PINNED_FEATURES = {"SSE3": 1, "SSSE3": 1, "AVX": 1, "AVX2": 1, "F16C": 1, "FMA": 1, "BMI2": 1, "AVX_VNNI": 0,
                   "AVX512": 0, "AVX512_VBMI": 0, "AVX512_VNNI": 0, "AVX512_BF16": 0, "AMX_INT8": 0}

DEFAULT_PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "The three primary colours are red,",
]


class OracleError(ZigLlamaError):
    """A llama.cpp build is missing, or its child process failed."""


def cache_dir() -> Path:
    return Path(os.environ.get("ZIGLLAMA_CACHE", Path.home() / ".cache" / "zigllama"))


def native_dir() -> Path:
    """Where ``scripts/install_oracle.sh --native`` installs the native build."""
    return cache_dir() / f"llama-cpp-native-{PINNED_VERSION}"


@dataclass(frozen=True)
class Build:
    """A llama.cpp build to run in a child process: its name and the folder put first on the path."""

    name: str
    site: Path | None  # None: the llama_cpp that ``import`` finds

    def env(self) -> dict:
        env = dict(os.environ)
        if self.site is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(self.site)] + [p for p in [env.get("PYTHONPATH")] if p])
        return env


def resolve(which: str = "installed") -> Build:
    """``"installed"``, ``"native"``, ``"auto"`` (native if installed, else installed) or a folder."""
    if which == "auto":
        which = "native" if (native_dir() / "llama_cpp").is_dir() else "installed"
    if which == "installed":
        return Build("installed", None)
    site = native_dir() if which == "native" else Path(which)
    if not (site / "llama_cpp").is_dir():
        hint = "run scripts/install_oracle.sh --native" if which == "native" else "a folder holding llama_cpp/"
        raise OracleError(f"no llama_cpp package in {site} ({hint})")
    return Build(which, site)


def run_child(build: Build, code: str, payload: dict | None = None, timeout: float = 1800) -> dict:
    """Run ``python -c code`` against ``build`` (``payload`` as JSON on stdin); the JSON of its last line."""
    try:
        out = subprocess.run([sys.executable, "-c", code], input=json.dumps(payload or {}), capture_output=True,
                             text=True, env=build.env(), timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise OracleError(f"llama.cpp child ({build.name}) did not finish within {timeout:.0f} s") from e
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise OracleError(f"llama.cpp child ({build.name}) failed (exit {out.returncode}): "
                          f"{out.stderr.strip()[-2000:]}")
    return json.loads(lines[-1])


_DESCRIBE_CHILD = r"""
import json, pathlib, urllib.parse, urllib.request
import llama_cpp
info = llama_cpp.llama_print_system_info().decode()
cmake_args = wheel = None
for d in pathlib.Path(llama_cpp.__file__).parent.parent.glob("llama_cpp_python-*.dist-info"):
    try:
        url = json.loads((d / "direct_url.json").read_text(encoding="utf-8"))["url"]
    except (OSError, KeyError, ValueError):
        continue
    if url.startswith("file://"):
        wheel = urllib.request.url2pathname(urllib.parse.urlparse(url).path)
        build_info = pathlib.Path(wheel).parent / "BUILD_INFO"
        if build_info.is_file():
            for line in build_info.read_text(encoding="utf-8").splitlines():
                if line.startswith("CMAKE_ARGS="):
                    cmake_args = line[len("CMAKE_ARGS="):]
print(json.dumps({"version": llama_cpp.__version__, "file": llama_cpp.__file__, "system_info": info,
                  "wheel": wheel, "cmake_args": cmake_args}))
"""


def parse_features(system_info: str) -> dict[str, int]:
    """``{"AVX2": 1, "AVX512": 0, ...}`` from ``llama_print_system_info()``'s ``NAME = value`` fields."""
    out = {}
    for field in system_info.replace("\n", "|").split("|"):
        name, sep, value = field.partition("=")
        name = name.strip().split(":")[-1].strip()
        if sep and value.strip().isdigit():
            out[name] = int(value.strip())
    return out


def is_pinned(system_info: str, version: str, cmake_args: str | None = None) -> tuple[bool, str]:
    """Whether a build is the pinned one, and why not.

    Its version must be the pinned one; its ``CMAKE_ARGS`` (recorded by
    ``install_oracle.sh`` beside the wheel; ``None`` if it came from elsewhere) the
    pinned flags; and its compiled-in CPU features those of the pinned build.
    """
    if version != PINNED_VERSION:
        return False, f"llama-cpp-python {version}, not {PINNED_VERSION}"
    if cmake_args is None:
        return False, "not installed by scripts/install_oracle.sh (no record of its CMAKE_ARGS)"
    if cmake_args.split() != PINNED_CMAKE_ARGS.split():
        return False, f"built with CMAKE_ARGS=\"{cmake_args}\""
    feats = parse_features(system_info)
    wrong = {k: feats.get(k) for k, v in PINNED_FEATURES.items() if k in feats and feats[k] != v}
    missing = [k for k in ("AVX2", "FMA", "F16C") if k not in feats]
    if missing:
        return False, f"system info reports no {', '.join(missing)}: {system_info.strip()}"
    if wrong:
        return False, "compiled-in features differ from the pinned AVX2 build: " + ", ".join(
            f"{k} = {v}" for k, v in wrong.items())
    return True, "pinned AVX2 build"


def describe(build: Build) -> dict:
    """``{"name", "version", "file", "system_info", "pinned", "why"}`` of a build."""
    d = run_child(build, _DESCRIBE_CHILD, timeout=300)
    d["pinned"], d["why"] = is_pinned(d["system_info"], d["version"], d["cmake_args"])
    d["name"] = build.name
    d["label"] = PINNED_NAME if d["pinned"] else f"llama.cpp {d['version']}, {build.name} build ({d['why']})"
    return d


# Reads {"path", "prompts": [[ids]], "n_greedy", "n_threads"}; prints {"prefill": [logits], "greedy": [...]}
_PARITY_CHILD = r"""
import json, sys
import numpy as np
import llama_cpp

a = json.load(sys.stdin)
n_ctx = max(len(p) for p in a["prompts"]) + a["n_greedy"] + 16
llm = llama_cpp.Llama(model_path=a["path"], n_ctx=n_ctx, n_batch=512, logits_all=True,
                      n_threads=a["n_threads"], n_threads_batch=a["n_threads"], verbose=False)
out = {"prefill": [], "greedy": [], "margins": []}
for ids in a["prompts"]:
    llm.reset()
    llm.eval(list(ids))
    out["prefill"].append(np.array(llm.scores[: len(ids)], np.float32).view(np.uint32).ravel().tolist())
    tokens, margins = [], []
    for _ in range(a["n_greedy"]):
        logits = np.array(llm.scores[llm.n_tokens - 1], np.float32)
        top = np.argsort(logits)[-2:]
        tokens.append(int(top[1]))
        margins.append(float(logits[top[1]] - logits[top[0]]))
        llm.eval([tokens[-1]])
    out["greedy"].append(tokens)
    out["margins"].append(margins)
llm.close()
print(json.dumps(out))
"""


def parity_report(model, build: Build | str = "installed", prompts: list[str] | None = None,
                  n_greedy: int = 48, n_threads: int = 2) -> dict:
    """Our ``numerics="llama.cpp"`` against a llama.cpp build on the same file.

    Per prompt: the largest ``|ours - llama.cpp|`` over the prompt's logits (one
    prefill each), and how many of ``n_greedy`` greedy tokens (token by token,
    never stopping at end-of-generation) agree before the first difference,
    with llama.cpp's top-1 margin there. Against the pinned build the
    difference is 0.0 and every token agrees; against a native AVX-512 build
    the logits differ in the last bits and the texts part after a while.
    """
    if n_greedy < 1:
        raise ConfigError(f"n_greedy must be >= 1, got {n_greedy}")
    build = resolve(build) if isinstance(build, str) else build
    texts = prompts or DEFAULT_PROMPTS
    ids = [model.tokenizer.encode(t, add_special=True) for t in texts]
    empty = [t for t, i in zip(texts, ids) if not i]
    if empty:
        raise ConfigError(f"prompt {empty[0]!r} has no tokens: give a non-empty prompt")
    too_long = [len(i) for i in ids if len(i) + n_greedy > model.n_ctx]
    if too_long:
        raise ConfigError(f"a prompt of {too_long[0]} tokens plus {n_greedy} greedy tokens exceeds the context "
                          f"of {model.n_ctx} tokens")
    info = describe(build)
    ref = run_child(build, _PARITY_CHILD, {"path": str(model.path), "prompts": ids, "n_greedy": n_greedy,
                                           "n_threads": n_threads})
    rows = []
    for k, text in enumerate(texts):
        theirs = np.array(ref["prefill"][k], np.uint32).view(np.float32).reshape(len(ids[k]), -1)
        ours = model.logits(ids[k], numerics="llama.cpp")
        greedy = list(model.generate_ids(ids[k], max_tokens=n_greedy, temperature=0.0, stop_at_eog=False,
                                         numerics="llama.cpp"))
        want = ref["greedy"][k]
        agree = next((i for i, (a, b) in enumerate(zip(greedy, want)) if a != b), min(len(greedy), len(want)))
        rows.append({"prompt": text, "n_prompt": len(ids[k]), "max_logit_diff": float(np.abs(ours - theirs).max()),
                     "identical_logits": bool(np.array_equal(ours, theirs)), "greedy_agree": agree,
                     "n_greedy": n_greedy,
                     "margin_at_divergence": ref["margins"][k][agree] if agree < len(want) else None})
    return {"build": info, "model": str(model.path), "rows": rows}


def format_parity(report: dict) -> str:
    """A plain-text table of :func:`parity_report`."""
    b = report["build"]
    lines = [f"llama.cpp: {b['label']}", f"  {b['file']}", f"  system info: {b['system_info'].strip()}",
             f"model: {report['model']}", "",
             f"{'prompt':42} {'tokens':>6} {'max |diff|':>11} {'greedy agree':>13}  margin there"]
    for r in report["rows"]:
        p = r["prompt"].replace("\n", "\\n")
        p = p if len(p) <= 40 else p[:39] + "…"
        margin = "-" if r["margin_at_divergence"] is None else f"{r['margin_at_divergence']:.4f}"
        lines.append(f"{p:42} {r['n_prompt']:>6} {r['max_logit_diff']:>11.3g} "
                     f"{r['greedy_agree']:>6}/{r['n_greedy']:<6}  {margin}")
    return "\n".join(lines)
