"""zigllama_lib: LLM inference from GGUF bytes to streamed text, in six layers."""
from .foundation.errors import ZigLlamaError

__version__ = "0.1.0"


def load(name_or_path="smollm2-135m-instruct", **kwargs):
    """Load a model by registry name (e.g. ``"smollm2-135m-instruct"``) or ``.gguf`` path."""
    from .inference.engine import load as _load

    return _load(name_or_path, **kwargs)


def render_chat_template(template, messages, add_generation_prompt=False, bos_token="", eos_token="", **extra):
    """Render a conversation through a chat template (Jinja source or a built-in name such as ``"gemma"``)."""
    from .models.chat_template import render_chat_template as _render

    return _render(template, messages, add_generation_prompt=add_generation_prompt, bos_token=bos_token,
                   eos_token=eos_token, **extra)


__all__ = ["ZigLlamaError", "load", "render_chat_template", "__version__"]
