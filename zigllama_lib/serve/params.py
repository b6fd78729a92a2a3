"""A request body (parsed JSON) checked field by field into :class:`GenParams`.

Every wrong field is a 400 naming it (OpenAI's ``param``); fields OpenAI has and the samplers do
not have yet are a 400 too (``unsupported_parameter``), never silently ignored. Sampler defaults
are llama.cpp server's (temperature 0.8, top_k 40, top_p 0.95, min_p 0.05).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Integral, Real

from .errors import APIError, unsupported

# parameters OpenAI defines that this server rejects with a clear 400 until the samplers have them
UNSUPPORTED = ("presence_penalty", "frequency_penalty", "response_format", "tools", "tool_choice",
               "functions", "function_call", "best_of", "suffix", "parallel_tool_calls", "audio", "modalities",
               "prediction", "reasoning_effort", "web_search_options")
# parameters accepted and ignored because they change nothing here (documented in the README)
IGNORED = ("user", "store", "metadata", "service_tier")
MAX_STOP = 4           # OpenAI allows up to 4 stop sequences
MAX_LOGIT_BIAS = 300   # OpenAI's limit on logit_bias entries


@dataclass
class GenParams:
    model: str
    max_tokens: int | None
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None  # how many alternatives per token (0 = just the chosen one); None = off
    logit_bias: dict[int, float] = field(default_factory=dict)
    echo: bool = False


def _is_int(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)


def _number(body, name, default, lo, hi):
    v = body.get(name)
    if v is None:
        return default
    if not _is_num(v) or not lo <= v <= hi:
        raise APIError(400, f"'{name}' must be a number in [{lo}, {hi}], got {v!r}", param=name)
    return float(v)


def _integer(body, name, default, lo, hi=None):
    v = body.get(name)
    if v is None:
        return default
    if not _is_int(v) or v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise APIError(400, f"'{name}' must be an integer {rng}, got {v!r}", param=name)
    return int(v)


def _boolean(body, name, default=False):
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise APIError(400, f"'{name}' must be a boolean, got {v!r}", param=name)
    return v


def _stop(body) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > MAX_STOP:
        raise APIError(400, f"'stop' must be a string or a list of at most {MAX_STOP} strings", param="stop")
    return [s for s in stops if s]


def _logit_bias(body, n_vocab: int) -> dict[int, float]:
    v = body.get("logit_bias")
    if v is None:
        return {}
    if not isinstance(v, dict) or len(v) > MAX_LOGIT_BIAS:
        raise APIError(400, f"'logit_bias' must be an object of at most {MAX_LOGIT_BIAS} token ids",
                       param="logit_bias")
    out = {}
    for key, b in v.items():
        try:
            tid = int(key)
        except (TypeError, ValueError):
            raise APIError(400, f"'logit_bias' key {key!r} is not a token id", param="logit_bias") from None
        if not 0 <= tid < n_vocab:
            raise APIError(400, f"'logit_bias' token id {tid} is not in [0, {n_vocab})", param="logit_bias")
        if not _is_num(b) or not -100 <= b <= 100:
            raise APIError(400, f"'logit_bias' value for token {tid} must be a number in [-100, 100], got {b!r}",
                           param="logit_bias")
        out[tid] = float(b)
    return out


def parse_common(body: dict, model: str, n_vocab: int, chat: bool) -> GenParams:
    """The fields /v1/completions and /v1/chat/completions share, checked."""
    for name in UNSUPPORTED:
        v = body.get(name)
        harmless = v in (None, 0, [], {}) or (name == "response_format" and v == {"type": "text"})
        if not harmless:
            raise unsupported(name)
    n = body.get("n")
    if n is not None and n != 1:
        raise unsupported("n", "only n=1 (one choice per request) is supported")
    max_tokens = _integer(body, "max_tokens", None, 0)
    if chat:
        max_tokens = _integer(body, "max_completion_tokens", max_tokens, 0)
    elif max_tokens is None:
        max_tokens = 16  # OpenAI's default for completions
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise APIError(400, "'stream_options' must be an object", param="stream_options")
    stream = _boolean(body, "stream")
    if opts and not stream:
        raise APIError(400, "'stream_options' is only allowed with stream=true", param="stream_options")
    p = GenParams(model=model, max_tokens=max_tokens,
                  temperature=_number(body, "temperature", 0.8, 0.0, 2.0),
                  top_p=_number(body, "top_p", 0.95, 0.0, 1.0),
                  top_k=_integer(body, "top_k", 40, 0),
                  min_p=_number(body, "min_p", 0.05, 0.0, 1.0),
                  seed=_integer(body, "seed", None, -(2 ** 63), 2 ** 64 - 1),
                  stop=_stop(body), stream=stream,
                  include_usage=_boolean(opts or {}, "include_usage"),
                  logit_bias=_logit_bias(body, n_vocab))
    if p.seed is not None:
        p.seed %= 2 ** 64
    if chat:
        if _boolean(body, "logprobs"):
            p.logprobs = _integer(body, "top_logprobs", 0, 0, 20)
        elif body.get("top_logprobs") is not None:
            raise APIError(400, "'top_logprobs' needs logprobs=true", param="top_logprobs")
    else:
        p.logprobs = _integer(body, "logprobs", None, 0, 5)
        p.echo = _boolean(body, "echo")
    return p
