"""The server's parts without a socket: stop strings, request checking, the queue limit.

StopMatcher is checked against the obvious definition (stop at the first piece that completes a
stop string; cut the text so far before its earliest occurrence) on every way of splitting texts
into pieces; params against OpenAI's documented ranges.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time

import pytest

from zigllama_lib.serve.errors import APIError
from zigllama_lib.serve.params import parse_common
from zigllama_lib.serve.stop import StopMatcher


def expected_cut(pieces: list[str], stops: list[str]) -> tuple[str, bool]:
    """Generation stops after the first piece whose arrival makes some stop string appear; the
    answer is the text so far, cut before the earliest occurrence of any stop string."""
    text = ""
    for p in pieces:
        text += p
        hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
        if hits:
            return text[:min(hits)], True
    return text, False


def run_matcher(pieces: list[str], stops: list[str]) -> tuple[str, bool, list[str]]:
    m, out = StopMatcher(stops), []
    for p in pieces:
        text, stopped = m.push(p)
        out.append(text)
        if stopped:
            return "".join(out), True, out
    out.append(m.flush())
    return "".join(out), False, out


def splits(text: str, n_cuts: int):
    for cuts in itertools.combinations(range(1, len(text)), n_cuts):
        bounds = (0, *cuts, len(text))
        yield [text[a:b] for a, b in zip(bounds, bounds[1:])]


@pytest.mark.parametrize("text,stops", [
    ("Hello User: hi", ["User:"]),
    ("abcabd", ["abd"]),            # a false start that overlaps the real match
    ("aaab", ["aab"]),
    ("no match here", ["xyz", "\n\n"]),
    ("one\n\ntwo", ["\n\n", "two"]),   # the earliest of several
    ("stop at the end", ["end"]),
    ("ababab", ["bab", "abab"]),
    ("héllo wörld", ["ö"]),
])
def test_every_split_gives_the_cut_of_the_whole_text(text, stops):
    for n_cuts in range(min(3, len(text) - 1) + 1):
        for pieces in splits(text, n_cuts):
            got, stopped, _ = run_matcher(pieces, stops)
            assert (got, stopped) == expected_cut(pieces, stops), pieces


def test_random_texts_and_splits():
    rng = random.Random(7)
    for _ in range(3000):
        text = "".join(rng.choice("ab\n") for _ in range(rng.randint(0, 14)))
        stops = ["".join(rng.choice("ab\n") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, max(0, len(text) - 1)))) if len(text) > 1 else []
        bounds = (0, *cuts, len(text))
        pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
        assert run_matcher(pieces, stops)[:2] == expected_cut(pieces, stops), (text, stops, pieces)


def test_text_that_cannot_start_a_stop_is_not_held_back():
    m = StopMatcher(["User:"])
    assert m.push("Hello ") == ("Hello ", False)
    assert m.push("Us") == ("", False)      # might become "User:"
    assert m.push("ually") == ("Usually", False)


def test_no_stops_passes_everything_through():
    _, _, out = run_matcher(["a", "b", ""], [])
    assert out == ["a", "b", "", ""]


# -- params --------------------------------------------------------------------------------
def parse(body, chat=True):
    return parse_common(body, "m", 1000, chat)


def test_defaults_are_llama_servers_and_openais():
    p = parse({})
    assert (p.temperature, p.top_k, p.top_p, p.min_p, p.max_tokens, p.stream) == (0.8, 40, 0.95, 0.05, None, False)
    assert parse({}, chat=False).max_tokens == 16
    assert parse({"max_completion_tokens": 7, "max_tokens": 3}).max_tokens == 7


@pytest.mark.parametrize("body,param", [
    ({"temperature": -0.1}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"top_p": 1.5}, "top_p"), ({"top_k": -1}, "top_k"), ({"top_k": True}, "top_k"),
    ({"min_p": 2}, "min_p"), ({"seed": 1.5}, "seed"), ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": True}}, "stream_options"), ({"stop": ["a"] * 5}, "stop"),
    ({"logit_bias": {"5": 101}}, "logit_bias"), ({"logit_bias": {"x": 1}}, "logit_bias"),
    ({"logit_bias": {"1000": 1}}, "logit_bias"), ({"top_logprobs": 2}, "top_logprobs"),
    ({"frequency_penalty": 3}, "frequency_penalty"), ({"tools": [{"type": "function"}]}, "tools"),
    ({"presence_penalty": "a lot"}, "presence_penalty"), ({"repeat_penalty": -1}, "repeat_penalty"),
    ({"repeat_penalty": 0}, "repeat_penalty"),  # SamplerConfig's open bound: (0, inf)
    ({"repeat_last_n": -2}, "repeat_last_n"), ({"dry_multiplier": float("inf")}, "dry_multiplier"),
    ({"dry_allowed_length": 1.5}, "dry_allowed_length"), ({"dry_sequence_breakers": [1]}, "dry_sequence_breakers"),
    ({"dry_sequence_breakers": "\n"}, "dry_sequence_breakers"), ({"dry_sequence_breakers": []}, "dry_sequence_breakers"),
    ({"typical_p": 0}, "typical_p"), ({"typical_p": float("nan")}, "typical_p"),
    ({"xtc_probability": 1.5}, "xtc_probability"), ({"dynatemp_range": -1}, "dynatemp_range"),
    ({"mirostat": 3}, "mirostat"), ({"mirostat_tau": -1}, "mirostat_tau"), ({"top_p": 0}, "top_p"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer",
                                                                                          "minimum": 5,
                                                                                          "maximum": 1}}}},
     "response_format"),
    ({"grammar": 'root ::= "a'}, "grammar"), ({"grammar": ""}, "grammar"),
    ({"grammar": 'root ::= "a"', "response_format": {"type": "json_object"}}, "grammar"),
    ({"json_schema": {"type": "nonsense"}}, "json_schema"),
    ({"n": 3}, "n"), ({"max_tokens": -5}, "max_tokens"),
])
def test_bad_fields_name_themselves(body, param):
    with pytest.raises(APIError) as e:
        parse(body)
    assert e.value.status == 400 and e.value.param == param and param in e.value.message


def test_completion_logprobs_range():
    assert parse({"logprobs": 5}, chat=False).logprobs == 5
    with pytest.raises(APIError):
        parse({"logprobs": 6}, chat=False)
    assert parse({"logprobs": True, "top_logprobs": 20}).logprobs == 20


def test_harmless_values_of_unsupported_fields_pass():
    parse({"tools": [], "n": 1, "user": "someone", "response_format": {"type": "text"}})


def test_sampler_fields_reach_the_sampler_config():
    """llama-server's names map onto SamplerConfig's fields; the result builds a valid chain."""
    from zigllama_lib.inference.sampling import SamplerConfig

    p = parse({"presence_penalty": 0.5, "frequency_penalty": -0.5, "repeat_penalty": 1.3, "repeat_last_n": -1,
               "dry_multiplier": 0.8, "dry_base": 2.0, "dry_allowed_length": 3, "dry_penalty_last_n": 128,
               "dry_sequence_breakers": ["\n", "."], "typical_p": 0.9, "top_n_sigma": 2.0,
               "xtc_probability": 0.5, "xtc_threshold": 0.2, "dynatemp_range": 0.3, "dynatemp_exponent": 1.5,
               "mirostat": 2, "mirostat_tau": 4.0, "mirostat_eta": 0.2})
    cfg = SamplerConfig(**p.sampler_kwargs())
    assert (cfg.presence_penalty, cfg.frequency_penalty, cfg.repeat_penalty, cfg.penalty_last_n) == (0.5, -0.5, 1.3, -1)
    assert (cfg.dry_multiplier, cfg.dry_base, cfg.dry_allowed_length, cfg.dry_penalty_last_n) == (0.8, 2.0, 3, 128)
    assert cfg.dry_sequence_breakers == ("\n", ".") and (cfg.typical_p, cfg.top_n_sigma) == (0.9, 2.0)
    assert (cfg.xtc_probability, cfg.xtc_threshold, cfg.dynatemp_range, cfg.dynatemp_exponent) == (0.5, 0.2, 0.3, 1.5)
    assert (cfg.mirostat, cfg.mirostat_tau, cfg.mirostat_eta) == (2, 4.0, 0.2)
    assert parse({}).sampler_kwargs() == {} and parse({}).grammar is None


def test_grammar_fields_give_gbnf():
    from zigllama_lib.inference.grammar import Grammar

    assert parse({"grammar": 'root ::= "yes" | "no"'}).grammar == 'root ::= "yes" | "no"'
    for body in ({"response_format": {"type": "json_object"}},
                 {"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "integer"}}}},
                 {"json_schema": {"type": "object", "properties": {"a": {"type": "string"}}}}):
        Grammar.parse(parse(body).grammar)  # a GBNF our parser (and so the matcher) takes


def test_grammar_errors_name_line_and_column():
    with pytest.raises(APIError) as e:
        parse({"grammar": 'root ::= "a"\nitem ::= [a-z\n'})
    assert e.value.status == 400 and "line 2, column 10" in e.value.message and e.value.code == "invalid_grammar"
    with pytest.raises(APIError) as e:
        parse({"json_schema": {"type": "object", "properties": {"a": {"type": "integer", "minimum": 3,
                                                                     "maximum": 1}}}})
    assert e.value.status == 400 and "a" in e.value.message and e.value.code == "invalid_schema"


# -- the queue limit (503) and the CLI's model ids ----------------------------------------
def test_a_full_queue_is_a_503_with_retry_after(smollm):
    from fastapi.testclient import TestClient

    from zigllama_lib.serve.app import create_app

    app = create_app({"m": smollm}, max_queue=1)
    with TestClient(app) as c:
        ids = smollm.tokenizer.encode("Once upon a time")
        blocker = app.state.engine.submit(smollm, ids, parse_common({"max_tokens": 400}, "m", smollm.n_vocab, False),
                                          asyncio.new_event_loop())
        try:
            r = c.post("/v1/completions", json={"model": "m", "prompt": "Hi", "max_tokens": 1})
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["type"] == "server_error" and "busy" in r.json()["error"]["message"]
        finally:
            blocker.cancel()
        for _ in range(200):
            if app.state.engine.depth == 0:
                break
            time.sleep(0.05)
        assert c.post("/v1/completions", json={"model": "m", "prompt": "Hi", "max_tokens": 1}).status_code == 200


def test_model_ids_are_registry_names_or_file_stems(tmp_path):
    from zigllama_lib.serve.app import model_id

    assert model_id("smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert model_id(tmp_path / "My-Model.Q4_0.gguf") == "My-Model.Q4_0"


def test_serving_one_id_twice_is_refused(capsys):
    from zigllama_lib.cli import main

    assert main(["serve", "--model", "smollm2-135m-instruct", "--model", "smollm2-135m-instruct",
                 "--n-ctx", "64"]) == 2
    assert "already being served" in capsys.readouterr().err
