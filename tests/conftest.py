"""Shared fixtures: registry models (fetched into the cache once) and llama.cpp oracles.

Which comparisons are which (see DESIGN.md, "Oracles"):
* our ``numerics="float"`` path vs llama.cpp on an F32 copy of the weights
  with an F32 KV cache: the same maths, tight tolerance;
* our ``numerics="llama.cpp"`` path vs llama.cpp on the quantised file:
  top-1 / greedy agreement (llama.cpp quantises activations to 8 bits).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from oracles import require_module

from zigllama_lib.models import registry

SMOLLM = "smollm2-135m-instruct"
GEMMA = "gemma3-270m"


def pytest_sessionstart(session):
    # Fetch (or find in the cache) the registry models once, so every test
    # module can locate them through $ZIGLLAMA_CACHE.
    for name in (SMOLLM, GEMMA):
        registry.pull(name, progress=False)


@pytest.fixture(scope="session")
def smollm_path() -> Path:
    return registry.pull(SMOLLM, progress=False)


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    return registry.pull(GEMMA, progress=False)


@pytest.fixture(scope="session")
def llama_cpp():
    return require_module("llama_cpp")


def f32_copy(llama_cpp, src: Path, out: Path) -> Path:
    """An F32 copy of a GGUF file's weights, made with llama.cpp's own quantize API."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_ALL_F32
    params.allow_requantize = True
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    assert rc == 0, f"llama_model_quantize failed with {rc}"
    return out


@pytest.fixture(scope="session")
def smollm_f32_path(llama_cpp, smollm_path, tmp_path_factory) -> Path:
    """An F32 copy of SmolLM2's weights."""
    return f32_copy(llama_cpp, smollm_path, tmp_path_factory.mktemp("f32") / "smollm2-135m-f32.gguf")


@pytest.fixture(scope="session")
def smollm(smollm_path):
    import zigllama_lib as zl

    return zl.load(smollm_path, n_ctx=512, progress=False)


def llama_logits(llama_cpp, path, ids, f32_kv: bool = False):
    """llama.cpp's logits (len(ids), n_vocab) for ``ids`` in a fresh context."""
    import numpy as np

    kw = dict(type_k=0, type_v=0) if f32_kv else {}  # GGML_TYPE_F32 = 0
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=max(64, len(ids) + 8), n_batch=512, logits_all=True,
                          n_threads=2, verbose=False, **kw)
    try:
        llm.eval(list(ids))
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()
