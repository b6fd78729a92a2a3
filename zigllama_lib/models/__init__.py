"""Layer 5: models: architecture specs, the generic decoder, tokenizers, the registry."""
from .arch import ArchSpec, spec_from_metadata
from .registry import DEFAULT_MODEL, REGISTRY, cache_dir, pull, resolve
from .tokenizer import Tokenizer

__all__ = ["ArchSpec", "spec_from_metadata", "DEFAULT_MODEL", "REGISTRY", "cache_dir", "pull", "resolve", "Tokenizer"]
