# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Serving: a conversation over HTTP, the way OpenAI clients speak it
#
# Layers 1 to 6 built a model that turns token ids into text. People rarely
# reach an engine that way: they reach it through **chat** (a conversation,
# rendered by the model's chat template into one prompt) and through an
# **OpenAI-compatible HTTP endpoint**, which every client library, editor
# plugin and agent framework speaks. `zigllama serve` is that endpoint,
# `zigllama_lib.serve` its code: FastAPI routes, a request checker, a stop-string
# matcher and one engine thread that generates for every client in turn.
#
# **Objectives.** After this notebook you can
#
# 1. show what a chat template turns a conversation into, special tokens
#    included, and count the tokens it adds;
# 2. start a server on 127.0.0.1 from Python and send it a request by hand,
#    reading the JSON that travels each way;
# 3. read a streamed answer as server-sent events (SSE), chunk by chunk, and
#    check that the stream says exactly what the whole answer says;
# 4. measure time to first token and inter-token latency from the chunks'
#    arrival times;
# 5. see how one engine serves many clients (continuous batching) and what a bad
#    request gets back.

# %%
# Versions: numbers in this notebook were produced with these.
import json
import platform
import threading
import time

import httpx
import ipywidgets as widgets
import matplotlib
import matplotlib.pyplot as plt
import numpy as np

import zigllama_lib as zl
from zigllama_lib.serve.process import ServerProcess
from zigllama_lib.viz.tokenizer import piece_label

print(f"python {platform.python_version()}, numpy {np.__version__}, matplotlib {matplotlib.__version__}, "
      f"httpx {httpx.__version__}, zigllama_lib {zl.__version__}")

# %%
N_CTX = 512
model = zl.load("smollm2-135m-instruct", n_ctx=N_CTX, progress=False)
tok = model.tokenizer
print(model)

# %% [markdown]
# ## 1. A conversation is one prompt
#
# A chat model was fine-tuned on conversations written in one fixed layout,
# with **special tokens** marking who speaks. The GGUF file carries that layout
# as a Jinja program, `tokenizer.chat_template` (layer 5 renders it; see the
# layer 5 notebook). The server applies it to the `messages` of every
# `/v1/chat/completions` request, with the assistant's turn left open
# (`add_generation_prompt=True`) so that the model writes the reply.

# %%
messages = [{"role": "system", "content": "Answer in one short sentence."},
            {"role": "user", "content": "What is the capital of France?"}]
prompt_text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
prompt_ids = tok.apply_chat_template(messages, add_generation_prompt=True)
print(prompt_text)
content_ids = sum((tok.encode(m["content"], add_special=False) for m in messages), [])
print(f"{len(prompt_ids)} prompt tokens, of which {len(content_ids)} are the messages' own words; "
      f"the template adds {len(prompt_ids) - len(content_ids)}")


# %% [markdown]
# The strip below draws every prompt token; the template's special tokens
# (`<|im_start|>`, `<|im_end|>`) are orange. Each is **one** token id, which no
# user text can produce: the tokenizer only reads them as special inside the
# template's output (`parse_special=True`), never inside a user's message.

# %%
def is_control(t: int) -> bool:
    """A token the template wrote that user text cannot produce (its piece is a special token)."""
    return tok.encode(tok.token_bytes(t).decode("utf-8", "replace"), add_special=False, parse_special=False) != [t]


def plot_prompt_tokens(ids, per_row=14, title="The rendered conversation, token by token"):
    rows = (len(ids) + per_row - 1) // per_row
    fig, ax = plt.subplots(figsize=(11, 0.55 * rows + 0.8))
    for k, t in enumerate(ids):
        r, c = divmod(k, per_row)
        colour = "tab:orange" if is_control(t) else "#dde6f0"
        ax.add_patch(plt.Rectangle((c, -r), 0.95, 0.8, color=colour))
        ax.text(c + 0.47, -r + 0.4, piece_label(tok.token_bytes(t))[:11], ha="center", va="center", fontsize=7,
                family="monospace")
    ax.set_xlim(0, per_row)
    ax.set_ylim(-rows + 0.9, 1)
    ax.axis("off")
    ax.set_title(f"{title}: {len(ids)} tokens, {sum(map(is_control, ids))} special (orange)")
    fig.tight_layout()
    return fig


plot_prompt_tokens(prompt_ids)
plt.show()

# %% [markdown]
# The figure above is the static version (the book shows it). In JupyterLab,
# change the system message or switch the open assistant turn off to see what
# the template writes:

# %%
system_box = widgets.Text(value="Answer in one short sentence.", description="system",
                          layout=widgets.Layout(width="60%"))
open_turn = widgets.Checkbox(value=True, description="add_generation_prompt")
template_out = widgets.Output()


def rerender(_change=None):
    msgs = ([{"role": "system", "content": system_box.value}] if system_box.value else []) + messages[1:]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=open_turn.value)
    with template_out:
        template_out.clear_output(wait=True)
        fig = plot_prompt_tokens(ids)
        plt.show()
        plt.close(fig)


for w in (system_box, open_turn):
    w.observe(rerender, names="value")
rerender()
widgets.VBox([widgets.HBox([system_box, open_turn]), template_out])

# %% [markdown]
# ## 2. Start a server, send a request by hand
#
# `zigllama serve` binds 127.0.0.1 (this machine only) unless told otherwise.
# `ServerProcess` starts it as a child process on a free port, waits until
# `GET /health` answers (it loads the model and runs one warm-up token first)
# and stops it when we are done. Here it requires an API key, as a server
# anyone else can reach should.

# %%
API_KEY = "sk-notebook"
server = ServerProcess.zigllama(["--model", "smollm2-135m-instruct", "--n-ctx", str(N_CTX),
                                 "--api-key", API_KEY]).start()
http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120)
print("serving at", server.url)
print(json.dumps(http.get("/v1/models").json(), indent=1))

# %% [markdown]
# A chat request is a JSON object: the model's id, the messages, sampling
# parameters. `temperature: 0` asks for greedy decoding, so the answer must be
# exactly what `model.chat` gives in this process.

# %%
request = {"model": "smollm2-135m-instruct", "messages": messages, "temperature": 0, "max_tokens": 40}
t0 = time.perf_counter()
response = http.post("/v1/chat/completions", json=request)
whole_seconds = time.perf_counter() - t0
answer = response.json()
print(response.status_code, json.dumps(answer, indent=1))

# %%
local = "".join(model.chat(messages, max_tokens=40, temperature=0))
assert answer["choices"][0]["message"]["content"] == local
assert answer["usage"]["prompt_tokens"] == len(prompt_ids)
print("the server's answer equals model.chat's:", repr(local))

# %% [markdown]
# `usage` counts tokens as OpenAI bills them: the rendered prompt (all of it,
# special tokens included) and the reply. `finish_reason` says why it ended:
# `"stop"` for the end-of-turn token or a stop string, `"length"` for
# `max_tokens`.
#
# ## 3. Streaming: server-sent events
#
# With `"stream": true` the answer arrives while it is generated. The wire
# format is SSE: each event is a line `data: <json>` followed by a blank line.
# For chat the first chunk carries only the role, each later one a `delta`
# of text, then one with the `finish_reason`, optionally one with `usage`,
# and finally the line `data: [DONE]`. We read the raw lines and note when
# each arrived.

# %%
def stream_chat(body):
    """Raw SSE lines of one streamed request, each with its arrival time (s after sending)."""
    lines, t0 = [], time.perf_counter()
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        for line in r.iter_lines():
            if line:
                lines.append((time.perf_counter() - t0, line))
    return lines


raw = stream_chat({**request, "stream_options": {"include_usage": True}})
print("every chunk starts with", raw[0][1][:raw[0][1].index('"choices"')] + "...; then:")
for t, line in raw[:4] + [("...", "...")] + raw[-3:]:
    shown = line[line.find('"choices"'):] if '"choices"' in line else line
    print(t if isinstance(t, str) else f"{t * 1000:7.1f} ms", shown[:120])


# %%
def parse_sse(lines):
    """The JSON payloads of ``data:`` lines, up to ``[DONE]``."""
    events = []
    for _, line in lines:
        assert line.startswith("data: "), line
        payload = line[len("data: "):]
        if payload == "[DONE]":
            break
        events.append(json.loads(payload))
    return events


events = parse_sse(raw)
deltas = [(t, e["choices"][0]["delta"].get("content", ""))
          for (t, _), e in zip(raw, events) if e["choices"] and e["choices"][0]["delta"].get("content")]
streamed = "".join(d for _, d in deltas)
assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
assert streamed == answer["choices"][0]["message"]["content"]
assert events[-1]["usage"] == answer["usage"] and raw[-1][1] == "data: [DONE]"
print(f"{len(events)} events, {len(deltas)} with text; the stream says exactly what the whole answer says")

# %% [markdown]
# A delta is never half a UTF-8 character: tokens are byte strings, and a
# character such as `ü` or an emoji can span two tokens. The engine holds the
# bytes back (`Utf8Stream`, layer 6) until the character is complete, and holds
# back text that might be the beginning of a stop string until it knows.
#
# ## 4. Latency: time to first token, time between tokens
#
# Two numbers describe how a stream feels. **Time to first token** (TTFT) is
# the prefill of the whole prompt plus the first decode step. **Inter-token
# latency** (ITL) is one decode step per token (layer 6 measured the step). The
# plot shows when each text chunk arrived.

# %%
story = {"model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": 64,
         "messages": [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]}
story_lines = stream_chat(story)
story_deltas = [t for (t, _), e in zip(story_lines, parse_sse(story_lines))
                if e["choices"] and e["choices"][0]["delta"].get("content")]
arrivals = np.array(story_deltas)
ttft, itl = arrivals[0], np.diff(arrivals)
fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.2))
a1.step(arrivals * 1000, np.arange(1, len(arrivals) + 1), where="post")
a1.axvline(ttft * 1000, color="tab:orange", ls="--", label=f"first token {ttft * 1000:.0f} ms")
a1.set_xlabel("ms after the request was sent")
a1.set_ylabel("text chunks received")
a1.set_title("One streamed reply (64 tokens at most)")
a1.legend()
a2.hist(itl * 1000, bins=20, color="tab:green")
a2.set_xlabel("ms between chunks")
a2.set_ylabel("count")
a2.set_title(f"{len(itl)} gaps: median {np.median(itl) * 1000:.1f} ms")
fig.tight_layout()
plt.show()
print(f"{len(arrivals)} text chunks; "
      f"this machine, this run: TTFT {ttft * 1000:.0f} ms, median ITL {np.median(itl) * 1000:.1f} ms "
      f"(timings vary with load; the counts do not)")

# %% [markdown]
# ## 5. One engine, many clients
#
# The server generates on one engine thread; the event loop that talks HTTP
# never runs a forward pass, so it keeps answering `/health` and accepting
# requests while a reply is generated. The engine batches continuously (layer
# 6's `ContinuousBatcher`, notebook 06 section 6c): each step it admits the
# requests that arrived (up to `--max-batch`, 8 by default; the rest wait in
# arrival order), decodes one token of every running request in one forward
# pass, reads a chunk of a new prompt, and retires what finished. Each reply is
# exactly what it would be alone. Four clients at once:

# %%
def timed_stream(i, body, spans):
    """Record client ``i``'s (sent, first text, last line) times."""
    t_send = time.perf_counter()
    lines = stream_chat(body)
    first_text = next(t for (t, _), e in zip(lines, parse_sse(lines))
                      if e["choices"] and e["choices"][0]["delta"].get("content"))
    spans[i] = (t_send, t_send + first_text, t_send + lines[-1][0])


questions = ["Name a colour.", "What is 2+2?", "Say hello in French.", "Name a planet."]
spans, threads = {}, []
for i, q in enumerate(questions):
    body = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": q}], "temperature": 0,
            "max_tokens": 24}
    threads.append(threading.Thread(target=timed_stream, args=(i, body, spans)))
    threads[-1].start()
    time.sleep(0.05)
for th in threads:
    th.join(timeout=120)

start = min(s for s, _, _ in spans.values())
fig, ax = plt.subplots(figsize=(10, 2.4))
for i, (s, first, end) in sorted(spans.items()):
    ax.barh(i, first - s, left=s - start, color="#dddddd")
    ax.barh(i, end - first, left=first - start, color="tab:blue")
ax.set_yticks(range(len(questions)), [f"client {i}: {q}" for i, q in enumerate(questions)])
ax.invert_yaxis()
ax.set_xlabel("seconds (grey: waiting for the first token, blue: streaming)")
ax.set_title("Four clients, one engine: their replies stream side by side (continuous batching)")
fig.tight_layout()
plt.show()
order = sorted(spans, key=lambda i: spans[i][1])
print("first tokens arrived in the order of clients", order)
widest = [line for line in http.get("/metrics").text.splitlines()
          if line.startswith("zigllama_engine_batch_rows_max ")]
print(widest[0], "(the most requests decoded in one forward pass so far)")

# %% [markdown]
# ## 6. Bad requests get OpenAI's error shape
#
# Every field is checked before any work starts. A wrong value is a 400 whose
# body names the parameter; an unknown model a 404; a missing key a 401; a
# body over the limit a 413. The server keeps serving.

# %%
bad = [("temperature out of range", http.post("/v1/chat/completions", json={**request, "temperature": 5})),
       ("unknown model", http.post("/v1/chat/completions", json={**request, "model": "gpt-9"})),
       ("prompt + max_tokens beyond the context", http.post("/v1/chat/completions",
                                                            json={**request, "max_tokens": 10_000})),
       ("no API key", httpx.post(server.url + "/v1/chat/completions", json=request, timeout=30))]
for name, r in bad:
    print(f"{name}: {r.status_code} {r.json()['error']}")
assert [r.status_code for _, r in bad] == [400, 404, 400, 401]
assert http.get("/health").json() == {"status": "ok"}

# %% [markdown]
# ## 7. What the server counts
#
# `GET /metrics` is Prometheus's text format: counters of requests by route
# and status, tokens in and out, the queue depth, and latency histograms.

# %%
metrics_text = http.get("/metrics").text
print("\n".join(line for line in metrics_text.splitlines()
                if line.startswith(("zigllama_requests_total", "zigllama_completion_tokens_total",
                                    "zigllama_queue_depth", "zigllama_request_latency_seconds_count"))))

# %% [markdown]
# ## Summary
#
# - A chat request's `messages` become one prompt through the model's chat
#   template; the template's special tokens are single token ids that user text
#   cannot produce, and `usage.prompt_tokens` counts them all.
# - `zigllama serve` speaks OpenAI's API: the same JSON in and out, errors
#   included, so the official `openai` client works against it unchanged:
#   `OpenAI(base_url=server.url + "/v1", api_key=...)`.
# - Streaming is SSE: `data: {json}` events, a role chunk first, text deltas
#   that never split a character, `data: [DONE]` last. The stream says exactly
#   what the whole answer says.
# - TTFT is prefill plus one step; ITL is one decode step. Both are read from
#   chunk arrival times.
# - One engine thread, continuous batching: the HTTP side never blocks on the
#   model, requests join and leave the batch at every step, waiting ones are
#   admitted in arrival order, and each reply equals the same request alone.
#
# ## Exercises
#
# **Exercise 1.** How many prompt tokens will the server report for a
# conversation with no system message and the user message "Hi"? Work it out
# with the tokenizer alone (render the template, count), then check against
# the server's `usage`.

# %%
hi = [{"role": "user", "content": "Hi"}]
predicted_prompt_tokens = len(tok.apply_chat_template(hi, add_generation_prompt=True))

# %%
# Check for exercise 1.
served = http.post("/v1/chat/completions", json={"model": "smollm2-135m-instruct", "messages": hi,
                                                 "max_tokens": 1}).json()
assert served["usage"]["prompt_tokens"] == predicted_prompt_tokens
print("prompt tokens:", predicted_prompt_tokens)

# %% [markdown]
# **Exercise 2.** A stop string ends the reply *before* it: the server never
# sends the stop string itself. Take the greedy reply `local` from section 2,
# choose its second word as the stop string, and write what the server will
# answer.

# %%
stop_word = local.split()[1]
predicted_stopped = local[:local.find(stop_word)]

# %%
# Check for exercise 2.
got = http.post("/v1/chat/completions", json={**request, "stop": [stop_word]}).json()
assert got["choices"][0]["message"]["content"] == predicted_stopped
assert got["choices"][0]["finish_reason"] == "stop"
print(f"stop={stop_word!r} -> {predicted_stopped!r}")

# %% [markdown]
# **Exercise 3.** From the arrival times `arrivals` of section 4, compute the
# mean inter-token latency without `np.diff` (total streaming time divided by
# the number of gaps) and check it against the gaps' mean.

# %%
mean_itl = (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1)

# %%
# Check for exercise 3.
assert np.isclose(mean_itl, np.diff(arrivals).mean())
print(f"mean ITL {mean_itl * 1000:.2f} ms over {len(arrivals) - 1} gaps")

# %%
# Stop the server (the kernel would also stop it on exit).
http.close()
server.stop()
print("server stopped:", server.proc.poll() is not None)
