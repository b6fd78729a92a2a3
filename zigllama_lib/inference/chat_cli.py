"""``zigllama chat``: a conversation in the terminal, streamed, through the model's chat template.

    $ zigllama chat --system "Answer in one sentence."
    > What is the capital of France?
    The capital of France is Paris.
    > /reset

Each turn renders the whole history with the chat template
(``model.chat``) and streams the reply. Commands:

    /reset          forget the conversation (the system message stays)
    /system TEXT    set the system message (and forget the conversation); "/system" alone removes it
    /help           list the commands
    /exit           leave (so does end of input, Ctrl-D)

Ctrl-C while a reply streams stops that reply, not the program; the partial
reply stays in the history (it is what the model said, and the next turn
sees it). Ctrl-C at the prompt gives a fresh prompt.

When the conversation no longer fits the context (history plus room for a
reply), the oldest turns are dropped first, user and assistant together,
and a note on stderr says how many (llama.cpp's context shift keeps the start
of the context and drops what follows it; here the system message stays and
whole turns go). A message that does not fit even alone is refused with both
numbers. Prompts and notes go to stderr, the replies to stdout, so
``zigllama chat < questions.txt > answers.txt`` works.
"""

from __future__ import annotations

import sys
from typing import TextIO

from ..foundation.errors import ContextLengthError, ZigLlamaError

HELP = """commands: /reset (forget the conversation), /system TEXT (set the system message; "/system" alone
removes it), /help, /exit (or Ctrl-D). Ctrl-C stops a reply."""


class ChatSession:
    """The history of one terminal conversation and the rules that keep it inside the context."""

    def __init__(self, model, system: str | None = None, max_tokens: int = 512, **sampling):
        self.model = model
        self.system = system or None
        self.max_tokens = max_tokens
        self.sampling = sampling
        self.turns: list[dict] = []  # user / assistant messages, oldest first

    def messages(self, turns: list[dict] | None = None) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + (self.turns if turns is None else turns)

    def reserve(self) -> int:
        """Tokens kept free for the reply when deciding what to drop."""
        return max(1, min(self.max_tokens, self.model.n_ctx // 4))

    def fit(self, turns: list[dict]) -> tuple[list[dict], int]:
        """Drop the oldest whole turns until history + reply room fits; (kept turns, messages dropped).

        Raises ContextLengthError when the newest user message does not fit even alone.
        """
        budget = self.model.n_ctx - self.reserve()
        dropped = 0
        while True:
            n = len(self.model.tokenizer.apply_chat_template(self.messages(turns), add_generation_prompt=True))
            if n <= budget or len(turns) == 1:
                break
            k = 2 if len(turns) > 2 and turns[0]["role"] == "user" and turns[1]["role"] == "assistant" else 1
            turns, dropped = turns[k:], dropped + k
        if n > self.model.n_ctx - 1:
            raise ContextLengthError(f"this message is {n} tokens once rendered with the chat template (history "
                                     f"dropped); the context holds {self.model.n_ctx} tokens, and the reply needs "
                                     "room too: shorten it, or start with a larger --n-ctx")
        return turns, dropped


def run(model, system: str | None = None, max_tokens: int = 512, stdin: TextIO | None = None,
        stdout: TextIO | None = None, stderr: TextIO | None = None, **sampling) -> int:
    """The read-reply loop; returns the exit status (0)."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    session = ChatSession(model, system=system, max_tokens=max_tokens, **sampling)
    interactive = stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401 - line editing and history for input()
        except ImportError:
            pass
        name = getattr(model, "path", None)
        print(f"[chat with {name.name if name else 'the model'}; /help for commands, Ctrl-D to leave]", file=stderr)

    def note(text: str) -> None:
        print(f"[{text}]", file=stderr, flush=True)

    while True:
        try:
            line = _read_line(stdin, stderr, interactive)
        except KeyboardInterrupt:
            stderr.write("\n")
            note("Ctrl-C: /exit or Ctrl-D to leave")
            continue
        if line is None or line.strip() == "/exit":
            return 0
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            cmd, _, arg = text.partition(" ")
            if cmd == "/reset":
                session.turns = []
                note("conversation reset")
            elif cmd == "/system":
                session.system, session.turns = (arg.strip() or None), []
                note(f"system message set: {session.system!r}; conversation reset" if session.system
                     else "system message removed; conversation reset")
            elif cmd == "/help":
                print(HELP, file=stderr)
            else:
                note(f"unknown command {cmd!r}; {HELP}")
            continue

        candidate = session.turns + [{"role": "user", "content": line.rstrip("\n")}]
        try:
            kept, dropped = session.fit(candidate)
        except ContextLengthError as e:
            note(f"not sent: {e}")
            continue
        except ZigLlamaError as e:
            note(f"not sent: {e}")
            continue
        if dropped:
            note(f"context full: dropped the {dropped} oldest message{'s' if dropped > 1 else ''} of the conversation")
        session.turns = kept
        reply, interrupted = [], False
        try:
            for piece in model.chat(session.messages(), max_tokens=max_tokens, **sampling):
                reply.append(piece)
                stdout.write(piece)
                stdout.flush()
        except KeyboardInterrupt:
            interrupted = True
        stdout.write("\n")
        stdout.flush()
        session.turns.append({"role": "assistant", "content": "".join(reply)})
        stats = getattr(model, "last_stats", {}) or {}
        if interrupted:
            note("interrupted: the partial reply stays in the history")
        elif stats.get("stop_reason") == "context_full":
            note("reply cut: the context is full (the next message drops the oldest turns)")
        elif stats.get("stop_reason") == "max_tokens":
            note(f"reply cut at --max-tokens {max_tokens}")


def _read_line(stdin: TextIO, stderr: TextIO, interactive: bool) -> str | None:
    """One line of input (None at end of input); the prompt goes to stderr."""
    if interactive and stdin is sys.stdin:
        try:
            stderr.write("> ")
            stderr.flush()
            return input()
        except EOFError:
            stderr.write("\n")
            return None
    line = stdin.readline()
    return line if line else None
