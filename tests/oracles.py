"""Finding the oracles: skip without them on a developer's machine, fail under CI.

A parity test that quietly skips when its oracle is missing turns a green run
into a run that checked nothing. So every oracle is looked up here: with the
environment variable ``CI`` set (``.ci/run`` exports it) a missing oracle is a
failure that says what to install; without it, a skip that says the same
(``pytest -rs`` lists the reasons).
"""

from __future__ import annotations

import ctypes
import importlib
import functools
import os
import subprocess
from pathlib import Path

import pytest

INSTALL_HINT = {
    "llama_cpp": "the pinned llama.cpp oracle: scripts/install_oracle.sh",
    "gguf": "gguf-py, llama.cpp's reader: pip install gguf==0.19.0 (the test extra)",
}


def strict() -> bool:
    """True under CI: a missing oracle fails instead of skipping."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(what: str) -> None:
    """Fail (under CI) or skip (elsewhere), naming what is missing. Works at module level too."""
    if strict():
        pytest.fail(f"missing oracle under CI: {what}", pytrace=False)
    pytest.skip(f"missing oracle: {what}", allow_module_level=True)


def require_module(name: str):
    """Import an oracle module (``llama_cpp``, ``gguf``, ...) or report it missing."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        missing(f"{INSTALL_HINT.get(name, name)} ({e})")


def ggml_library(llama_cpp, name: str) -> ctypes.CDLL:
    """One of llama-cpp-python's ggml shared libraries (``libggml-cpu.so``, ``libggml-base.so``)."""
    path = Path(llama_cpp.__file__).parent / "lib" / name
    if not path.exists():
        missing(f"{path} (llama-cpp-python ships no {name}; rebuild with scripts/install_oracle.sh)")
    return ctypes.CDLL(str(path))


def require_file(path: Path, what: str = "") -> Path:
    """A file an oracle comparison needs (a registry model in the cache)."""
    path = Path(path)
    if not path.exists():
        missing(f"{what or path.name}: {path} not present (set ZIGLLAMA_CACHE or run `zigllama pull`)")
    return path


@functools.lru_cache(maxsize=1)
def llama_cpp_source_tree() -> Path | None:
    """The llama.cpp sources vendored in the llama-cpp-python 0.3.36 sdist (its grammars, templates,
    tests), unpacked once by scripts/fetch_llama_cpp_sources.sh into the cache; None if that failed
    (callers report it with :func:`missing`)."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "fetch_llama_cpp_sources.sh"
    try:
        out = subprocess.run([str(script)], capture_output=True, text=True, timeout=600, check=True)
    except (subprocess.SubprocessError, OSError):
        return None
    return Path(out.stdout.strip().splitlines()[-1]) / "vendor" / "llama.cpp"
