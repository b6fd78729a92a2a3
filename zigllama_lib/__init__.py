"""zigllama_lib: LLM inference from GGUF bytes to streamed text, in six layers."""
from .foundation.errors import ZigLlamaError

__version__ = "0.1.0"


def load(name_or_path="smollm2-135m-instruct", **kwargs):
    """Load a model by registry name (e.g. ``"smollm2-135m-instruct"``) or ``.gguf`` path."""
    from .inference.engine import load as _load

    return _load(name_or_path, **kwargs)


__all__ = ["ZigLlamaError", "load", "__version__"]
