"""The server's sampler and grammar parameters, through the official ``openai`` client.

Oracles: the library's own generation with the same settings (``model.generate`` -- its sampler chain
is held against llama.cpp's in tests/test_sampler_chain*.py, its grammar masks against llama.cpp's
grammar sampler in tests/test_grammar.py); llama.cpp end to end: its own logits through its own
sampler chain in llama-server's order, the prompt accepted into the chain as llama-server does;
``jsonschema`` for the structured outputs; the grammar's language written out by hand for GBNF.
Every request has a timeout.
"""

from __future__ import annotations

import json
import os

import pytest

from oracles import require_module
from test_sampler_chain_llama import llama_chain

from zigllama_lib.inference.sampling import SamplerConfig
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



# every new field: a bad value is a 400 whose ``param`` names it, and the server answers the next request
BAD_VALUES = [
    ("presence_penalty", 2.5), ("presence_penalty", "high"), ("frequency_penalty", -3), ("repeat_penalty", 0),
    ("repeat_penalty", [1.1]), ("repeat_last_n", -2), ("repeat_last_n", 1.5), ("dry_multiplier", -0.1),
    ("dry_base", "x"), ("dry_allowed_length", -1), ("dry_penalty_last_n", -3), ("dry_sequence_breakers", [1]),
    ("dry_sequence_breakers", []), ("dry_sequence_breakers", "\n"), ("typical_p", 0), ("typical_p", 1.5),
    ("top_n_sigma", "wide"), ("xtc_probability", 1.5), ("xtc_threshold", -0.1), ("dynatemp_range", -1),
    ("dynatemp_exponent", True), ("mirostat", 3), ("mirostat", 1.0), ("mirostat_tau", -1),
    ("mirostat_eta", "fast"), ("grammar", 5), ("grammar", ""), ("json_schema", "an object"),
    ("json_schema", {"type": "integer", "minimum": 5, "maximum": 1}), ("response_format", {"type": "xml"}),
    ("response_format", {"type": "json_schema"}),
]


@pytest.mark.parametrize("name, value", BAD_VALUES, ids=lambda v: repr(v)[:24])
def test_bad_value_is_a_400_naming_the_field(client, name, value):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=SMOLLM, prompt="Hello", max_tokens=2, extra_body={name: value})
    assert e.value.status_code == 400 and e.value.param == name and name in str(e.value)
    ok = client.completions.create(model=SMOLLM, prompt="Hello", max_tokens=2, temperature=0)
    assert ok.choices[0].finish_reason in ("length", "stop")


def test_nan_is_a_400_not_a_500(server):
    """NaN is not JSON: the body is refused before any field is read."""
    httpx = require_module("httpx")
    r = httpx.post(server.url + "/v1/completions", timeout=TIMEOUT_S, headers={"content-type": "application/json"},
                   content=b'{"model": "%s", "prompt": "Hi", "typical_p": NaN}' % SMOLLM.encode())
    assert r.status_code == 400 and "NaN" in r.json()["error"]["message"]


# llama.cpp end to end. llama-cpp-python's high-level create_completion is no oracle for penalties:
# its sampler never hears the prompt (it penalises the generated tokens only; checked: it equals the
# chain below with the prompt left out), while llama-server accepts every prompt token into the
# chain first. So the oracle is the low-level chain, llama-server's order (test_sampler_chain_llama's
# llama_chain), over llama.cpp's own logits -- which our "llama.cpp" numerics reproduce bit for bit on
# the pinned build (tests/test_oracle_build.py), so even seeded draws must agree token for token.
# repeat_last_n / dry_penalty_last_n -1 mean "the context" (N_CTX) on both sides.
ORACLE_CASES = {
    "greedy-repeat": (dict(temperature=0.0), dict(repeat_penalty=1.3)),
    "greedy-presence-frequency-context": (dict(temperature=0.0),
                                          dict(presence_penalty=0.6, frequency_penalty=0.4, repeat_last_n=-1)),
    "seeded-penalties": (dict(temperature=0.9, seed=11), dict(repeat_penalty=1.2, frequency_penalty=0.3,
                                                              repeat_last_n=16)),
    "seeded-dry": (dict(temperature=0.9, seed=12), dict(dry_multiplier=0.8, dry_allowed_length=2,
                                                        dry_penalty_last_n=-1)),
    "seeded-typical-xtc-sigma": (dict(temperature=1.0, seed=13), dict(typical_p=0.9, xtc_probability=0.5,
                                                                      xtc_threshold=0.1, top_n_sigma=2.0)),
    "seeded-dynatemp": (dict(temperature=0.8, seed=14), dict(dynatemp_range=0.4, dynatemp_exponent=1.3)),
    "seeded-mirostat1": (dict(temperature=1.0, seed=15), dict(mirostat=1, mirostat_tau=4.0)),
    "seeded-mirostat2": (dict(temperature=0.9, seed=16), dict(mirostat=2, mirostat_tau=3.0, mirostat_eta=0.2)),
}
ORACLE_TOKENS = 40


def llama_cpp_tokens(lc, path, ids, cfg: SamplerConfig, n: int) -> list[int]:
    """llama.cpp's continuation of ``ids`` with ``cfg``'s chain, stopping before end-of-generation."""
    llm = lc.Llama(model_path=str(path), n_ctx=N_CTX, n_threads=2, verbose=False)
    chain = None
    try:
        vocab = lc.llama_model_get_vocab(llm.model)
        chain = llama_chain(lc, vocab, cfg, llm.n_vocab())
        for t in ids:  # llama-server: common_sampler_accept(prompt token, accept_grammar=false)
            lc.llama_sampler_accept(chain, t)
        llm.eval(list(ids))
        out = []
        for _ in range(n):
            t = lc.llama_sampler_sample(chain, llm.ctx, -1)  # applies the chain, then accepts t
            if lc.llama_vocab_is_eog(vocab, t):
                break
            out.append(t)
            llm.eval([t])
        return out
    finally:
        if chain is not None:
            lc.llama_sampler_free(chain)
        llm.close()


@pytest.mark.oracle
@pytest.mark.parametrize("case", ORACLE_CASES)
def test_served_tokens_are_llama_cpps(client, model, llama_cpp, smollm_path, case):
    openai_fields, extra = ORACLE_CASES[case]
    ids = model.tokenizer.encode("apple, banana, apple, banana, apple, banana, apple,", add_special=True)
    r = client.completions.create(model=SMOLLM, prompt=ids, max_tokens=ORACLE_TOKENS, extra_body=extra,
                                  **openai_fields)
    lib = {LIBRARY_NAMES.get(k, k): v for k, v in extra.items()}
    lib = {k: (N_CTX if k.endswith("last_n") and v == -1 else v) for k, v in lib.items()}
    cfg = SamplerConfig(top_k=40, top_p=0.95, min_p=0.05, **{"seed": 0, **openai_fields}, **lib)
    ref = llama_cpp_tokens(llama_cpp, smollm_path, ids, cfg, ORACLE_TOKENS)
    text = b"".join(model.tokenizer.token_bytes(t) for t in ref).decode("utf-8", "replace")
    assert (r.choices[0].text, r.usage.completion_tokens) == (text, len(ref))


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


def test_too_ambiguous_grammar_is_a_400_and_the_server_goes_on(client):
    """Every character multiplies this grammar's parses; past the cap the request ends with a 400
    naming the ambiguity (before the cap, an unbounded matcher took minutes and gigabytes)."""
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=SMOLLM, prompt="Write:", temperature=0, max_tokens=16,
                                  extra_body={"grammar": 'root ::= [a-z]* | . . {0,7}root {2,7}root'})
    assert "too ambiguous" in str(e.value)
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


def test_grammar_dead_end_while_streaming_ends_the_stream_with_an_error(client):
    with pytest.raises(openai.APIError) as e:
        for _ in client.completions.create(model=SMOLLM, prompt="Say a:", temperature=0, max_tokens=8, stream=True,
                                           extra_body={"grammar": 'root ::= "a" "\\x00" "b"'}):
            pass
    assert "grammar admits no token" in str(e.value)
    ok = client.completions.create(model=SMOLLM, prompt="Hello", temperature=0, max_tokens=4)
    assert ok.choices[0].finish_reason in ("length", "stop")


@pytest.mark.parametrize("seed", range(2))
def test_streamed_chat_with_a_schema_validates(client, seed):
    chunks = list(client.chat.completions.create(
        model=SMOLLM, temperature=1.0, seed=seed, max_tokens=200, stream=True,
        messages=[{"role": "user", "content": "Describe a person as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"], f"the answer did not finish within 200 tokens: {finish}"
    jsonschema.validate(json.loads(content), SCHEMA)
