"""The server's sampler and grammar parameters, through the official ``openai`` client.

Oracles: the library's own generation with the same settings (``model.generate`` -- its sampler chain
is held against llama.cpp's in tests/test_sampler_chain*.py, its grammar masks against llama.cpp's
grammar sampler in tests/test_grammar.py); ``jsonschema`` for the structured outputs; the grammar's
language written out by hand for GBNF. Every request has a timeout.
"""

from __future__ import annotations

import json
import os

import pytest

from oracles import require_module

from zigllama_lib.serve.process import ServerProcess

openai = require_module("openai")
jsonschema = require_module("jsonschema")

SMOLLM = "smollm2-135m-instruct"
N_CTX = 512
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def server():
    with ServerProcess.zigllama(["--model", SMOLLM, "--n-ctx", str(N_CTX), "--threads", "2"],
                                env=dict(os.environ)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=TIMEOUT_S, max_retries=0)


@pytest.fixture(scope="module")
def model():
    import zigllama_lib as zl

    return zl.load(SMOLLM, n_ctx=N_CTX, progress=False)


SAMPLER_CASES = {
    "penalties": dict(repeat_penalty=1.3, presence_penalty=0.6, frequency_penalty=0.4, repeat_last_n=32),
    "dry": dict(dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2, dry_penalty_last_n=-1),
    "typical-xtc": dict(typical_p=0.9, xtc_probability=0.5, xtc_threshold=0.1),
    "top-n-sigma-dynatemp": dict(top_n_sigma=1.5, dynatemp_range=0.3, dynatemp_exponent=1.2),
    "mirostat2": dict(mirostat=2, mirostat_tau=4.0, mirostat_eta=0.2),
    "mirostat1": dict(mirostat=1, mirostat_tau=5.0, mirostat_eta=0.1),
}
LIBRARY_NAMES = {"repeat_last_n": "penalty_last_n"}  # llama-server's name -> SamplerConfig's


@pytest.mark.parametrize("case", SAMPLER_CASES)
def test_sampler_parameters_give_the_library_tokens(client, model, case):
    """Seeded sampling with llama-server's extra fields: the served text is the library's with the same
    settings (so every field reached the sampler chain, in its order, with the prompt counted)."""
    opts = SAMPLER_CASES[case]
    prompt = "Write a list of fruits: apple, banana, apple, banana,"
    r = client.completions.create(model=SMOLLM, prompt=prompt, max_tokens=40, temperature=0.9, seed=1234,
                                  extra_body=opts)
    lib = {LIBRARY_NAMES.get(k, k): v for k, v in opts.items()}
    expected = "".join(model.generate(prompt, max_tokens=40, temperature=0.9, top_k=40, top_p=0.95, min_p=0.05,
                                      seed=1234, **lib))
    assert r.choices[0].text == expected


def test_penalties_change_the_greedy_text(client):
    """A strong repeat penalty really acts: the greedy continuation of a repetitive prompt differs."""
    prompt = "apple, banana, apple, banana, apple, banana,"
    plain = client.completions.create(model=SMOLLM, prompt=prompt, max_tokens=16, temperature=0).choices[0].text
    penalised = client.completions.create(model=SMOLLM, prompt=prompt, max_tokens=16, temperature=0,
                                          extra_body={"repeat_penalty": 2.0}).choices[0].text
    assert plain != penalised


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "colour": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "minItems": 1, "maxItems": 3},
        "nickname": {"type": "string", "maxLength": 12},
    },
    "required": ["name", "age", "colour", "tags"],
    "additionalProperties": False,
}


def test_response_format_json_schema_validates(client):
    """OpenAI's structured outputs: every finished answer validates against the schema (jsonschema)."""
    finished = 0
    for seed in range(8):
        r = client.chat.completions.create(
            model=SMOLLM, temperature=1.0, seed=seed, max_tokens=200,
            messages=[{"role": "user", "content": "Describe a person as JSON."}],
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA,
                                                                    "strict": True}})
        choice = r.choices[0]
        if choice.finish_reason == "stop":
            jsonschema.validate(json.loads(choice.message.content), SCHEMA)
            finished += 1
    assert finished >= 6, f"only {finished} of 8 answers finished within 200 tokens"


def test_json_object_and_llama_server_json_schema(client):
    r = client.chat.completions.create(model=SMOLLM, temperature=0.8, seed=3, max_tokens=120,
                                       messages=[{"role": "user", "content": "Give me a JSON object."}],
                                       response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    schema = {"type": "integer", "minimum": 10, "maximum": 99}
    r = client.completions.create(model=SMOLLM, prompt="A two-digit number:", temperature=1.0, seed=5,
                                  max_tokens=8, extra_body={"json_schema": schema})
    jsonschema.validate(json.loads(r.choices[0].text), schema)


YES_NO = 'root ::= "yes" | "no"'


@pytest.mark.parametrize("seed", range(4))
def test_gbnf_grammar_stream_and_not(client, seed):
    body = dict(model=SMOLLM, prompt="Is the sky blue? Answer:", temperature=1.0, seed=seed, max_tokens=8,
                extra_body={"grammar": YES_NO})
    text = client.completions.create(**body).choices[0].text
    assert text in ("yes", "no")
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **body))
    assert streamed == text


def test_grammar_dead_end_is_a_clear_400_and_the_server_goes_on(client):
    """After "a" the grammar needs a NUL byte, which no token can produce (llama.cpp's matcher ends text
    at NUL): the request ends with an error naming the dead end instead of looping."""
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=SMOLLM, prompt="Say a:", temperature=0, max_tokens=8,
                                  extra_body={"grammar": 'root ::= "a" "\\x00" "b"'})
    assert "grammar admits no token" in str(e.value)
    ok = client.completions.create(model=SMOLLM, prompt="Hello", temperature=0, max_tokens=4)
    assert ok.choices[0].finish_reason in ("length", "stop")


def test_malformed_grammar_and_schema_name_where(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=SMOLLM, prompt="x", max_tokens=4,
                                  extra_body={"grammar": 'root ::= "a"\nitem ::= [a-z\n'})
    assert "line 2, column 10" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=SMOLLM, max_tokens=4, messages=[{"role": "user", "content": "x"}],
                                       response_format={"type": "json_schema", "json_schema": {
                                           "name": "bad", "schema": {"type": "object", "properties": {
                                               "n": {"type": "integer", "minimum": 5, "maximum": 1}}}}})
    assert "n" in str(e.value) and e.value.status_code == 400
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=SMOLLM, prompt="x", max_tokens=4,
                                  extra_body={"grammar": YES_NO, "json_schema": {"type": "integer"}})
