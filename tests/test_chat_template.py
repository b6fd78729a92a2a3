"""Chat templates: our renderer against transformers', llama.cpp's formatter and known strings.

Oracles:
* transformers' ``render_jinja_template`` (what ``apply_chat_template`` calls):
  SmolLM2's own template and every template of llama.cpp's collection
  (``models/templates/*.jinja``, from scripts/fetch_llama_cpp_sources.sh), on
  several conversations; a template that raises must raise in both;
* llama.cpp's built-in C formatter ``llama_chat_apply_template`` (chatml,
  llama3, gemma, vicuna, zephyr by name) for our built-in templates;
* rendered strings copied from llama.cpp's tests/test-chat-template.cpp and
  from the model cards (Llama 2, Alpaca);
* llama.cpp's tokenizer (``special=True``) for the token ids of rendered prompts.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from oracles import missing, require_module, strict

from zigllama_lib.foundation.errors import ChatTemplateError, ZigLlamaError
from zigllama_lib.foundation.gguf import GGUFFile
from zigllama_lib.models.chat_template import BUILTIN_TEMPLATES, builtin_template_for, render_chat_template
from zigllama_lib.models.loader import load_gguf

import zigllama_lib as zl

ROOT = Path(__file__).resolve().parents[1]

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city, e.g. Paris"}},
                   "required": ["city"]}}}]

# llama.cpp's test conversation (tests/test-chat-template.cpp)
LLAMA_CPP_CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant"},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi there"},
    {"role": "user", "content": "Who are you"},
    {"role": "assistant", "content": "   I am an assistant   "},
    {"role": "user", "content": "Another question"},
]

CONVERSATIONS = {
    "system+user": [{"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "Hello!"}],
    "multi-turn": [{"role": "user", "content": "Hello"},
                   {"role": "assistant", "content": "Hi there, how can I help?"},
                   {"role": "user", "content": "Who are you? Réponds en français, s'il te plaît 🙂"}],
    "llama.cpp": LLAMA_CPP_CONVERSATION,
    "tool-call": [{"role": "system", "content": "You can call tools."},
                  {"role": "user", "content": "What is the weather in Paris?"},
                  {"role": "assistant", "content": "", "tool_calls": [
                      {"id": "call12345", "type": "function",
                       "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                  {"role": "tool", "tool_call_id": "call12345", "name": "get_weather",
                   "content": "{\"temperature\": 21}"},
                  {"role": "assistant", "content": "It is 21 degrees in Paris."},
                  {"role": "user", "content": "Thanks!"}],
    "tool-call-openai": [{"role": "user", "content": "What is the weather in Paris?"},
                         {"role": "assistant", "content": None, "tool_calls": [
                             {"id": "call12345", "type": "function",
                              "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                         {"role": "tool", "tool_call_id": "call12345", "content": "21 C"}],
    "reasoning": [{"role": "user", "content": "What is 2+2?"},
                  {"role": "assistant", "content": "4", "reasoning_content": "Two plus two is four."},
                  {"role": "user", "content": "And 3+3?"}],
}


# -- oracles and fixtures ---------------------------------------------------------------

@pytest.fixture(scope="session")
def llama_cpp_templates() -> list[Path]:
    """llama.cpp's template collection, unpacked by scripts/fetch_llama_cpp_sources.sh."""
    try:
        out = subprocess.run([str(ROOT / "scripts" / "fetch_llama_cpp_sources.sh")], capture_output=True, text=True,
                             timeout=600, check=True)
    except (subprocess.SubprocessError, OSError) as e:
        missing(f"llama.cpp sources (scripts/fetch_llama_cpp_sources.sh failed: {e})")
    folder = Path(out.stdout.strip().splitlines()[-1]) / "vendor" / "llama.cpp" / "models" / "templates"
    files = sorted(folder.glob("*.jinja"))
    if not files:
        missing(f"llama.cpp chat templates in {folder}")
    return files


def transformers_render(template: str, messages, **kw):
    """transformers' rendering (its apply_chat_template minus the tokenizer), or ("error", type, message)."""
    tcu = require_module("transformers.utils.chat_template_utils")
    try:
        convs = [tcu._normalize_chat_messages(messages)]
        return tcu.render_jinja_template(conversations=convs, chat_template=template, **kw)[0][0]
    except Exception as e:  # noqa: BLE001 - any error the template raises counts
        return ("error", type(e).__name__, str(e))


def ours_render(template: str, messages, **kw):
    try:
        return render_chat_template(template, messages, **kw)
    except ChatTemplateError as e:
        return ("error", "ChatTemplateError", str(e))


def llama_cpp_format(llama_cpp, name: str, messages, add_ass: bool) -> str:
    """llama.cpp's built-in (non-Jinja) formatter for a template name."""
    arr = (llama_cpp.llama_chat_message * len(messages))(
        *[llama_cpp.llama_chat_message(m["role"].encode(), m["content"].encode()) for m in messages])
    size = 1 << 16
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_chat_apply_template(name.encode(), arr, len(messages), add_ass, buf, size)
    assert 0 <= n < size, f"llama_chat_apply_template({name!r}) returned {n}"
    return buf.raw[:n].decode("utf-8")


@pytest.fixture(scope="session")
def smollm_template(smollm_path) -> str:
    return GGUFFile(smollm_path).metadata["tokenizer.chat_template"]


# -- transformers parity ----------------------------------------------------------------

def _compare(template: str, label: str, conversations: dict, tools_too: bool = True) -> tuple[list[str], int]:
    """(disagreements, renderings that succeeded in both) over conversations x add_generation_prompt."""
    bad, rendered = [], 0
    for cname, conv in conversations.items():
        for agp in (False, True):
            kw = dict(add_generation_prompt=agp, bos_token="<s>", eos_token="</s>")
            if tools_too and cname.startswith("tool"):
                kw["tools"] = TOOLS
            ref = transformers_render(template, conv, **kw)
            ours = ours_render(template, conv, **kw)
            if isinstance(ref, tuple) and isinstance(ours, tuple):
                continue  # both refuse this conversation: agreement
            if ours != ref:
                bad.append(f"{label} / {cname} / add_generation_prompt={agp}:\n  transformers: {ref!r:.300}\n"
                           f"  ours:         {ours!r:.300}")
            else:
                rendered += 1
    return bad, rendered


def test_smollm2_template_matches_transformers(smollm_template):
    bad, rendered = _compare(smollm_template, "SmolLM2", CONVERSATIONS)
    assert not bad, "\n".join(bad)
    assert rendered >= 2 * (len(CONVERSATIONS) - 1)  # content=None (dropped) breaks its message['content'] in both


def test_every_llama_cpp_template_matches_transformers(llama_cpp_templates):
    """All of llama.cpp's collection (tool-use, reasoning, 70 real templates) renders as transformers does."""
    assert len(llama_cpp_templates) >= 60
    bad, rendered, per_template = [], 0, {}
    for path in llama_cpp_templates:
        b, n = _compare(path.read_text(encoding="utf-8"), path.name, CONVERSATIONS)
        bad += b
        rendered += n
        per_template[path.name] = n
    assert not bad, f"{len(bad)} disagreements:\n" + "\n".join(bad[:10])
    # the comparison must mostly be of rendered text, not of errors on both sides
    assert rendered >= 0.8 * 2 * len(CONVERSATIONS) * len(llama_cpp_templates), rendered
    assert sum(1 for n in per_template.values() if n > 0) >= len(llama_cpp_templates) - 1, per_template


def test_builtin_templates_render_the_same_through_transformers():
    conv = CONVERSATIONS["multi-turn"]
    for name, source in BUILTIN_TEMPLATES.items():
        for agp in (False, True):
            kw = dict(add_generation_prompt=agp, bos_token="<s>", eos_token="</s>")
            assert render_chat_template(name, conv, **kw) == transformers_render(source, conv, **kw), name


def test_tojson_and_strftime_now_match_transformers():
    tpl = ("{{ tools | tojson }}|{{ tools | tojson(indent=2) }}|{{ tools | tojson(sort_keys=true) }}|"
           "{{ {'b': 'é<&>', 'a': [1, 2.5, none, true]} | tojson(separators=(',', ':'), sort_keys=true) }}|"
           "{{ messages[0] | tojson(ensure_ascii=true) }}|{{ strftime_now('%Y-%m') }}|{{ extra_flag }}")
    conv = [{"role": "user", "content": "naïve «quotes» \"and\" </script>"}]
    kw = dict(tools=TOOLS, extra_flag=False)
    assert render_chat_template(tpl, conv, **kw) == transformers_render(tpl, conv, **kw)
    assert datetime.now().strftime("%Y-%m") in render_chat_template(tpl, conv, **kw)


def test_namespace_dict_loopcontrols_and_generation_tag_match_transformers():
    tpl = ("{% set ns = namespace(n=0, last='') %}{% for m in messages %}{% if m.role == 'system' %}{% continue %}"
           "{% endif %}{% set ns.n = ns.n + 1 %}{% set ns.last = m.content %}{% if ns.n > 1 %}{% break %}{% endif %}"
           "{% endfor %}{{ ns.n }} {{ ns.last }} {{ dict(a=1, b=[2]) | tojson }} "
           "{% generation %}{{ messages[-1].content | upper }}{% endgeneration %}")
    conv = LLAMA_CPP_CONVERSATION
    assert render_chat_template(tpl, conv) == transformers_render(tpl, conv)


# -- built-in templates against llama.cpp and the model cards -------------------------------

@pytest.mark.parametrize("name, eos", [("chatml", ""), ("llama3", ""), ("gemma", ""), ("vicuna", "</s>"),
                                       ("zephyr", "<|endoftext|>")])
@pytest.mark.parametrize("add_ass", [False, True])
def test_builtin_matches_llama_cpp_formatter(llama_cpp, name, eos, add_ass):
    for conv in (LLAMA_CPP_CONVERSATION, CONVERSATIONS["multi-turn"], CONVERSATIONS["system+user"]):
        expected = llama_cpp_format(llama_cpp, name, conv, add_ass)
        assert render_chat_template(name, conv, add_generation_prompt=add_ass, eos_token=eos) == expected


# Expected strings from llama.cpp's tests/test-chat-template.cpp (its conversation, add_generation_prompt=True)
TEST_CHAT_TEMPLATE_CPP = {
    "chatml": ("", "", "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
               "<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nWho are you<|im_end|>\n<|im_start|>"
               "assistant\n   I am an assistant   <|im_end|>\n<|im_start|>user\nAnother question<|im_end|>\n"
               "<|im_start|>assistant\n"),
    "gemma": ("", "", "<start_of_turn>user\nYou are a helpful assistant\n\nHello<end_of_turn>\n<start_of_turn>model\n"
              "Hi there<end_of_turn>\n<start_of_turn>user\nWho are you<end_of_turn>\n<start_of_turn>model\n"
              "I am an assistant<end_of_turn>\n<start_of_turn>user\nAnother question<end_of_turn>\n"
              "<start_of_turn>model\n"),
    "llama3": ("", "", "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant"
               "<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWho are you"
               "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nI am an assistant<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nAnother question<|eot_id|><|start_header_id|>"
               "assistant<|end_header_id|>\n\n"),
    "vicuna": ("", "</s>", "You are a helpful assistant\n\nUSER: Hello\nASSISTANT: Hi there</s>\nUSER: Who are you\n"
               "ASSISTANT:    I am an assistant   </s>\nUSER: Another question\nASSISTANT:"),
    # the Llama 2 chat format (vigogne-2's Llama 2 template in that file, expected_output_jinja; bos_token "")
    "llama2": ("", "</s>", "[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\nHello [/INST] Hi there </s>"
               "[INST] Who are you [/INST] I am an assistant </s>[INST] Another question [/INST]"),
}


@pytest.mark.parametrize("name", sorted(TEST_CHAT_TEMPLATE_CPP))
def test_builtin_matches_llama_cpp_test_strings(name):
    bos, eos, expected = TEST_CHAT_TEMPLATE_CPP[name]
    got = render_chat_template(name, LLAMA_CPP_CONVERSATION, add_generation_prompt=True, bos_token=bos,
                               eos_token=eos)
    assert got == expected


def test_builtin_matches_model_cards():
    conv = [{"role": "system", "content": "SYS"}, {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}]
    # Llama 2 chat (Hugging Face's "How to prompt Llama 2"): BOS before every [INST], EOS after every answer
    assert render_chat_template("llama2", conv, bos_token="<s>", eos_token="</s>") == (
        "<s>[INST] <<SYS>>\nSYS\n<</SYS>>\n\nQ1 [/INST] A1 </s><s>[INST] Q2 [/INST]")
    # Stanford Alpaca's prompt (its README): preamble, ### Instruction:, ### Response:
    alpaca_preamble = ("Below is an instruction that describes a task. Write a response that appropriately "
                       "completes the request.\n\n")
    assert render_chat_template("alpaca", conv[1:2], add_generation_prompt=True) == (
        alpaca_preamble + "### Instruction:\nQ1\n\n### Response:\n")
    assert render_chat_template("alpaca", conv, add_generation_prompt=True, eos_token="</s>") == (
        "SYS\n\n### Instruction:\nQ1\n\n### Response:\nA1</s>\n\n### Instruction:\nQ2\n\n### Response:\n")
    # Gemma 3's model card: <bos><start_of_turn>user\n{system}\n\n{prompt}<end_of_turn>\n<start_of_turn>model\n
    assert render_chat_template("gemma", conv[:2], add_generation_prompt=True, bos_token="<bos>") == (
        "<bos><start_of_turn>user\nSYS\n\nQ1<end_of_turn>\n<start_of_turn>model\n")
    # Zephyr's model card (eos </s>)
    assert render_chat_template("zephyr", conv[:2], add_generation_prompt=True, eos_token="</s>") == (
        "<|system|>\nSYS</s>\n<|user|>\nQ1</s>\n<|assistant|>\n")


def test_gemma_builtin_refuses_roles_out_of_order():
    with pytest.raises(ChatTemplateError, match="chat template raised: gemma: .*alternate"):
        render_chat_template("gemma", [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_builtin_template_choice():
    assert builtin_template_for("gemma3") == "gemma"
    assert builtin_template_for("llama", ["<|start_header_id|>", "<|eot_id|>"]) == "llama3"
    assert builtin_template_for("qwen2", ["<|im_start|>", "<|im_end|>"]) == "chatml"
    assert builtin_template_for("llama") == "chatml"  # llama.cpp's fallback too


# -- hostile and broken templates ---------------------------------------------------------

HOSTILE = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ messages.__class__ }}",
    "{{ messages.append(1) }}",
    "{{ raise_exception.__globals__ }}",
    "{% set ns = namespace() %}{% set ns.__class__ = 1 %}",
    "{{ namespace(_x=1) }}",
]


@pytest.mark.parametrize("source", HOSTILE)
def test_sandbox_refuses_hostile_templates(source):
    with pytest.raises(ChatTemplateError, match="refused by the sandbox|chat template failed"):
        render_chat_template(source, [{"role": "user", "content": "hi"}])
    # transformers' sandbox refuses too, or (a lone unsafe attribute) prints it as ""; nothing leaks
    assert transformers_render(source, [{"role": "user", "content": "hi"}]) in ("",) or isinstance(
        transformers_render(source, [{"role": "user", "content": "hi"}]), tuple)


def test_sandbox_error_names_the_attribute():
    with pytest.raises(ChatTemplateError, match=r"refused by the sandbox: .*'__class__'"):
        render_chat_template("{{ ''.__class__.__mro__ }}", [{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("source, pattern", [
    ("{% for m in messages %}{{ m.content }}", r"syntax error at line 1: .*endfor"),
    ("ok\n{{ messages[0].content \n", r"syntax error at line 2"),
    ("{% if %}", r"syntax error at line 1"),
    ("{{ raise_exception('No system messages, please') }}", r"^chat template raised: No system messages, please$"),
    ("{{ 1 / 0 }}", r"chat template failed: ZeroDivisionError"),
    ("{{ messages[0].content + 1 }}", r"chat template failed: TypeError"),
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", r"recursed too deeply"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", r"range\(\) items"),
    ("{{ 'x' * 100000000 }}", r"longer than"),
    ("{{ 7 ** 100000000 }}", r"too large"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}", r"longer than"),
    ("{% for i in range(100000) %}{{ messages[0].content * 100 }}{% endfor %}", r"output is longer than"),
    ("chatml2", r"unknown built-in chat template 'chatml2'"),
])
def test_broken_templates_give_clear_errors(source, pattern):
    with pytest.raises(ChatTemplateError, match=pattern) as info:
        render_chat_template(source, [{"role": "user", "content": "hi"}])
    assert "Traceback" not in str(info.value)
    assert isinstance(info.value, ZigLlamaError)


def test_output_limit_is_configurable():
    conv = [{"role": "user", "content": "x" * 100}]
    assert len(render_chat_template("chatml", conv)) > 100
    with pytest.raises(ChatTemplateError, match="longer than (the limit of )?50 "):
        render_chat_template("chatml", conv, max_chars=50)


def test_bad_messages_give_clear_errors():
    with pytest.raises(ChatTemplateError, match="empty"):
        render_chat_template("chatml", [])
    with pytest.raises(ChatTemplateError, match="list of dicts"):
        render_chat_template("chatml", "hello")
    with pytest.raises(ChatTemplateError, match=r"messages\[1\] must be a dict"):
        render_chat_template("chatml", [{"role": "user", "content": "a"}, "b"])
    with pytest.raises(ChatTemplateError, match=r"messages\[0\]\['content'\] is a object"):
        render_chat_template("chatml", [{"role": "user", "content": object()}])
    with pytest.raises(ChatTemplateError, match=r"tools\[0\] must be a JSON schema dict"):
        render_chat_template("chatml", [{"role": "user", "content": "a"}], tools=[len])


def test_public_api():
    assert zl.render_chat_template("chatml", [{"role": "user", "content": "Hi"}], add_generation_prompt=True) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert json.loads(zl.render_chat_template("{{ messages | tojson }}", [{"role": "user", "content": "é"}])) == [
        {"role": "user", "content": "é"}]


# -- Tokenizer.apply_chat_template: token ids against llama.cpp -------------------------------

@pytest.fixture(scope="session")
def tokenizers(smollm_path, gemma_path):
    return {"smollm": load_gguf(smollm_path, progress=False).tokenizer,
            "gemma": load_gguf(gemma_path, progress=False).tokenizer}


@pytest.fixture(scope="session")
def llama_vocabs(llama_cpp, smollm_path, gemma_path):
    return {k: llama_cpp.Llama(model_path=str(p), vocab_only=True, verbose=False)
            for k, p in (("smollm", smollm_path), ("gemma", gemma_path))}


def test_tokenizers_know_their_templates(tokenizers, smollm_template):
    smollm, gemma = tokenizers["smollm"], tokenizers["gemma"]
    assert smollm.chat_template == smollm_template and smollm.chat_template_name is None
    assert gemma.chat_template == BUILTIN_TEMPLATES["gemma"] and gemma.chat_template_name == "gemma"
    assert smollm.id_to_piece(2) == "<|im_end|>" and 2 in smollm.end_of_turn_ids
    eot = gemma.vocab.token_to_id["<end_of_turn>"]
    assert eot in gemma.end_of_turn_ids and gemma.is_eog(eot)


@pytest.mark.parametrize("which", ["smollm", "gemma"])
@pytest.mark.parametrize("conv_name", ["system+user", "multi-turn", "llama.cpp"])
def test_apply_chat_template_ids_match_llama_cpp(tokenizers, llama_vocabs, which, conv_name):
    tok, llm = tokenizers[which], llama_vocabs[which]
    conv = CONVERSATIONS[conv_name]
    if which == "gemma" and conv_name == "llama.cpp":
        conv = conv[:-1] + [{"role": "user", "content": "Another question"}]
    text = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    ids = tok.apply_chat_template(conv, add_generation_prompt=True)
    assert ids == llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    assert ids == tok.encode(text, add_special=False, parse_special=True)
    if which == "gemma":  # the template writes <bos> once; llama.cpp strips a leading BOS text and re-adds it
        assert text.startswith("<bos><start_of_turn>user\n") and ids[0] == tok.bos_id
        assert ids.count(tok.bos_id) == 1
        assert ids == llm.tokenize(text[len("<bos>"):].encode("utf-8"), add_bos=True, special=True)
    else:
        assert text.startswith("<|im_start|>")
        assert ids.count(tok.vocab.token_to_id["<|im_start|>"]) == text.count("<|im_start|>")


def test_apply_chat_template_matches_transformers_text(tokenizers, smollm_template):
    tok = tokenizers["smollm"]
    conv = CONVERSATIONS["tool-call"]
    for agp in (False, True):
        ours = tok.apply_chat_template(conv, add_generation_prompt=agp, tokenize=False, tools=TOOLS, flag=1)
        ref = transformers_render(smollm_template, conv, add_generation_prompt=agp, tools=TOOLS, flag=1,
                                  bos_token="<|im_start|>", eos_token="<|im_end|>")
        assert ours == ref


def test_apply_chat_template_override(tokenizers):
    tok = tokenizers["smollm"]
    conv = [{"role": "user", "content": "Hi"}]
    assert tok.apply_chat_template(conv, tokenize=False, chat_template="zephyr") == "<|user|>\nHi<|im_end|>\n"
    assert tok.apply_chat_template(conv, tokenize=False, chat_template="{{ bos_token }}|{{ eos_token }}") == (
        "<|im_start|>|<|im_end|>")
