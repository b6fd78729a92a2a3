"""The server's request handling without HTTP: body bytes -> JSON object -> messages / prompt -> GenParams.

Runs :func:`zigllama_lib.serve.limits.parse_json_body` (size, depth, numbers), the message and
prompt checks of :mod:`zigllama_lib.serve.app` and ``params.parse_common``. Invariant: a valid
``GenParams`` or an ``APIError`` with a 4xx status, nothing else.
"""

from __future__ import annotations

import zigllama_lib.serve.app, zigllama_lib.serve.limits, zigllama_lib.serve.params  # noqa: E401,F401

INSTRUMENT = ["zigllama_lib.serve"]
N_VOCAB = 49152


def setup() -> None:
    pass


def TestOneInput(data: bytes) -> None:
    from zigllama_lib.serve.app import check_messages, check_prompt
    from zigllama_lib.serve.errors import APIError
    from zigllama_lib.serve.limits import parse_json_body
    from zigllama_lib.serve.params import parse_common

    chat = bool(data[:1]) and data[0] & 1 == 1
    try:
        body = parse_json_body(data[1:])
        if chat:
            check_messages(body.get("messages"))
        else:
            check_prompt(body.get("prompt"), N_VOCAB)
        p = parse_common(body, "m", N_VOCAB, chat)
    except APIError as e:
        assert 400 <= e.status < 500, (e.status, e.message)
        assert e.message
        return
    assert p.max_tokens is None or p.max_tokens >= 0
    assert 0.0 <= p.temperature <= 2.0 and 0.0 <= p.top_p <= 1.0
    assert all(0 <= t < N_VOCAB for t in p.logit_bias)
