"""A request body (parsed JSON) checked field by field into :class:`GenParams`.

Every wrong field is a 400 naming it (OpenAI's ``param``); fields OpenAI has and this server does
not are a 400 too (``unsupported_parameter``), never silently ignored. Sampler defaults are
llama.cpp server's (temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, penalties off). Beside
OpenAI's fields, llama-server's sampler fields are accepted under its names (``repeat_penalty``,
``repeat_last_n``, ``dry_*``, ``typical_p``, ``top_n_sigma``, ``xtc_*``, ``dynatemp_*``,
``mirostat*``) and so is constrained output: OpenAI's ``response_format`` (``json_object``,
``json_schema``) or llama-server's ``grammar`` (GBNF) / ``json_schema``; the grammar is parsed
here, so a malformed one is a 400 naming its line and column (or the schema path).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from numbers import Integral, Real

from .errors import APIError, unsupported

# parameters OpenAI defines that this server rejects with a clear 400 until the samplers have them
UNSUPPORTED = ("tools", "tool_choice",
               "functions", "function_call", "best_of", "suffix", "parallel_tool_calls", "audio", "modalities",
               "prediction", "reasoning_effort", "web_search_options")
# parameters accepted and ignored because they change nothing here (documented in the README)
IGNORED = ("user", "store", "metadata", "service_tier")
MAX_STOP = 4           # OpenAI allows up to 4 stop sequences
MAX_LOGIT_BIAS = 300   # OpenAI's limit on logit_bias entries
MAX_GRAMMAR_CHARS = 64 * 1024  # a GBNF grammar or a JSON schema's text
MAX_DRY_BREAKERS = 32
# llama-server's sampler fields: body name -> (SamplerConfig field, "int" | "num", lo, hi); the exact rules
# (open bounds, -1 meaning "the context") are SamplerConfig's, whose ConfigError becomes a 400 too
SAMPLER_FIELDS = {
    "presence_penalty": ("presence_penalty", "num", -2.0, 2.0),
    "frequency_penalty": ("frequency_penalty", "num", -2.0, 2.0),
    "repeat_penalty": ("repeat_penalty", "num", 0.0, 100.0),
    "repeat_last_n": ("penalty_last_n", "int", -1, 1 << 20),
    "dry_multiplier": ("dry_multiplier", "num", 0.0, 100.0),
    "dry_base": ("dry_base", "num", 0.0, 100.0),
    "dry_allowed_length": ("dry_allowed_length", "int", 0, 1 << 20),
    "dry_penalty_last_n": ("dry_penalty_last_n", "int", -1, 1 << 20),
    "typical_p": ("typical_p", "num", 0.0, 1.0),
    "top_n_sigma": ("top_n_sigma", "num", -1e9, 1e9),
    "xtc_probability": ("xtc_probability", "num", 0.0, 1.0),
    "xtc_threshold": ("xtc_threshold", "num", 0.0, 1.0),
    "dynatemp_range": ("dynatemp_range", "num", 0.0, 100.0),
    "dynatemp_exponent": ("dynatemp_exponent", "num", 0.0, 100.0),
    "mirostat": ("mirostat", "int", 0, 2),
    "mirostat_tau": ("mirostat_tau", "num", 0.0, 100.0),
    "mirostat_eta": ("mirostat_eta", "num", 0.0, 100.0),
}


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
    sampler: dict = field(default_factory=dict)  # SamplerConfig fields beyond the four above (penalties, DRY...)
    grammar: str | None = None                   # GBNF text the output must match (parsed already)

    def sampler_kwargs(self) -> dict:
        """What :func:`..inference.generation.make_sampler` takes after its five positional settings."""
        return dict(self.sampler)


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


def _sampler_fields(body) -> dict:
    out = {}
    for name, (cfg_name, kind, lo, hi) in SAMPLER_FIELDS.items():
        if body.get(name) is None:
            continue
        out[cfg_name] = _integer(body, name, None, lo, hi) if kind == "int" else _number(body, name, None, lo, hi)
    v = body.get("dry_sequence_breakers")
    if v is not None:
        # llama-server refuses an empty list too (it would silently turn every breaker off)
        if (not isinstance(v, list) or not 0 < len(v) <= MAX_DRY_BREAKERS
                or not all(isinstance(x, str) and 0 < len(x) <= 64 for x in v)):
            raise APIError(400, f"'dry_sequence_breakers' must be a list of 1 to {MAX_DRY_BREAKERS} non-empty "
                                f"strings of at most 64 characters", param="dry_sequence_breakers")
        out["dry_sequence_breakers"] = tuple(v)
    return out


def _check_sampler(p: GenParams) -> None:
    """SamplerConfig's own rules (e.g. top_p must be > 0) as a 400 naming the field."""
    from ..foundation.errors import ConfigError
    from ..inference.sampling import SamplerConfig

    try:
        SamplerConfig(temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, min_p=p.min_p, seed=p.seed,
                      **p.sampler)
    except ConfigError as e:
        cfg_name = str(e).split(" ", 1)[0]
        param = next((n for n, spec in SAMPLER_FIELDS.items() if spec[0] == cfg_name), cfg_name)
        raise APIError(400, f"'{param}': {e}", param=param) from None


def _schema_grammar(schema, param: str) -> str:
    from ..inference.json_schema import SchemaError, json_object_gbnf, json_schema_to_gbnf

    if schema is None:
        return json_object_gbnf()
    if not isinstance(schema, (dict, bool)):
        raise APIError(400, f"'{param}' must be a JSON Schema (an object)", param=param)
    if len(json.dumps(schema)) > MAX_GRAMMAR_CHARS:
        raise APIError(400, f"'{param}' is longer than {MAX_GRAMMAR_CHARS} characters", param=param)
    try:
        return json_schema_to_gbnf(schema)
    except SchemaError as e:
        raise APIError(400, f"'{param}': {e}", param=param, code="invalid_schema") from None
    except RecursionError:
        raise APIError(400, f"'{param}': the schema nests too deeply", param=param, code="invalid_schema") from None


def _grammar(body) -> str | None:
    """The GBNF the output must match, from ``response_format``, ``grammar`` or ``json_schema`` (at most one)."""
    from ..inference.grammar import Grammar, GrammarError

    given = [n for n in ("response_format", "grammar", "json_schema") if body.get(n) is not None]
    rf = body.get("response_format")
    if rf is not None and not (isinstance(rf, dict) and rf.get("type") in ("text", "json_object", "json_schema")):
        raise APIError(400, "'response_format' must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or "
                            "{\"type\": \"json_schema\", \"json_schema\": {\"name\": ..., \"schema\": {...}}}",
                       param="response_format")
    if rf is not None and rf["type"] == "text":
        given.remove("response_format")
    if len(given) > 1:
        raise APIError(400, f"give at most one of {' / '.join(given)}", param=given[1])
    if not given:
        return None
    what = given[0]
    if what == "grammar":
        gbnf = body["grammar"]
        if not isinstance(gbnf, str) or not gbnf.strip():
            raise APIError(400, "'grammar' must be a non-empty GBNF string", param="grammar")
        if len(gbnf) > MAX_GRAMMAR_CHARS:
            raise APIError(400, f"'grammar' is longer than {MAX_GRAMMAR_CHARS} characters", param="grammar")
    elif what == "json_schema":
        gbnf = _schema_grammar(body["json_schema"], "json_schema")
    elif rf["type"] == "json_object":
        gbnf = _schema_grammar(rf.get("schema"), "response_format")
    else:
        js = rf.get("json_schema")
        if not isinstance(js, dict) or "schema" not in js:
            raise APIError(400, "'response_format' of type json_schema needs 'json_schema': {\"name\": ..., "
                                "\"schema\": {...}}", param="response_format")
        gbnf = _schema_grammar(js["schema"], "response_format")
    try:
        Grammar.parse(gbnf)
    except GrammarError as e:
        raise APIError(400, f"'{what}': {e}", param=what, code="invalid_grammar") from None
    except RecursionError:
        raise APIError(400, f"'{what}': the grammar nests too deeply", param=what, code="invalid_grammar") from None
    return gbnf


def parse_common(body: dict, model: str, n_vocab: int, chat: bool) -> GenParams:
    """The fields /v1/completions and /v1/chat/completions share, checked."""
    for name in UNSUPPORTED:
        v = body.get(name)
        harmless = v in (None, 0, [], {})
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
                  logit_bias=_logit_bias(body, n_vocab),
                  sampler=_sampler_fields(body), grammar=_grammar(body))
    if p.seed is not None:
        p.seed %= 2 ** 64
    _check_sampler(p)
    if chat:
        if _boolean(body, "logprobs"):
            p.logprobs = _integer(body, "top_logprobs", 0, 0, 20)
        elif body.get("top_logprobs") is not None:
            raise APIError(400, "'top_logprobs' needs logprobs=true", param="top_logprobs")
    else:
        p.logprobs = _integer(body, "logprobs", None, 0, 5)
        p.echo = _boolean(body, "echo")
    return p
