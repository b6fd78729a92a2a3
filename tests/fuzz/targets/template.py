"""Chat-template rendering of hostile Jinja source (as a GGUF's ``tokenizer.chat_template`` would carry).

Invariants: the render returns a string of at most ``max_chars`` characters or raises
``ChatTemplateError``, within the time limit, and never touches the file system, processes or
the network while rendering (an audit hook watches).
"""

from __future__ import annotations

import jinja2.sandbox, zigllama_lib.models.chat_template  # noqa: E401,F401

import sys

INSTRUMENT = ["zigllama_lib.models.chat_template", "jinja2"]
MAX_CHARS = 100_000
MAX_SECONDS = 1.0
_WATCHING = [False]
# (not "code.__new__": Jinja builds fake code objects to point a traceback at the template line)
_FORBIDDEN = ("os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.remove", "os.rename",
              "os.mkdir", "os.rmdir", "os.chmod", "os.kill", "subprocess.", "socket.", "ctypes.", "shutil.",
              "urllib.", "http.", "pty.", "webbrowser.", "sys.settrace", "sys.setprofile",
              "object.__setattr__", "object.__delattr__", "builtins.input", "glob.", "os.listdir", "os.scandir")
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi {{ 7*7 }}"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "More?"}]


class SandboxEscape(AssertionError):
    pass


def _audit(event: str, args) -> None:
    if not _WATCHING[0]:
        return
    if event == "open":
        path = str(args[0])
        if not path.endswith((".py", ".pyc")):
            _WATCHING[0] = False
            raise SandboxEscape(f"template opened {path!r}")
    elif event.startswith(_FORBIDDEN):
        _WATCHING[0] = False
        raise SandboxEscape(f"template triggered audit event {event} {args!r:.200}")


_INSTALLED = [False]


def setup() -> None:
    if not _INSTALLED[0]:
        sys.addaudithook(_audit)
        _INSTALLED[0] = True


def TestOneInput(data: bytes) -> None:
    from zigllama_lib.foundation.errors import ChatTemplateError
    from zigllama_lib.models.chat_template import render_chat_template

    setup()
    source = data.decode("utf-8", "replace")
    _WATCHING[0] = True
    try:
        out = render_chat_template(source, MESSAGES, add_generation_prompt=True, bos_token="<s>",
                                   eos_token="</s>", max_chars=MAX_CHARS, max_seconds=MAX_SECONDS)
    except ChatTemplateError:
        return
    finally:
        _WATCHING[0] = False
    assert isinstance(out, str) and len(out) <= MAX_CHARS
