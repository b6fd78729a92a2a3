"""Chat templates: a conversation (a list of messages) -> the prompt text a model was trained on.

An instruction-tuned model saw its conversations in one exact text format, and
its GGUF file usually carries that format as a Jinja template in the metadata
key ``tokenizer.chat_template`` (copied from the Hugging Face model's
``tokenizer_config.json``). SmolLM2's, for example, renders::

    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi!"}]
    render_chat_template(smollm_template, messages, add_generation_prompt=True)
    # '<|im_start|>system\\nBe brief.<|im_end|>\\n<|im_start|>user\\nHi!<|im_end|>\\n<|im_start|>assistant\\n'

``add_generation_prompt=True`` appends the header of the assistant's turn, so
the model's next tokens are its reply; it ends the reply with an end-of-turn
token (``<|im_end|>``), which the generation loop stops at.

The rendering follows transformers' ``apply_chat_template`` (the reference
every template is written against):

* a sandboxed Jinja environment (``ImmutableSandboxedEnvironment``: no
  attribute starting with ``_``, no mutating methods on lists and dicts),
  ``trim_blocks`` and ``lstrip_blocks`` on, the ``loopcontrols`` extension
  (``{% break %}``, ``{% continue %}``) and transformers' ``{% generation %}``
  block (rendered as its body);
* globals ``raise_exception(msg)`` (a template refusing a conversation; here
  a :class:`~zigllama_lib.foundation.errors.ChatTemplateError` "chat template
  raised: ..."), ``strftime_now(fmt)`` (today's date, used by Llama 3.x),
  ``namespace`` that refuses ``_``-names, a ``dict`` that only builds dicts;
* a ``tojson`` filter that writes plain JSON (``ensure_ascii=False``, with
  ``indent``, ``separators`` and ``sort_keys``), not Jinja's HTML-escaped one;
* variables ``messages``, ``tools``, ``documents``, ``add_generation_prompt``,
  ``bos_token``, ``eos_token`` and any extra keyword (``enable_thinking=...``);
* messages are first reduced to plain JSON data, keys whose value is ``None``
  dropped (OpenAI clients send ``"tool_calls": null``), and a message's
  reasoning is offered under both ``reasoning_content`` and ``thinking``.

Files without a template get a built-in one (:data:`BUILTIN_TEMPLATES`, our
own Jinja text for each named format; :func:`builtin_template_for` picks one
from the architecture and vocabulary, e.g. ``"gemma"`` for Gemma 3).

Limits (a template is code from the internet): the source at most
:data:`MAX_TEMPLATE_CHARS`, the output and every string or list built with
``+``/``*`` at most ``max_chars`` (default :data:`MAX_OUTPUT_CHARS`), at most
:data:`MAX_RANGE_ITEMS` items from ``range()`` per rendering, and no huge
``**``. Errors are :class:`ChatTemplateError` naming the problem (a syntax
error with its line, a sandbox refusal, a template's own exception), never a
raw Jinja traceback.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import math
import re
from datetime import datetime
from functools import lru_cache
from typing import Any, Iterable, Mapping, Sequence

from ..foundation.errors import ChatTemplateError

MAX_TEMPLATE_CHARS = 1_000_000  # the largest real templates are ~30 kB
MAX_OUTPUT_CHARS = 4_000_000  # ~1M tokens: far beyond any context window
MAX_RANGE_ITEMS = 1_000_000  # range() items per rendering, nested loops included
_MAX_POW_BITS = 1 << 16  # refuse a ** b (or a * b of ints) whose result would need more bits than this
MAX_RENDER_SECONDS = 5.0  # wall time of one rendering, checked at every loop item and call
_WIDTH_RE = re.compile(r"%[-+ #0]*(\d+)|\.(\d+)|\{[^{}]*:[^{}]*?(\d+)[^{}]*\}")
_WIDTH_METHODS = ("center", "ljust", "rjust", "zfill", "expandtabs")

_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]+")
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


# -- built-in templates ---------------------------------------------------------------
# Our own Jinja text for each named format. The rendered strings follow the
# model cards (and llama.cpp's built-in formatter of the same name); the tests
# compare them with llama.cpp's llm_chat_apply_template and hand-written strings.

_CHATML = """\
{%- for message in messages -%}
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ '<|im_start|>assistant\\n' }}
{%- endif -%}
"""

# Llama 2 chat (meta-llama/Llama-2-*-chat): the system prompt goes inside the first [INST].
#   <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] {user} [/INST]
_LLAMA2 = """\
{%- if messages and messages[0]['role'] == 'system' -%}
{%- set system = messages[0]['content'] -%}
{%- set turns = messages[1:] -%}
{%- else -%}
{%- set system = none -%}
{%- set turns = messages -%}
{%- endif -%}
{%- for message in turns -%}
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
{{ raise_exception('llama2: after the optional system message, roles must alternate user/assistant/user/...') }}
{%- endif -%}
{%- if message['role'] == 'user' -%}
{%- set text = message['content'] -%}
{%- if loop.first and system is not none -%}
{%- set text = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + text -%}
{%- endif -%}
{{ bos_token + '[INST] ' + text | trim + ' [/INST]' }}
{%- else -%}
{{ ' ' + message['content'] | trim + ' ' + eos_token }}
{%- endif -%}
{%- endfor -%}
"""

# Llama 3 / 3.1 / 3.2 without tools.
_LLAMA3 = """\
{{- bos_token -}}
{%- for message in messages -%}
{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif -%}
"""

# Stanford Alpaca: a preamble (or the system message), then ### Instruction / ### Response blocks.
_ALPACA = """\
{%- if messages and messages[0]['role'] == 'system' -%}
{{ messages[0]['content'] + '\\n\\n' }}
{%- set turns = messages[1:] -%}
{%- else -%}
{{ 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\\n\\n' }}
{%- set turns = messages -%}
{%- endif -%}
{%- for message in turns -%}
{%- if message['role'] == 'user' -%}
{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}
{%- elif message['role'] == 'assistant' -%}
{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}
{%- else -%}
{{ raise_exception('alpaca: only user and assistant messages after the optional system message') }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ '### Response:\\n' }}
{%- endif -%}
"""

# Vicuna v1.1: "{system}\n\nUSER: ...\nASSISTANT: ...</s>\n".
_VICUNA = """\
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}
{{ message['content'] + '\\n\\n' }}
{%- elif message['role'] == 'user' -%}
{{ 'USER: ' + message['content'] + '\\n' }}
{%- elif message['role'] == 'assistant' -%}
{{ 'ASSISTANT: ' + message['content'] + eos_token + '\\n' }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ 'ASSISTANT:' }}
{%- endif -%}
"""

# Gemma (1, 2, 3): turns <start_of_turn>user|model ... <end_of_turn>; no system role,
# so a system message is prepended to the first user turn, as Gemma 3's official template does.
_GEMMA = """\
{{- bos_token -}}
{%- if messages and messages[0]['role'] == 'system' -%}
{%- set prefix = messages[0]['content'] + '\\n\\n' -%}
{%- set turns = messages[1:] -%}
{%- else -%}
{%- set prefix = '' -%}
{%- set turns = messages -%}
{%- endif -%}
{%- for message in turns -%}
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
{{ raise_exception('gemma: after the optional system message, roles must alternate user/assistant/user/...') }}
{%- endif -%}
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
{{ '<start_of_turn>' + role + '\\n' + (prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ '<start_of_turn>model\\n' }}
{%- endif -%}
"""

# Zephyr (HuggingFaceH4/zephyr-7b-*): <|role|>\n{content}{eos}\n.
_ZEPHYR = """\
{%- for message in messages -%}
{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ '<|assistant|>\\n' }}
{%- endif -%}
"""

BUILTIN_TEMPLATES: dict[str, str] = {
    "chatml": _CHATML,
    "llama2": _LLAMA2,
    "llama3": _LLAMA3,
    "alpaca": _ALPACA,
    "vicuna": _VICUNA,
    "gemma": _GEMMA,
    "zephyr": _ZEPHYR,
}


def builtin_template_for(arch: str | None, token_texts: Iterable[str] = ()) -> str:
    """The built-in template's name for a model whose file has none.

    By architecture first (``gemma*`` -> ``"gemma"``), then by the vocabulary's
    turn markers (``<|start_header_id|>`` -> ``"llama3"``, ``<|im_start|>``
    -> ``"chatml"``), else ``"chatml"``, llama.cpp's fallback too.
    Example: ``builtin_template_for("gemma3")`` -> ``"gemma"``.
    """
    if arch and arch.startswith("gemma"):
        return "gemma"
    texts = set(token_texts)
    if "<|start_header_id|>" in texts and "<|eot_id|>" in texts:
        return "llama3"
    if "<start_of_turn>" in texts and "<end_of_turn>" in texts:
        return "gemma"
    return "chatml"


def attach_chat_template(tokenizer: Any, metadata: Mapping[str, Any]) -> None:
    """Give ``tokenizer`` the file's ``tokenizer.chat_template``, or a built-in one when there is none.

    Sets ``tokenizer.chat_template`` (Jinja source) and ``tokenizer.chat_template_name``
    (the built-in's name, or None when the file has its own template).
    """
    source = metadata.get("tokenizer.chat_template")
    if isinstance(source, str) and source.strip():
        tokenizer.chat_template, tokenizer.chat_template_name = source, None
    else:
        name = builtin_template_for(metadata.get("general.architecture"), tokenizer.vocab.token_to_id)
        tokenizer.chat_template, tokenizer.chat_template_name = BUILTIN_TEMPLATES[name], name


# -- the sandbox ------------------------------------------------------------------------

_budget: contextvars.ContextVar[list[int]] = contextvars.ContextVar("chat_template_budget")


def _raise_exception(message: Any = "") -> None:
    raise ChatTemplateError(f"chat template raised: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | str | None = None,
            separators: Sequence[str] | None = None, sort_keys: bool = False) -> str:
    """Plain ``json.dumps`` (transformers' filter): no HTML escaping, non-ASCII kept."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                      separators=tuple(separators) if separators is not None else None, sort_keys=sort_keys)


def _budgeted_range(*args: int) -> range:
    """``range`` whose items count against the rendering's budget (nested loops too)."""
    r = range(*args)
    budget = _budget.get(None)
    if budget is not None:
        budget[0] -= len(r)
        if budget[0] < 0:
            raise ChatTemplateError(f"chat template used more than {MAX_RANGE_ITEMS:,} range() items in one rendering")
    return r


def _check_time() -> None:
    budget = _budget.get(None)
    if budget is not None:
        budget[3] += 1
        if budget[3] & 255 == 0 and _now() > budget[2]:
            raise ChatTemplateError(f"chat template ran longer than its limit of {budget[4]:g} s (an endless "
                                    "or exponential loop?)")


def _now() -> float:
    import time

    return time.monotonic()


def _loop_guard(iterable: Any):
    """Every ``{% for %}`` iterates through this: each item is a step against the time limit."""
    for item in iterable:
        _check_time()
        yield item


def _concat(*parts: Any) -> str:
    """``a ~ b ~ c`` with its length checked before it is built."""
    limit = _budget.get([0, MAX_OUTPUT_CHARS])[1]
    texts = [p if isinstance(p, str) else str(p) for p in parts]
    if sum(map(len, texts)) > limit:
        raise ChatTemplateError(f"chat template built a string longer than {limit:,} characters with '~'")
    return "".join(texts)


def _check_width(n: Any, what: str) -> None:
    limit = _budget.get([0, MAX_OUTPUT_CHARS])[1]
    if isinstance(n, int) and n > limit:
        raise ChatTemplateError(f"chat template asked for a {what} of {n:,} characters (limit {limit:,})")


def _check_spec(fmt: Any) -> None:
    if isinstance(fmt, str):
        for m in _WIDTH_RE.finditer(fmt):
            for g in m.groups():
                if g and len(g) < 30:
                    _check_width(int(g), "field width")
                elif g:
                    raise ChatTemplateError("chat template used an absurd field width")


def _center(value: Any, width: int = 80) -> str:
    _check_width(width, "centred width")
    return str(value).center(width)


def _indent(value: Any, width: Any = 4, first: bool = False, blank: bool = False) -> str:
    from jinja2.filters import do_indent

    _check_width(width if isinstance(width, int) else len(str(width)), "indent")
    _check_width(len(str(value)) * (width if isinstance(width, int) else len(str(width)) + 1), "indented text")
    return do_indent(value, width, first, blank)


def _format(value: Any, *args: Any, **kwargs: Any) -> str:
    from jinja2.filters import do_format

    _check_spec(value)
    for a in args:
        _check_width(a, "format argument")
    return do_format(value, *args, **kwargs)


def _template_dict(*args: Any, **kwargs: Any) -> dict:
    return dict(*args, **kwargs)


def _make_environment():
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.utils import Namespace

    class TemplateNamespace(Namespace):
        """``namespace(...)`` that refuses attributes starting with ``_``."""

        def __init__(*args: Any, **kwargs: Any):  # same trick as Jinja's: ``self`` may be a keyword
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for name in attrs:
                _check_name(name)
            Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            _check_name(name)
            limit = _budget.get([0, MAX_OUTPUT_CHARS])[1]
            if isinstance(value, (str, list, tuple)) and len(value) > limit:
                raise ChatTemplateError(f"chat template stored a value longer than {limit:,} items")
            Namespace.__setitem__(self, name, value)

    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} starts with '_'")

    class GenerationTag(Extension):
        """``{% generation %}...{% endgeneration %}`` marks the assistant's text (for training masks);
        rendering keeps the body unchanged."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    class ChatEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"+", "*", "**", "%"})

        def wrap_str_format(self, value):
            owner = getattr(value, "__self__", None)
            if isinstance(owner, str):
                _check_spec(owner)
            wrapped = super().wrap_str_format(value)
            if wrapped is None:
                return None

            def checked(*args, **kwargs):
                for a in (*args, *kwargs.values()):
                    _check_width(a, "format argument")
                return wrapped(*args, **kwargs)

            return checked

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's signature)
            _check_time()
            limit = _budget.get([0, MAX_OUTPUT_CHARS])[1]
            for a in (*args, *kwargs.values()):
                if isinstance(a, (str, list, tuple)) and len(a) > limit:
                    raise ChatTemplateError(f"chat template passed a value longer than {limit:,} items")
            owner = getattr(__obj, "__self__", None)
            name = getattr(__obj, "__name__", "")
            if isinstance(owner, str):
                if name in _WIDTH_METHODS:
                    for a in (*args, *kwargs.values()):
                        _check_width(a, f"str.{name} width")
                elif name in ("format", "format_map"):
                    _check_spec(owner)
                    for a in (*args, *kwargs.values()):
                        _check_width(a, "format argument")
                elif name == "join" and args and isinstance(args[0], (list, tuple)):
                    total = sum(len(x) for x in args[0] if isinstance(x, str)) + len(owner) * len(args[0])
                    if total > limit:
                        raise ChatTemplateError(f"chat template joined {total:,} characters (limit {limit:,})")
                elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
                    n = owner.count(args[0]) if args[0] else len(owner) + 1
                    if len(owner) + n * max(0, len(args[1]) - len(args[0])) > limit:
                        raise ChatTemplateError(f"chat template's replace() would exceed {limit:,} characters")
            return super().call(__context, __obj, *args, **kwargs)

        def unsafe_undefined(self, obj, attribute):
            # Jinja returns an Undefined that prints as "" and raises only when used further;
            # refuse at once, so ``{{ x.__class__ }}`` is an error too, not silence.
            raise jinja2.exceptions.SecurityError(
                f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

        def call_binop(self, context, operator, left, right):
            limit = _budget.get([0, MAX_OUTPUT_CHARS])[1]
            if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 \
                    and abs(left) > 1 and right * math.log2(abs(left)) > _MAX_POW_BITS:
                raise ChatTemplateError(f"chat template computed {left} ** {right}: too large")
            if operator == "%" and isinstance(left, str):
                _check_spec(left)
                for a in (right if isinstance(right, tuple) else (right,)):
                    _check_width(a, "format argument")
            if operator == "*" and isinstance(left, int) and isinstance(right, int) \
                    and left.bit_length() + right.bit_length() > _MAX_POW_BITS:
                raise ChatTemplateError("chat template computed a product of more than "
                                        f"{_MAX_POW_BITS} bits: too large")
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > limit:
                        raise ChatTemplateError(f"chat template built a value longer than {limit:,} items")
            result = super().call_binop(context, operator, left, right)
            if isinstance(result, (str, list, tuple)) and len(result) > limit:
                raise ChatTemplateError(f"chat template built a value longer than {limit:,} items")
            return result

    env = ChatEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, GenerationTag])
    env.filters["tojson"] = _tojson
    env.filters.update(center=_center, indent=_indent, format=_format)
    env.globals.pop("lipsum", None)  # unbounded text generator, no template needs it
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, range=_budgeted_range,
                       dict=_template_dict, namespace=TemplateNamespace, zl_loop_guard=_loop_guard, zl_concat=_concat)
    return env


@lru_cache(maxsize=1)
def _environment():
    return _make_environment()


@lru_cache(maxsize=32)
def _compile(source: str):
    import jinja2

    from jinja2 import nodes

    try:
        env = _environment()
        ast = env.parse(source)
        for loop in ast.find_all(nodes.For):  # every loop item is a step against the time limit
            loop.iter = nodes.Call(nodes.Name("zl_loop_guard", "load"), [loop.iter], [], None, None)
        for cat in list(ast.find_all(nodes.Concat)):  # a ~ b: length checked before it is built
            cat.nodes = [nodes.Call(nodes.Name("zl_concat", "load"), cat.nodes, [], None, None)]
        return env.from_string(ast)
    except RecursionError:
        raise ChatTemplateError("chat template nests too deeply to compile") from None
    except jinja2.TemplateSyntaxError as e:
        where = f"line {e.lineno}" if e.lineno else "somewhere"
        raise ChatTemplateError(f"chat template syntax error at {where}: {e.message}") from None
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template cannot be compiled: {e}") from None


def template_source(template: str) -> str:
    """The Jinja source of ``template``: a built-in's text for a name, else ``template`` itself."""
    if not isinstance(template, str):
        raise ChatTemplateError(f"a chat template is a str (Jinja source or a built-in name), "
                                f"got {type(template).__name__}")
    if template in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[template]
    if _NAME_RE.fullmatch(template):
        raise ChatTemplateError(f"unknown built-in chat template {template!r}; built-ins: "
                                f"{', '.join(BUILTIN_TEMPLATES)} (or pass Jinja source)")
    if len(template) > MAX_TEMPLATE_CHARS:
        raise ChatTemplateError(f"chat template of {len(template):,} characters is larger than the "
                                f"limit of {MAX_TEMPLATE_CHARS:,}")
    return template


# -- the data a template sees -------------------------------------------------------------

def plain_data(value: Any, where: str = "value") -> Any:
    """``value`` rebuilt from JSON types only (str, int, float, bool, None, dict, list, tuple).

    Pydantic models (``model_dump``) and dataclasses become dicts; subclasses of
    str/int/float lose their methods; anything else is a ChatTemplateError naming
    where it is. Example: ``plain_data({"a": (1, True)})`` -> ``{"a": (1, True)}``.
    """
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {plain_data(k, where): plain_data(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list):
        return [plain_data(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return tuple(plain_data(v, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain_data(getattr(value, f.name), f"{where}.{f.name}") for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return plain_data(value.model_dump(), where)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return plain_data(value.item(), where)
    raise ChatTemplateError(f"{where} is a {type(value).__name__}; a chat template sees only JSON-like data "
                            "(str, numbers, bool, None, dicts and lists)")


def normalize_messages(messages: Any) -> list[dict]:
    """Messages as plain dicts, ``None`` values dropped, reasoning under ``reasoning_content`` and ``thinking``."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Iterable):
        raise ChatTemplateError(f"messages must be a list of dicts like {{'role': 'user', 'content': 'Hi'}}, "
                                f"got {type(messages).__name__}")
    out = []
    for i, message in enumerate(messages):
        m = plain_data(message, f"messages[{i}]")
        if not isinstance(m, dict):
            raise ChatTemplateError(f"messages[{i}] must be a dict with 'role' and 'content', "
                                    f"got {type(message).__name__}")
        m = {k: v for k, v in m.items() if v is not None}
        reasoning = next((m[k] for k in _REASONING_KEYS if m.get(k) is not None), None)
        if reasoning is not None:
            m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        out.append(m)
    if not out:
        raise ChatTemplateError("the conversation is empty: give at least one message")
    return out


# -- rendering ---------------------------------------------------------------------------

def render_chat_template(template: str, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False,
                         bos_token: str = "", eos_token: str = "", tools: Sequence[Mapping] | None = None,
                         documents: Sequence[Mapping] | None = None, max_chars: int = MAX_OUTPUT_CHARS,
                         max_seconds: float = MAX_RENDER_SECONDS, **extra: Any) -> str:
    """Render ``messages`` through a chat template, as transformers' ``apply_chat_template(tokenize=False)``.

    Args:
        template: Jinja source (a GGUF's ``tokenizer.chat_template``) or a
            built-in name (``"chatml"``, ``"llama2"``, ``"llama3"``, ``"alpaca"``,
            ``"vicuna"``, ``"gemma"``, ``"zephyr"``).
        messages: ``[{"role": "system"|"user"|"assistant"|"tool", "content": str, ...}, ...]``.
        add_generation_prompt: end with the header of the assistant's turn.
        bos_token, eos_token: the texts the template may write for BOS and EOS.
        tools: JSON schemas of functions (``{"type": "function", "function": {...}}``).
        documents: for retrieval templates (``[{"title": ..., "text": ...}]``).
        max_chars: the longest output (and intermediate string or list) allowed.
        max_seconds: the longest a rendering may run (checked at every loop item and call).
        **extra: more template variables (``enable_thinking=False``, ...).

    Returns the prompt text. Raises ChatTemplateError on a syntax error, a
    sandbox refusal (``{{ ''.__class__ }}``), the template's own
    ``raise_exception``, an error while rendering, or output over ``max_chars``.

    Example::

        render_chat_template("gemma", [{"role": "user", "content": "Hi"}], add_generation_prompt=True)
        # -> '<start_of_turn>user\\nHi<end_of_turn>\\n<start_of_turn>model\\n'
    """
    import jinja2

    compiled = _compile(template_source(template))
    context = dict(plain_data(extra, "template variable"))
    if tools is not None:
        for i, tool in enumerate(tools):
            if not isinstance(tool, Mapping):
                raise ChatTemplateError(f"tools[{i}] must be a JSON schema dict, got {type(tool).__name__}")
        tools = plain_data(list(tools), "tools")
    if documents is not None:
        for i, doc in enumerate(documents):
            if not isinstance(doc, Mapping):
                raise ChatTemplateError(f"documents[{i}] must be a dict with 'title' and 'text', "
                                        f"got {type(doc).__name__}")
        documents = plain_data(list(documents), "documents")
    context.update(messages=normalize_messages(messages), tools=tools, documents=documents,
                   add_generation_prompt=bool(add_generation_prompt),
                   bos_token=bos_token or "", eos_token=eos_token or "")
    token = _budget.set([MAX_RANGE_ITEMS, max_chars, _now() + max_seconds, 0, max_seconds])
    try:
        parts, n = [], 0
        for piece in compiled.generate(**context):
            _check_time()
            n += len(piece)
            if n > max_chars:
                raise ChatTemplateError(f"chat template output is longer than the limit of {max_chars:,} characters")
            parts.append(piece)
        return "".join(parts)
    except ChatTemplateError:
        raise
    except jinja2.exceptions.SecurityError as e:
        raise ChatTemplateError(f"chat template refused by the sandbox: {e}") from None
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from None
    except RecursionError:
        raise ChatTemplateError("chat template recursed too deeply") from None
    except (MemoryError, OverflowError) as e:
        raise ChatTemplateError(f"chat template ran out of room: {type(e).__name__}: {e}") from None
    except Exception as e:  # a template's own TypeError, KeyError, ZeroDivisionError...
        raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from None
    finally:
        _budget.reset(token)
