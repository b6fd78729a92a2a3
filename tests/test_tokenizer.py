"""zigllama_lib.models.tokenizer against llama.cpp (the oracle) on SmolLM2 (BPE) and Gemma 3 (SPM).

The oracle is ``llama_cpp.Llama(model_path, vocab_only=True).tokenize(text_bytes,
add_bos, special)``; models are found in ``$ZIGLLAMA_CACHE`` (default
``~/.cache/zigllama``). Tests that need llama.cpp get it through the ``oracle``
fixture, which skips them (saying why) when llama-cpp-python is missing.
"""

from __future__ import annotations

import ctypes
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest

from oracles import require_module, require_file

from zigllama_lib.foundation.errors import TokenizerError, ZigLlamaError
from zigllama_lib.foundation.gguf import GGUFFile
from zigllama_lib.models.tokenizer import (
    BPETokenizer,
    Tokenizer,
    _cut_at,
    bpe_merge,
    byte_symbols,
    bytes_to_symbols,
    parse_merges,
    symbols_to_bytes,
    text_to_utf8,
    utf8_to_text,
)
from zigllama_lib.models.tokenizer_spm import SPMTokenizer, utf8_lengths
from zigllama_lib.models.tokenizer_vocab import ATTR_CONTROL, ATTR_UNUSED

CACHE = Path(os.path.expanduser(os.environ.get("ZIGLLAMA_CACHE", "~/.cache/zigllama")))
FILES = {"smollm": "SmolLM2-135M-Instruct.Q4_1.gguf", "gemma": "gemma-3-270m-q4_k_m.gguf"}

PARAGRAPH = (
    "Tokenizers turn text into the integers a language model reads. Byte-level BPE starts from the 256 "
    "bytes of UTF-8, so no input is ever out of vocabulary: “naïve café” and 東京 and 🙂 all become "
    "bytes first. The merges then glue frequent neighbours together, in the order they were learnt, "
    "until no listed pair is left. Pre-tokenization decides where merges may never cross: between "
    "letters and digits, before a space, around punctuation! Numbers like 3.14159, 1,000,000 and "
    "2024-11-23 are split digit by digit in SmolLM2 (its pre-tokenizer isolates every \\p{N}). "
    "Contractions such as don't, I'm, they'll and we've get their own pieces.\n\n"
    "def tokenize(text):\n    return [vocab[w] for w in split(text)]\n\n"
    "SentencePiece, used by Gemma, instead writes spaces as ▁ and merges by score, with byte fallback "
    "(<0xE2><0x96><0x81>) for anything the vocabulary lacks. Ελληνικά, русский, العربية, हिन्दी, "
    "ไทย, 한국어 — every script goes through the same machinery.   Trailing spaces, tabs\tand\n"
)
PARAGRAPH = (PARAGRAPH * 3)[:2048]  # ~2 KB

# (test id, text): every string is checked against llama.cpp on both models
CORPUS = [
    ("empty", ""),
    ("space", " "),
    ("two_spaces", "  "),
    ("tab", "\t"),
    ("newline", "\n"),
    ("three_newlines", "\n\n\n"),
    ("space_newline_space", " \n "),
    ("crlf", "line one\r\nline two\rthree"),
    ("hello", "Hello world"),
    ("trailing_spaces", "Hello world   "),
    ("leading_spaces", "   leading spaces"),
    ("space_runs", "a  b   c    d\t\te"),
    ("tabs_newlines", "tabs\tand\n\ttabbed\n\n  indented"),
    ("unicode_spaces", "ideographic\u3000space, nbsp\u00a0and\u2009thin, nel\u0085end"),
    ("contractions", "I'm sure they'll say we've done it, DON'T you think? It's John's."),
    ("contraction_forms", "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'LL 'x"),
    ("mixed_case", "CamelCaseIdentifiers XMLHttpRequest iPhone snake_case_names ÉCOLE"),
    ("numbers", "1234567890123456789 3.14159 1,000,000 -42 +7 1e-9 0x1F"),
    ("dates_times", "On 2024-11-23 at 12:30:05, room 007."),
    ("non_ascii_digits", "١٢٣٤٥ ½ x² Ⅻ ５６"),
    ("punctuation_runs", "!!!??? ... --- *** /// ~~~ ^^^ $$$ @@ ##"),
    ("url_email", "mail someone@example.com or see https://example.org/a/b?q=1&r=2#frag"),
    ("python", "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n"),
    ("c_code", '#include <stdio.h>\nint main(void) { printf("%d\\n", 42); return 0; }\n'),
    ("json", '{"name": "zig", "values": [1, 2.5, null, true], "nested": {"k": "v"}}'),
    ("accents", "Café, naïve, résumé, coöperate, Ångström, Straße, Übermaß"),
    ("combining_marks", "e\u0301 vs \u00e9, a\u0300\u0301\u0302 stacked, n\u0303o"),
    ("chinese", "你好，世界！今天天气很好。机器学习"),
    ("japanese", "日本語のテキストとカタカナ、ひらがな。東京タワー"),
    ("korean", "안녕하세요 세계, 한국어 텍스트입니다"),
    ("arabic", "مرحبا بالعالم، كيف حالك؟"),
    ("hebrew", "שלום עולם"),
    ("hindi", "नमस्ते दुनिया, यह हिन्दी है।"),
    ("thai", "สวัสดีชาวโลก ภาษาไทย"),
    ("russian", "Привет, мир! Как дела? ЁЖИК"),
    ("greek", "Γειά σου Κόσμε, αβγδε ΑΒΓΔΕ"),
    ("emoji", "emoji 😀😃😄 and 👍🏻👍🏽👍🏿 skin tones"),
    ("emoji_zwj", "family 👩\u200d👩\u200d👧\u200d👦 and coder 👩🏽\u200d💻 and 🏳️\u200d🌈"),
    ("flags", "flags 🇫🇷🇯🇵🇺🇳 and 🏴\u200d☠️ and 🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f"),
    ("emoji_unicode16", "new emoji \U0001fae9\U0001fadf after Unicode 15.1"),
    ("math", "∑ x² ≤ ∞, ∀ε>0 ∃δ: |x−y|<δ ⇒ f(x)≈f(y)"),
    ("fullwidth", "ＡＢＣ　１２３！"),
    ("zero_width", "zero\u200bwidth\u200cjoiners\u200d\ufeffbom"),
    ("controls", "control \x00\x01\x1c\x1f chars \x7f end"),
    ("soft_hyphen_nbsp", "soft\u00adhyphen and non\u00a0breaking"),
    ("lone_surrogate", "broken \ud800 surrogate \udfff"),
    ("special_text", "<|im_start|>user\nhi<|im_end|>\n"),
    ("endoftext", "a<|endoftext|>b<|im_end|><|im_end|>"),
    ("gemma_turns", "<start_of_turn>user\nhi<end_of_turn>\n<bos><eos>"),
    ("byte_token_text", "<0x41> <0xE2><0x96><0x81> <unused0> [multimodal]"),
    ("repeat_a", "a" * 300),
    ("repeat_space_x", " x" * 100),
    ("paragraph_2kb", PARAGRAPH),
]
IDS = [name for name, _ in CORPUS]
TEXTS = [text for _, text in CORPUS]
SPECIAL_TEXTS = [t for n, t in CORPUS if n in ("special_text", "endoftext", "gemma_turns", "byte_token_text", "hello")]


def model_path(name: str) -> Path:
    path = CACHE / FILES[name]
    return require_file(path)


@pytest.fixture(scope="module")
def oracle():
    """The llama_cpp module (the oracle); skips, saying so, when llama-cpp-python is missing."""
    return require_module("llama_cpp")


@pytest.fixture(scope="module")
def metadata():
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            cache[name] = dict(GGUFFile(model_path(name)).metadata)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def toks(metadata):
    cache: dict[str, Tokenizer] = {}

    def get(name: str) -> Tokenizer:
        if name not in cache:
            cache[name] = Tokenizer.from_metadata(metadata(name))
        return cache[name]

    return get


@pytest.fixture(scope="module")
def refs(oracle):
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = oracle.Llama(model_path=str(model_path(name)), vocab_only=True, verbose=False)
        return cache[name]

    yield get
    for llm in cache.values():
        llm.close()


def ref_tokenize(llm, text: str, add_special: bool, parse_special: bool) -> list[int]:
    """llama.cpp's ids for ``text`` (given the bytes our tokenizer encodes)."""
    return llm.tokenize(text_to_utf8(text), add_bos=add_special, special=parse_special)


def ref_piece(oracle, llm, token_id: int, special: bool) -> bytes:
    """llama.cpp's ``token_to_piece`` (Llama.detokenize truncates pieces over 32 bytes)."""
    buf = ctypes.create_string_buffer(256)
    n = oracle.llama_token_to_piece(oracle.llama_model_get_vocab(llm.model), token_id, buf, 256, 0, special)
    assert n >= 0
    return buf.raw[:n]


# -- the corpus against llama.cpp ------------------------------------------------

def test_corpus_covers_the_brief():
    assert len(CORPUS) >= 40 and len(set(IDS)) == len(IDS)
    assert "" in TEXTS and " " in TEXTS and len(PARAGRAPH) == 2048


@pytest.mark.parametrize("model", ["smollm", "gemma"])
@pytest.mark.parametrize("text", TEXTS, ids=IDS)
def test_encode_matches_llama_cpp(model, text, toks, refs):
    tok, llm = toks(model), refs(model)
    assert tok.encode(text) == ref_tokenize(llm, text, True, False)
    assert tok.encode(text, add_special=False) == ref_tokenize(llm, text, False, False)


@pytest.mark.parametrize("model", ["smollm", "gemma"])
@pytest.mark.parametrize("text", TEXTS, ids=IDS)
def test_round_trip(model, text, toks):
    tok = toks(model)
    # SentencePiece writes spaces as U+2581, so a literal U+2581 comes back as a space (as in llama.cpp)
    expected = text if model == "smollm" else text.replace("\u2581", " ")
    assert tok.decode(tok.encode(text, add_special=False)) == expected


def test_spm_cannot_tell_u2581_from_a_space(toks, refs):
    gemma = toks("gemma")
    assert gemma.encode("a\u2581b") == gemma.encode("a b") == ref_tokenize(refs("gemma"), "a\u2581b", True, False)


@pytest.mark.parametrize("model", ["smollm", "gemma"])
@pytest.mark.parametrize("text", SPECIAL_TEXTS)
def test_parse_special_matches_llama_cpp(model, text, toks, refs):
    tok, llm = toks(model), refs(model)
    ours = tok.encode(text, parse_special=True)
    assert ours == ref_tokenize(llm, text, True, True)
    assert tok.decode(ours, skip_special=False).endswith(text)  # control tokens render as their text


FUZZ_POOL = list("aAzZ  \t\n\r'sStTlLdDmMvVrReE0189.,!?;:-_()[]{}<>|/\\\"#$%^&*~`@+=") + list(
    "éÉñßøœçü東京日本語한국어ไทยहिन्दीРусΕλλη١٢½²Ⅻ①😀👍🏽🇫🇷\u200d\u0301\u3000\u00a0\u2028\u0085\x1c\x00\ufeff"
) + ["<|im_start|>", "<|im_end|>", "<start_of_turn>", "<bos>", "<0x41>", "<unused3>", "'ll", "   ", "\n\n",
     "\U0001fae9", "\U00010d4a", "\ud800"]


@pytest.mark.parametrize("model", ["smollm", "gemma"])
def test_random_strings_match_llama_cpp(model, toks, refs):
    """Seeded fuzz: 300 random strings from a pool of troublemakers, with and without parse_special."""
    tok, llm, rng = toks(model), refs(model), random.Random(model)
    for _ in range(300):
        text = "".join(rng.choice(FUZZ_POOL) for _ in range(rng.randrange(1, 60)))
        for special in (False, True):
            assert tok.encode(text, parse_special=special) == ref_tokenize(llm, text, True, special), (text, special)


def test_special_text_is_plain_text_without_parse_special(toks):
    tok = toks("smollm")
    assert tok.encode("<|im_start|>", parse_special=True) == [1]
    plain = tok.encode("<|im_start|>")
    assert 1 not in plain and len(plain) > 1 and tok.decode(plain) == "<|im_start|>"


# -- the vocabulary against llama.cpp ---------------------------------------------

@pytest.mark.parametrize("model", ["smollm", "gemma"])
def test_every_token_attribute_and_eog_matches_llama_cpp(model, toks, refs, oracle):
    tok, llm = toks(model), refs(model)
    vocab = oracle.llama_model_get_vocab(llm.model)
    assert oracle.llama_vocab_n_tokens(vocab) == tok.n_vocab
    attrs = [oracle.llama_vocab_get_attr(vocab, i) for i in range(tok.n_vocab)]
    assert attrs == [tok.token_attr(i) for i in range(tok.n_vocab)]
    assert {i for i in range(tok.n_vocab) if oracle.llama_vocab_is_eog(vocab, i)} == set(tok.eog_ids)


@pytest.mark.parametrize("model", ["smollm", "gemma"])
def test_every_token_piece_matches_llama_cpp(model, toks, refs, oracle):
    tok, llm = toks(model), refs(model)
    step = 1 if tok.n_vocab < 100_000 else 7  # gemma: every 7th token keeps this under a few seconds
    for i in range(0, tok.n_vocab, step):
        assert tok.token_bytes(i) == ref_piece(oracle, llm, i, True), i
        assert tok.token_bytes(i, render_special=False) == ref_piece(oracle, llm, i, False), i


@pytest.mark.parametrize("model", ["smollm", "gemma"])
def test_special_ids_match_llama_cpp(model, toks, refs, oracle):
    tok, llm = toks(model), refs(model)
    vocab = oracle.llama_model_get_vocab(llm.model)
    ref = {"bos": oracle.llama_vocab_bos(vocab), "eos": oracle.llama_vocab_eos(vocab),
           "eot": oracle.llama_vocab_eot(vocab), "pad": oracle.llama_vocab_pad(vocab),
           "fim_rep": oracle.llama_vocab_fim_rep(vocab), "add_bos": oracle.llama_vocab_get_add_bos(vocab),
           "add_eos": oracle.llama_vocab_get_add_eos(vocab)}
    none = -1  # LLAMA_TOKEN_NULL
    ours = {"bos": tok.bos_id, "eos": tok.eos_id, "eot": tok.eot_id, "pad": tok.pad_id, "fim_rep": tok.ids.fim_rep,
            "add_bos": tok.add_bos, "add_eos": tok.add_eos}
    assert {k: none if v is None else v for k, v in ours.items()} == ref


def test_known_special_ids(toks):
    smol, gemma = toks("smollm"), toks("gemma")
    assert (smol.bos_id, smol.eos_id, smol.eot_id, smol.unk_id, smol.pad_id) == (1, 2, 0, 0, 2)
    assert smol.is_eog(2) and smol.is_eog(0) and not smol.is_eog(1) and not smol.is_eog(905)
    assert (gemma.bos_id, gemma.eos_id, gemma.eot_id) == (2, 1, 106)
    assert gemma.id_to_piece(106) == "<end_of_turn>" and gemma.is_eog(106)
    assert smol.id_to_piece(905) == "Ġworld" and smol.token_bytes(905) == b" world"
    assert smol.token_bytes(2) == b"<|im_end|>" and smol.token_bytes(2, render_special=False) == b""
    assert gemma.token_attr(6) & ATTR_CONTROL and gemma.token_attr(6) & ATTR_UNUSED  # <unused0>


# -- add_special --------------------------------------------------------------

def test_add_special_follows_add_bos_token(metadata, toks):
    smol, gemma = toks("smollm"), toks("gemma")
    assert smol.add_bos is False and smol.encode("hi") == smol.encode("hi", add_special=False)
    assert gemma.add_bos is True and gemma.encode("hi") == [2] + gemma.encode("hi", add_special=False)
    md = {**metadata("smollm"), "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_eos_token": True}
    t = Tokenizer.from_metadata(md)
    assert t.encode("hi") == [1] + t.encode("hi", add_special=False) + [2]
    assert t.encode("") == [1, 2] and t.encode("", add_special=False) == []


def test_add_bos_defaults_when_the_key_is_absent(metadata):
    md = {k: v for k, v in metadata("smollm").items() if k != "tokenizer.ggml.add_bos_token"}
    assert Tokenizer.from_metadata(md).add_bos is False  # byte-level BPE default
    assert Tokenizer.from_metadata({**md, "tokenizer.ggml.pre": "llama-bpe"}).add_bos is True  # llama3 default
    gemma = {k: v for k, v in metadata("gemma").items() if k != "tokenizer.ggml.add_bos_token"}
    assert Tokenizer.from_metadata(gemma).add_bos is True  # SPM default


# -- errors ---------------------------------------------------------------------

def test_missing_tokens_is_refused(metadata):
    md = {k: v for k, v in metadata("smollm").items() if k != "tokenizer.ggml.tokens"}
    with pytest.raises(TokenizerError, match="missing metadata key 'tokenizer.ggml.tokens'"):
        Tokenizer.from_metadata(md)


def test_missing_merges_or_model_is_refused(metadata):
    md = metadata("smollm")
    with pytest.raises(TokenizerError, match="tokenizer.ggml.merges"):
        Tokenizer.from_metadata({k: v for k, v in md.items() if k != "tokenizer.ggml.merges"})
    with pytest.raises(TokenizerError, match="tokenizer.ggml.model"):
        Tokenizer.from_metadata({k: v for k, v in md.items() if k != "tokenizer.ggml.model"})


def test_merge_with_unknown_token_is_refused(metadata):
    md = metadata("smollm")
    with pytest.raises(TokenizerError, match=r"merge #1 'nope zz' does not join two tokens"):
        Tokenizer.from_metadata({**md, "tokenizer.ggml.merges": ["Ġ t", "nope zz"]})
    with pytest.raises(TokenizerError, match="merge #0"):
        Tokenizer.from_metadata({**md, "tokenizer.ggml.merges": ["nospace"]})


def test_unknown_pre_tokenizer_is_refused(metadata):
    md = metadata("smollm")
    with pytest.raises(TokenizerError, match="unknown pre-tokenizer type 'klingon'"):
        Tokenizer.from_metadata({**md, "tokenizer.ggml.pre": "klingon"})
    with pytest.raises(TokenizerError, match="'kimi-k2'.*not implemented"):
        Tokenizer.from_metadata({**md, "tokenizer.ggml.pre": "kimi-k2"})


def test_missing_pre_falls_back_to_default_with_a_warning(metadata):
    md = {k: v for k, v in metadata("smollm").items() if k != "tokenizer.ggml.pre"}
    with pytest.warns(UserWarning, match="default"):
        tok = Tokenizer.from_metadata(md)
    assert tok.pre == "default"


def test_unsupported_model_and_bad_vocab_are_refused(metadata):
    md = metadata("smollm")
    with pytest.raises(TokenizerError, match="'bert' is not supported"):
        Tokenizer.from_metadata({**md, "tokenizer.ggml.model": "bert"})
    tokens = list(md["tokenizer.ggml.tokens"])
    with pytest.raises(TokenizerError, match="duplicate token"):
        Tokenizer.from_metadata({**md, "tokenizer.ggml.tokens": tokens[:-1] + [tokens[0]]})
    with pytest.raises(TokenizerError, match="token_type.*49151 entries for 49152 tokens"):
        Tokenizer.from_metadata({**md, "tokenizer.ggml.token_type": md["tokenizer.ggml.token_type"][:-1]})
    no_bos = {**md, "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.pre": "chatglm-bpe"}
    del no_bos["tokenizer.ggml.bos_token_id"]  # chatglm has no default BOS
    with pytest.raises(TokenizerError, match="add_bos_token is true, but .*bos_token_id is not set"):
        Tokenizer.from_metadata(no_bos)


def test_out_of_range_special_id_keeps_the_default_with_a_warning(metadata):
    md = {**metadata("smollm"), "tokenizer.ggml.eos_token_id": 10**6}
    with pytest.warns(UserWarning, match="outside the vocabulary"):
        tok = Tokenizer.from_metadata(md)
    assert tok.eos_id == 11  # llama.cpp's byte-level BPE default


def test_bad_ids_and_inputs(toks):
    tok = toks("smollm")
    for bad in (tok.n_vocab, -1, 10**9):
        with pytest.raises(TokenizerError, match="out of range"):
            tok.decode([1, bad])
        with pytest.raises(TokenizerError, match="out of range"):
            tok.token_bytes(bad)
        with pytest.raises(TokenizerError, match="out of range"):
            tok.id_to_piece(bad)
    with pytest.raises(TokenizerError, match="not an integer"):
        tok.decode([1.5])
    with pytest.raises(TokenizerError, match="needs a str"):
        tok.encode(b"bytes")
    assert issubclass(TokenizerError, ZigLlamaError)
    assert tok.decode(np.array([19556, 905], np.int64)) == "Hello world"


# -- pieces of the machinery ---------------------------------------------------

def test_byte_symbols_are_a_bijection():
    table = byte_symbols()
    assert len(set(table)) == 256 and table[ord("A")] == "A" and table[0x20] == "Ġ" and table[0x0A] == "Ċ"
    data = bytes(range(256))
    assert symbols_to_bytes(bytes_to_symbols(data)) == data


def test_utf8_helpers_round_trip_lone_surrogates():
    assert text_to_utf8("é\ud800") == b"\xc3\xa9\xed\xa0\x80"
    assert utf8_to_text(b"a\xed\xa0\x80\xff") == "a\ud800\ufffd"
    assert utf8_to_text(b"\xe2\x96") == "\ufffd"


def test_bpe_merge_lowest_rank_first_leftmost_on_ties():
    ranks = {("a", "b"): 1, ("b", "c"): 0, ("a", "bc"): 2, ("x", "x"): 0}
    assert bpe_merge(["a", "b", "c"], ranks) == ["abc"]
    assert bpe_merge(["x", "x", "x"], ranks) == ["xx", "x"]
    steps: list[list[str]] = []
    bpe_merge(["a", "b", "c"], ranks, steps)
    assert steps == [["a", "bc"], ["abc"]]


def test_parse_merges_keeps_the_first_of_duplicates():
    vocab = {"a": 0, "b": 1}
    assert parse_merges(["a b", "a b"], vocab) == {("a", "b"): 0}


def test_cut_at_special_text():
    assert _cut_at(["a<x>b<x>"], "<x>", 7, False, False) == ["a", 7, "b", 7]
    assert _cut_at(["a  <x>  b"], "<x>", 7, True, True) == ["a", 7, "b"]
    assert _cut_at([3, "<x>"], "<x>", 7, False, False) == [3, 7]


def test_partition_prefers_the_longest_special_text(toks):
    tok = toks("smollm")
    assert tok.partition("a<|im_end|>b", parse_special=True) == ["a", 2, "b"]
    assert tok.partition("a<|im_end|>b", parse_special=False) == ["a<|im_end|>b"]


def test_spm_character_cuts_follow_lead_bytes():
    assert utf8_lengths("a▁é".encode()) == [0, 1, 4, 6]
    assert utf8_lengths(b"\xe2") == [0, 1]  # clipped at the end


def test_kinds(toks):
    assert isinstance(toks("smollm"), BPETokenizer) and toks("smollm").pre == "smollm"
    assert isinstance(toks("gemma"), SPMTokenizer) and toks("gemma").model == "llama"


# -- teaching: pre-tokens and merge steps ------------------------------------

def test_pre_tokenize(toks):
    assert toks("smollm").pre_tokenize("I'm  fine 42") == ["I", "'m", " ", " fine", " ", "4", "2"]
    assert toks("gemma").pre_tokenize("a b") == ["a▁b"]


@pytest.mark.parametrize("model", ["smollm", "gemma"])
def test_merge_steps_end_in_the_encoded_tokens(model, toks):
    tok = toks(model)
    text = "Hello world, naïve 東京 12"
    steps = tok.merge_steps(text)
    final = [part for word in steps for part in word[-1]]
    assert b"".join(final).replace("▁".encode(), b" ") == text.encode()
    assert final == [tok.token_bytes(i) if model == "smollm" else tok.vocab.texts[i].encode()
                     for i in tok.encode(text, add_special=False)]
    for word in steps:
        assert all(len(a) == len(b) + 1 for a, b in zip(word, word[1:]))  # one merge per step
        assert all(b"".join(a) == b"".join(word[0]) for a in word)


def test_merge_steps_example(toks):
    steps = toks("smollm").merge_steps(" hello")[0]
    assert steps[0] == [bytes([b]) for b in b" hello"] and steps[-1] == [b" hello"]


# -- speed -------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["smollm", "gemma"])
def test_a_1000_character_prompt_tokenizes_fast(model, toks):
    tok = toks(model)
    text = (PARAGRAPH.replace("Tokenizers", "Fresh words") + " quixotic zephyrs")[:1000]
    start = time.perf_counter()
    tok.encode(text)  # cold word cache
    assert time.perf_counter() - start < 0.1
