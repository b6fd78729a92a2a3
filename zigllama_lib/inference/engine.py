"""The public model object: ``zl.load(...)`` returns a :class:`LanguageModel`.

    model = zl.load("smollm2-135m-instruct")
    ids = model.tokenizer.encode("Hello", add_special=True)
    logits = model.logits(ids)                          # (len(ids), n_vocab), fresh context
    for piece in model.generate("Once upon a time", max_tokens=32, temperature=0.0):
        print(piece, end="", flush=True)
    for piece in model.chat([{"role": "user", "content": "Hi!"}], temperature=0.0):
        print(piece, end="", flush=True)               # the reply, through the model's chat template
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np

from ..foundation.errors import ConfigError, ContextLengthError
from ..foundation.threads import set_threads
from ..models.decoder import numerics_named
from ..models.loader import load_gguf
from ..models.registry import DEFAULT_MODEL
from .generation import GenerationConfig, generate_ids, make_sampler
from .grammar import Grammar, GrammarMatcher, TokenTrie
from .streaming import Utf8Stream, stream_text

DEFAULT_N_CTX = 2048


class LanguageModel:
    """A loaded GGUF model with its tokenizer, ready to score and generate.

    Args:
        name_or_path: registry name (fetched on first use) or path to a ``.gguf``.
        n_ctx: context window in tokens (default: the training context, at most 2048).
        numerics: default for generation, ``"llama.cpp"`` (8-bit activations,
            float16 KV cache: reproduces llama.cpp's tokens on quantised files) or
            ``"float"`` (exact float32 maths of the dequantised weights).
        n_threads: threads for the kernels (default: all available cores).
    """

    def __init__(self, name_or_path: str | os.PathLike = DEFAULT_MODEL, n_ctx: int | None = None,
                 numerics: str = "llama.cpp", n_threads: int | None = None, progress: bool = True):
        set_threads(n_threads)
        loaded = load_gguf(name_or_path, progress=progress)
        self.path = loaded.path
        self.gguf = loaded.gguf
        self.spec = loaded.spec
        self.decoder = loaded.decoder
        self.tokenizer = loaded.tokenizer
        n_ctx = n_ctx if n_ctx is not None else min(self.spec.n_ctx_train, DEFAULT_N_CTX)
        if not isinstance(n_ctx, int) or n_ctx < 1:
            raise ConfigError(f"n_ctx must be a positive integer, got {n_ctx!r}")
        self.n_ctx = n_ctx
        self.numerics = numerics_named(numerics).name
        self._token_trie: TokenTrie | None = None  # built by the first grammar-constrained generation
        self.last_stats: dict = {}

    def __repr__(self) -> str:
        s = self.spec
        return (f"LanguageModel({self.path.name!r}, arch={s.arch}, layers={s.n_layer}, d_model={s.d_model}, "
                f"heads={s.n_head}/{s.n_kv_head}, vocab={s.n_vocab}, n_ctx={self.n_ctx}, numerics={self.numerics!r})")

    @property
    def n_vocab(self) -> int:
        return self.spec.n_vocab

    # -- scoring ----------------------------------------------------------
    def logits(self, ids: Sequence[int], numerics: str = "float") -> np.ndarray:
        """Logits for every position of ``ids`` in a fresh context: (len(ids), n_vocab) float32.

        ``numerics="float"`` (the default here) is the exact reference maths;
        pass ``"llama.cpp"`` to see what the generation path computes.
        """
        nm = numerics_named(numerics)
        ids = list(ids)
        if len(ids) > self.n_ctx:
            raise ContextLengthError(f"{len(ids)} tokens do not fit the context of {self.n_ctx} tokens")
        cache = self.decoder.new_cache(max(1, len(ids)), nm)
        return self.decoder.forward(ids, cache, nm, all_logits=True)

    # -- generation -------------------------------------------------------
    def generate_ids(self, ids: Sequence[int], max_tokens: int = 128, temperature: float = 0.8,
                     top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, seed: int | None = None,
                     stop_at_eog: bool = True, numerics: str | None = None,
                     grammar: str | None = None, **sampler_options) -> Iterator[int]:
        """Yield generated token ids after prompt ``ids`` (sampler defaults are llama.cpp's).

        ``grammar``: GBNF text (e.g. from :func:`.json_schema.json_schema_to_gbnf`); every token is
        then drawn from the tokens it admits, and end-of-generation only once it is complete.
        ``sampler_options``: any other :class:`.sampling.SamplerConfig` field (``repeat_penalty``,
        ``presence_penalty``, ``dry_multiplier``, ``typical_p``, ``xtc_probability``, ``mirostat``...)."""
        sampler = make_sampler(temperature, top_k, top_p, min_p, seed, tokenizer=self.tokenizer, n_ctx=self.n_ctx,
                               **sampler_options)
        config = GenerationConfig(max_tokens=max_tokens, stop_at_eog=stop_at_eog)
        self.last_stats = {}
        matcher = self.grammar_matcher(grammar) if grammar is not None else None
        return generate_ids(self.decoder, list(ids), sampler, numerics_named(numerics or self.numerics),
                            self.n_ctx, self.tokenizer.is_eog, config, stats=self.last_stats,
                            logits_processor=matcher.mask if matcher else None,
                            on_token=matcher.accept if matcher else None)

    def grammar_matcher(self, grammar: str) -> GrammarMatcher:
        """A fresh :class:`.grammar.GrammarMatcher` for GBNF ``grammar`` over this vocabulary
        (its token trie built once per model)."""
        if self._token_trie is None:
            self._token_trie = TokenTrie.from_tokenizer(self.tokenizer)
        return GrammarMatcher(Grammar.parse(grammar), self._token_trie)

    def generate(self, prompt: str, max_tokens: int = 128, temperature: float = 0.8, top_k: int = 40,
                 top_p: float = 0.95, min_p: float = 0.05, seed: int | None = None,
                 add_special: bool = True, parse_special: bool = False, stop_at_eog: bool = True,
                 numerics: str | None = None, grammar: str | None = None, **sampler_options) -> Iterator[str]:
        """Stream the continuation of ``prompt`` as text pieces (never splitting a UTF-8 character);
        ``grammar``: GBNF text constraining it (see :meth:`generate_ids`)."""
        if not isinstance(prompt, str):
            raise ConfigError(f"prompt must be a str, got {type(prompt).__name__}")
        ids = self.tokenizer.encode(prompt, add_special=add_special, parse_special=parse_special)
        stream = Utf8Stream()
        for token in self.generate_ids(ids, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                                       top_p=top_p, min_p=min_p, seed=seed, stop_at_eog=stop_at_eog,
                                       numerics=numerics, grammar=grammar, **sampler_options):
            piece = stream.push(self.tokenizer.token_bytes(token, render_special=False))
            if piece:
                yield piece
        tail = stream.flush()
        if tail:
            yield tail

    # -- chat -------------------------------------------------------------
    def chat_prompt_ids(self, messages, tools=None, chat_template: str | None = None, **template_kwargs) -> list[int]:
        """Token ids of ``messages`` rendered with the chat template and the assistant's turn opened.

        ``tokenizer.apply_chat_template(messages, add_generation_prompt=True)``;
        ContextLengthError (with both numbers) if they do not fit ``n_ctx``.
        """
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, tools=tools,
                                                 chat_template=chat_template, **template_kwargs)
        if len(ids) > self.n_ctx:
            raise ContextLengthError(f"the conversation is {len(ids)} tokens once rendered with the chat template; "
                                     f"it does not fit the context of {self.n_ctx} tokens")
        return ids

    def chat_ids(self, messages, max_tokens: int = 128, temperature: float = 0.8, top_k: int = 40,
                 top_p: float = 0.95, min_p: float = 0.05, seed: int | None = None, numerics: str | None = None,
                 tools=None, chat_template: str | None = None, grammar: str | None = None,
                 sampler_options: dict | None = None, **template_kwargs) -> Iterator[int]:
        """Yield the reply's token ids to ``messages`` (stops at the end-of-turn token, not yielded).

        The conversation is rendered and checked now (a bad template or a
        conversation longer than the context raises here, before any token);
        the tokens come from :meth:`generate_ids`.
        """
        ids = self.chat_prompt_ids(messages, tools=tools, chat_template=chat_template, **template_kwargs)
        return self.generate_ids(ids, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                 min_p=min_p, seed=seed, numerics=numerics, grammar=grammar,
                                 **(sampler_options or {}))

    def chat(self, messages, max_tokens: int = 128, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95,
             min_p: float = 0.05, seed: int | None = None, numerics: str | None = None, tools=None,
             chat_template: str | None = None, grammar: str | None = None, sampler_options: dict | None = None,
             **template_kwargs) -> Iterator[str]:
        """Stream the reply to ``messages`` as text pieces, as :meth:`generate` does.

        ``messages``: ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``.
        Greedy (``temperature=0``) it equals ``generate(rendered, add_special=False,
        parse_special=True)`` on the rendered prompt. Errors are raised at the call.
        """
        tokens = self.chat_ids(messages, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                               min_p=min_p, seed=seed, numerics=numerics, tools=tools, chat_template=chat_template,
                               grammar=grammar, sampler_options=sampler_options, **template_kwargs)
        return stream_text(tokens, lambda t: self.tokenizer.token_bytes(t, render_special=False))

    def complete(self, prompt: str, **kwargs) -> str:
        """The whole continuation as one string (``generate`` joined)."""
        return "".join(self.generate(prompt, **kwargs))


def load(name_or_path: str | os.PathLike = DEFAULT_MODEL, **kwargs) -> LanguageModel:
    """Load a model by registry name or ``.gguf`` path; see :class:`LanguageModel`."""
    return LanguageModel(name_or_path, **kwargs)
