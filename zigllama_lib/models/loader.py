"""From a GGUF file to a runnable model: spec, weights and tokenizer."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..foundation.gguf import GGUFFile
from .arch import ArchSpec, spec_from_metadata
from .chat_template import attach_chat_template
from .decoder import Decoder
from .registry import resolve
from .tokenizer import Tokenizer


@dataclass
class LoadedModel:
    path: Path
    gguf: GGUFFile
    spec: ArchSpec
    decoder: Decoder
    tokenizer: Tokenizer


def load_gguf(name_or_path: str | os.PathLike, progress: bool = True) -> LoadedModel:
    """Resolve a registry name or path, parse the file, build decoder and tokenizer."""
    path = resolve(name_or_path, progress=progress)
    gguf = GGUFFile(path)
    embd = gguf.tensors.get("token_embd.weight")
    spec = spec_from_metadata(gguf.metadata, n_vocab_tensor=embd.shape[-1] if embd is not None else None)
    tokenizer = Tokenizer.from_metadata(gguf.metadata)
    attach_chat_template(tokenizer, gguf.metadata)
    return LoadedModel(path, gguf, spec, Decoder(gguf, spec), tokenizer)
