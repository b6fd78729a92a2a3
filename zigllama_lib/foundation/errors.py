"""The one exception hierarchy of zigllama_lib.

Every error the library raises on purpose derives from :class:`ZigLlamaError`,
so a caller can write ``except zl.ZigLlamaError`` and know that anything else
is a bug. Messages name the file, tensor or field that is wrong.
"""

from __future__ import annotations


class ZigLlamaError(Exception):
    """Root of every error zigllama_lib raises."""


class GGUFError(ZigLlamaError):
    """A GGUF file is malformed, truncated, hostile or unsupported."""


class UnsupportedVersionError(GGUFError):
    """The GGUF header names a version we do not read."""


class TruncatedFileError(GGUFError):
    """The file ends before the header, metadata or tensor data it promises."""


class UnsupportedTypeError(ZigLlamaError):
    """A tensor or metadata value uses a type this library does not implement."""


class ModelError(ZigLlamaError):
    """A model file is readable but does not describe a model we can run."""


class TokenizerError(ZigLlamaError):
    """Tokenizer metadata is missing or inconsistent, or a token id is out of range."""


class ChatTemplateError(ZigLlamaError):
    """A chat template is malformed, unsafe, raised an error itself, or rendered too much."""


class ContextLengthError(ZigLlamaError):
    """A prompt (plus generation) does not fit in the model's context window."""


class RegistryError(ZigLlamaError):
    """A registry model cannot be fetched, verified or found."""


class ConfigError(ZigLlamaError):
    """An argument (sampler setting, thread count, ...) is out of range."""
