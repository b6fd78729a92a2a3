"""model.chat / chat_ids and ``zigllama chat``.

Oracles: our own ``generate`` on the rendered prompt (chat is generation on
the template's text, nothing more), and llama.cpp's greedy tokens for the same
prompt ids (our llama.cpp numerics reproduce the pinned build bit for bit).
The CLI is driven through a subprocess with piped stdin, every run with a timeout.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time

import pytest

from zigllama_lib.foundation.errors import ChatTemplateError, ContextLengthError

import zigllama_lib as zl

QUESTION = [{"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is the capital of France?"}]
MULTI = [{"role": "user", "content": "Hi! My name is Ada."},
         {"role": "assistant", "content": "Hello Ada, nice to meet you."},
         {"role": "user", "content": "What is my name? 🙂"}]


@pytest.fixture(scope="module")
def gemma(gemma_path):
    return zl.load(gemma_path, n_ctx=256, progress=False)


@pytest.fixture(scope="module", params=["smollm", "gemma"])
def model(request, smollm, gemma):
    return smollm if request.param == "smollm" else gemma


@pytest.mark.parametrize("messages", [QUESTION, MULTI], ids=["question", "multi-turn"])
def test_greedy_chat_equals_generate_on_the_rendered_prompt(model, messages):
    rendered = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    reply = "".join(model.chat(messages, max_tokens=20, temperature=0.0))
    assert reply == "".join(model.generate(rendered, max_tokens=20, temperature=0.0, add_special=False,
                                           parse_special=True))
    ids = list(model.chat_ids(messages, max_tokens=20, temperature=0.0))
    assert reply == model.tokenizer.decode(ids, skip_special=True)


def test_seeded_chat_equals_seeded_generate(smollm):
    rendered = smollm.tokenizer.apply_chat_template(MULTI, add_generation_prompt=True, tokenize=False)
    kw = dict(max_tokens=16, temperature=0.9, top_k=50, top_p=0.9, min_p=0.02, seed=1234)
    assert list(smollm.chat(MULTI, **kw)) == list(smollm.generate(rendered, add_special=False, parse_special=True,
                                                                    **kw))


def test_chat_ids_match_llama_cpp_greedy(model, llama_cpp):
    """The prompt ids through llama.cpp's own greedy loop give the same reply tokens."""
    prompt = model.chat_prompt_ids(QUESTION)
    ours = list(model.chat_ids(QUESTION, max_tokens=16, temperature=0.0))
    llm = llama_cpp.Llama(model_path=str(model.path), n_ctx=256, n_threads=2, verbose=False)
    theirs = []
    for t in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        if model.tokenizer.is_eog(t) or len(theirs) == 16:
            break
        theirs.append(t)
    assert ours == theirs
    assert model.last_stats["n_prompt"] == len(prompt)


def test_chat_stops_at_end_of_turn(smollm):
    ids = list(smollm.chat_ids([{"role": "user", "content": "Say OK."}], max_tokens=64, temperature=0.0))
    assert smollm.last_stats["stop_reason"] == "eog"  # <|im_end|>, not yielded
    assert not any(t in smollm.tokenizer.end_of_turn_ids for t in ids)


def test_chat_prompt_longer_than_context_raises_with_both_numbers(smollm_path):
    small = zl.load(smollm_path, n_ctx=32, progress=False)
    long = [{"role": "user", "content": "tell me a story " * 20}]
    n = len(small.tokenizer.apply_chat_template(long, add_generation_prompt=True))
    with pytest.raises(ContextLengthError, match=rf"{n} tokens.*context of 32 tokens"):
        small.chat(long)  # raised at the call, before any token
    with pytest.raises(ContextLengthError):
        small.chat_ids(long)


def test_bad_conversations_raise_at_the_call(smollm, gemma):
    with pytest.raises(ChatTemplateError, match="list of dicts"):
        smollm.chat("Hello")
    with pytest.raises(ChatTemplateError, match="alternate"):
        gemma.chat([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


# -- zigllama chat -----------------------------------------------------------------------

def _cli(args, stdin_text, timeout=120):
    return subprocess.run([sys.executable, "-m", "zigllama_lib.cli", "chat", *args], input=stdin_text,
                          capture_output=True, text=True, timeout=timeout, encoding="utf-8")


def test_cli_chat_conversation_with_commands(smollm, smollm_path):
    q1, q2, q3 = "What is the capital of France?", "And of Italy?", "Say hello."
    out = _cli(["--model", str(smollm_path), "--n-ctx", "512", "--max-tokens", "12"],
               f"{q1}\n\n{q2}\n/system You are a pirate.\n{q3}\n/reset\n{q1}\n/bogus\n/exit\nnever read\n")
    assert out.returncode == 0, out.stderr
    kw = dict(max_tokens=12, temperature=0.0)
    r1 = "".join(smollm.chat([{"role": "user", "content": q1}], **kw))
    h = [{"role": "user", "content": q1}, {"role": "assistant", "content": r1}, {"role": "user", "content": q2}]
    r2 = "".join(smollm.chat(h, **kw))
    r3 = "".join(smollm.chat([{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": q3}],
                             **kw))
    r4 = "".join(smollm.chat([{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": q1}],
                             **kw))
    assert out.stdout == f"{r1}\n{r2}\n{r3}\n{r4}\n"  # history kept; /system resets; /reset keeps the system
    assert "system message set: 'You are a pirate.'" in out.stderr
    assert "conversation reset" in out.stderr and "unknown command '/bogus'" in out.stderr


def test_cli_chat_end_of_input_exits(smollm_path):
    out = _cli(["--model", str(smollm_path), "--n-ctx", "256", "--max-tokens", "4"], "Hi\n")
    assert out.returncode == 0 and out.stdout.strip(), out.stderr


def test_cli_chat_drops_oldest_turns_when_the_context_is_full(smollm_path):
    msgs = "".join(f"Question number {i}: what is {i} plus {i}?\n" for i in range(6))
    out = _cli(["--model", str(smollm_path), "--n-ctx", "128", "--max-tokens", "16", "--system", "Be brief."],
               msgs + ("word " * 200) + "\nLast one: hi\n")
    assert out.returncode == 0, out.stderr
    assert re.search(r"context full: dropped the \d+ oldest messages", out.stderr)
    assert out.stderr.count("not sent: this message is") == 1  # the long one, with both numbers
    assert "the context holds 128 tokens" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_chat_ctrl_c_stops_the_reply_not_the_program(smollm_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "zigllama_lib.cli", "chat", "--model", str(smollm_path),
                             "--n-ctx", "1024", "--max-tokens", "900"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        proc.stdin.write(b"Count from 1 to 1000, one number per line.\n")
        proc.stdin.flush()
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        got, deadline = b"", time.monotonic() + 90
        while len(got) < 8 and time.monotonic() < deadline:  # the reply is streaming
            if sel.select(timeout=1):
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                got += chunk
        assert len(got) >= 8, "no reply streamed"
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        rest, err = proc.communicate(input=b"/system Still here.\n/exit\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = err.decode()
    assert proc.returncode == 0, err
    assert "interrupted: the partial reply stays in the history" in err
    assert "system message set: 'Still here.'" in err  # the program went on reading commands
    assert len((got + rest).decode().splitlines()) < 900
