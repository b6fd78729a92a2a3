"""Hostile chat templates: sandbox escapes, endless loops and huge outputs are refused with a
ChatTemplateError naming the problem, within the time limit; a real template still renders
exactly as jinja2 itself renders it (the oracle)."""

from __future__ import annotations

import time

import pytest

from zigllama_lib.foundation.errors import ChatTemplateError
from zigllama_lib.models.chat_template import BUILTIN_TEMPLATES, render_chat_template

M = [{"role": "user", "content": "Hi"}]

HOSTILE = {
    "{{ ''.__class__.__mro__ }}": "sandbox",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}": "sandbox",
    "{{ raise_exception.__globals__ }}": "sandbox",
    "{{ cycler.__init__.__globals__.os }}": "sandbox",
    "{{ ''|attr('__class__') }}": "sandbox",
    "{{ 'x' * 1000000000 }}": "longer than",
    "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}": "longer than",
    "{% set s = 'ab' %}" + "{% set s = s ~ s %}" * 40 + "{{ s }}": "longer than",
    "{% for a in 'x' * 100000 %}{% for b in 'y' * 100000 %}{% endfor %}{% endfor %}": "ran longer",
    "{% macro f(d) %}{% if d < 40 %}{{ f(d + 1) }}{{ f(d + 1) }}{% endif %}{% endmacro %}{{ f(0) }}": "ran longer",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}": "recursed",
    "{{ 'a'|center(1000000000) }}": "width",
    "{{ '%1000000000s' % 'a' }}": "width",
    "{{ '{:>1000000000}'.format('a') }}": "width",
    "{{ 'a'.ljust(1000000000) }}": "width",
    "{% set s = 'x' * 1000000 %}{{ [s, s, s, s, s]|join }}": "longer than",
    "{% set s = 'x' * 1000000 %}{{ s.replace('', s) }}": "exceed",
    "{{ range(10**9)|list }}": "range()",
    "{{ lipsum(100000) }}": "lipsum",
    "{% for x in": "syntax error",
}


@pytest.mark.parametrize("source,words", HOSTILE.items(), ids=range(len(HOSTILE)))
def test_hostile_template_is_refused(source, words):
    t0 = time.monotonic()
    with pytest.raises(ChatTemplateError) as e:
        render_chat_template(source, M, max_seconds=1.0)
    assert time.monotonic() - t0 < 5.0
    assert words in str(e.value), str(e.value)


def test_output_is_bounded_by_max_chars():
    with pytest.raises(ChatTemplateError, match="longer than the limit of 1,000"):
        render_chat_template("{% for i in range(2000) %}x{% endfor %}", M, max_chars=1000)


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_real_templates_render_as_jinja2_does(name):
    import jinja2.sandbox

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=["jinja2.ext.loopcontrols"])
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Yo"}, {"role": "user", "content": "More"}]
    try:
        want = env.from_string(BUILTIN_TEMPLATES[name]).render(messages=msgs, add_generation_prompt=True,
                                                               bos_token="<s>", eos_token="</s>",
                                                               raise_exception=lambda m: 1 / 0)
    except ZeroDivisionError:
        pytest.skip(f"{name} refuses this conversation")  # llama2 without alternation: not the point here
    assert render_chat_template(name, msgs, add_generation_prompt=True, bos_token="<s>", eos_token="</s>") == want


def test_server_refuses_a_hostile_template_and_answers_the_next_request(smollm):
    """A GGUF whose template escapes, loops or explodes: a 400 naming the problem, then service as usual."""
    from fastapi.testclient import TestClient

    from zigllama_lib.serve.app import create_app

    app = create_app({"m": smollm})
    original = smollm.tokenizer.chat_template
    chat = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0}
    try:
        with TestClient(app) as c:
            for hostile, words in [("{{ ''.__class__.__mro__ }}", "sandbox"),
                                   ("{% for a in 'x' * 100000 %}{% for b in 'y' * 100000 %}{% endfor %}"
                                    "{% endfor %}", "ran longer"),
                                   ("{{ 'x' * 1000000000 }}", "longer than")]:
                smollm.tokenizer.chat_template = hostile
                r = c.post("/v1/chat/completions", json=chat)
                assert r.status_code == 400 and words in r.json()["error"]["message"], r.text
                smollm.tokenizer.chat_template = original
                r = c.post("/v1/chat/completions", json=chat)
                assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"
            r = c.post("/v1/completions", content=b"[" * 100000, headers={"content-type": "application/json"})
            assert r.status_code == 400 and "nests" in r.json()["error"]["message"]
            assert c.get("/health").status_code == 200
    finally:
        smollm.tokenizer.chat_template = original


def test_a_request_over_its_time_limit_is_a_503(smollm):
    from fastapi.testclient import TestClient

    from zigllama_lib.serve.app import create_app

    app = create_app({"m": smollm}, max_request_seconds=0.0)
    with TestClient(app) as c:
        r = c.post("/v1/completions", json={"model": "m", "prompt": "Once", "max_tokens": 50})
        assert r.status_code == 503 and "limit of 0 s" in r.json()["error"]["message"]
        assert c.get("/health").status_code == 200
