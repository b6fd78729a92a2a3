"""Pre-tokenizers (zigllama_lib.models.pretokenizers) against llama.cpp, for every ``tokenizer.ggml.pre``.

llama.cpp has no API that returns its pre-token words, so we make it show them:
a *probe vocabulary* holds every substring of the probe strings as a token, with
merges joining any two adjacent substrings. BPE then merges each word into one
token and never across words, so llama.cpp's ids, decoded, are exactly its
words. The probe GGUF is SmolLM2's metadata with that vocabulary and the
``tokenizer.ggml.pre`` under test (no tensors: llama.cpp loads it vocab-only).

The real SmolLM2 vocabulary is also re-run under the other common pre-tokenizers.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from oracles import require_module
import regex

from test_tokenizer import CORPUS, model_path, ref_tokenize
from zigllama_lib.foundation.gguf import GGUFFile
from zigllama_lib.foundation.gguf_writer import copy_gguf
from zigllama_lib.models.pretokenizers import (
    NOT_IMPLEMENTED,
    PRE_TOKENIZERS,
    PreTokenizer,
    collapse,
    compile_expr,
    split_digit_groups,
    stand_in,
    translate,
    widen,
)
from zigllama_lib.models.tokenizer import Tokenizer, bytes_to_symbols, text_to_utf8

# short strings (probe vocabularies grow with the cube of their length), each aimed at a rule or quirk
PROBES = [
    "I'm  fine 42", "DON'T x'S 'Ll", "they'll've", "ſt 'ſ 'K", "a\u3000\u3000b", " \x1cx\x1c", "x  \n\n y",
    "\t\tx", "Ça va, été", "東京 123 ひら", "abc😀👍🏽", "a~b$c^d`e", "1,000,000.5", "  \r\n  x", "\u00a0\u00a0a",
    "x\u2028y\u0085", "ab\u0301c \u0301", "١٢٣ ٤5", "Ⅻ ½x²", "\U00010d4a\U00010d4bx a", "\U0001fae9! ~",
    "\U00011380\U00011381 b", "<sentinel:12>", "IMGIMGABZ", "a\ud800b", "e.g. $5 ", "x.\ny\r", "hello\n",
    "a   ", " ", "  ", "'", "'ll ", "CamelCase XMLHttp", "iPhone ÉCOLE", "x\n", "!!\n\n", "a\tb  c", "  ?!",
    "12345678", "한국어 텍스트", "สวัสดี", "नमस्ते", "Привет", "a/b\\c", "<|im_end|>", "   x", "0x1F", "a,b",
    "\u3000x", "『引用』", "ab12345678cd", "1234cd", "x\r\n\r\ny", "word\u200bword", "\u00ad-\u2010", "ﬁ ﬀ",
    "ｱｲｳ ｶﾞ", "𝐀𝐁 𝟏𝟐", "ⓐⓑ ①②", "a\x00b", "\ufeffx", "...!?", "((x))", "—–-", "£5 €6", "@user #tag",
    "αβγ ΑΒΓ", "ǅungla", "a_b-c.d", "x  ", "\n \n", "?\n\n!", "𑢠𑣟", "Ꙁꙁ", "ℂℍ Ω K", "ᴀᴁ", "\u2ffc\u31ef x",
]


def probe_vocab(strings: list[str]) -> tuple[list[str], list[str]]:
    """(tokens, merges): three control tokens, the 256 bytes, every substring of every string."""
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [bytes_to_symbols(bytes([b])) for b in range(256)]
    seen, merges, seen_pairs = set(tokens), [], set()
    for s in strings:
        sym = bytes_to_symbols(text_to_utf8(s))
        for i in range(len(sym)):
            for j in range(i + 2, len(sym) + 1):
                if sym[i:j] not in seen:
                    seen.add(sym[i:j])
                    tokens.append(sym[i:j])
                for k in range(i + 1, j):
                    if (sym[i:k], sym[k:j]) not in seen_pairs:
                        seen_pairs.add((sym[i:k], sym[k:j]))
                        merges.append(f"{sym[i:k]} {sym[k:j]}")
    return tokens, merges


@pytest.fixture(scope="module")
def oracle():
    """The llama_cpp module (the oracle); skips, saying so, when llama-cpp-python is missing."""
    return require_module("llama_cpp")


@pytest.fixture(scope="module")
def smollm_gguf():
    return GGUFFile(model_path("smollm"))


@pytest.fixture(scope="module")
def probe_metadata(smollm_gguf):
    tokens, merges = probe_vocab(PROBES)
    types = np.ones(len(tokens), np.int32)
    types[:3] = 3  # CONTROL
    return {"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": merges,
            "llama.vocab_size": len(tokens)}


def write_vocab(src: GGUFFile, path, overrides: dict) -> str:
    """A vocab-only copy of ``src`` (no tensors) with metadata ``overrides``."""
    return copy_gguf(src, path, overrides, tensor_transform=lambda info, data: None)


# -- every pre-tokenizer against llama.cpp ---------------------------------------

@pytest.mark.parametrize("pre", sorted(PRE_TOKENIZERS))
def test_words_match_llama_cpp(pre, oracle, smollm_gguf, probe_metadata, tmp_path):
    path = write_vocab(smollm_gguf, tmp_path / f"probe-{pre}.gguf", {**probe_metadata, "tokenizer.ggml.pre": pre})
    llm = oracle.Llama(model_path=path, vocab_only=True, verbose=False)
    try:
        splitter = PreTokenizer.named(pre)
        tok = Tokenizer.from_metadata(GGUFFile(path).metadata)
        wrong = []
        for text in PROBES:
            ids = ref_tokenize(llm, text, False, False)
            words = [tok.token_bytes(i).decode("utf-8", "surrogatepass") for i in ids]
            if splitter.split(text) != words or tok.encode(text, add_special=False) != ids:
                wrong.append((text, words, splitter.split(text)))
        assert not wrong, f"{len(wrong)}/{len(PROBES)} differ under pre={pre}; first (text, llama.cpp, ours): {wrong[0]}"
    finally:
        llm.close()


@pytest.mark.parametrize("pre", ["gpt-2", "llama-bpe", "qwen2", "default", "deepseek-llm", "gpt-4o"])
def test_real_vocab_under_other_pre_tokenizers(pre, oracle, smollm_gguf, tmp_path):
    path = write_vocab(smollm_gguf, tmp_path / f"smollm-{pre}.gguf", {"tokenizer.ggml.pre": pre})
    llm = oracle.Llama(model_path=path, vocab_only=True, verbose=False)
    try:
        tok = Tokenizer.from_metadata(GGUFFile(path).metadata)
        wrong = [name for name, text in CORPUS
                 if tok.encode(text, add_special=False) != ref_tokenize(llm, text, False, False)]
        assert not wrong, f"{len(wrong)} of {len(CORPUS)} corpus strings differ under pre={pre}: {wrong}"
    finally:
        llm.close()


# -- the machinery, by hand --------------------------------------------------------

@pytest.mark.parametrize("pre", sorted(PRE_TOKENIZERS))
def test_split_loses_nothing(pre):
    rng = random.Random(pre)
    pool = "aZé東 \t\n\r1٣½!~'s\u3000\u0301😀\U0001fae9_-.,"
    splitter = PreTokenizer.named(pre)
    for text in PROBES + ["".join(rng.choice(pool) for _ in range(rng.randrange(40))) for _ in range(50)]:
        words = splitter.split(text)
        assert "".join(words) == text and all(words)


def test_stand_ins_follow_unicode_15_1():
    assert [stand_in(ord(c)) for c in "aé٣½!~\u0301€\u3000\u00a0\x1c"] == \
        ["a", "\xd2", "\xd1", "\xd1", "!", "~", "\xd4", "\xd5", "\x0b", "\x0b", "\x1c"]
    assert stand_in(0x10D4A) == "\xd0"  # Garay letter: Unicode 16.0, unassigned for llama.cpp
    if not regex.match(r"\p{Cn}", "\u2ffc"):  # the regex package knows Unicode 15.1
        assert stand_in(0x2FFC) == "\xd5"  # a Unicode 15.1 symbol: known to llama.cpp
    assert stand_in(0xE000) == "\xd0"  # private use: "other"


def test_collapse_and_widen_keep_lengths():
    assert collapse("Ça va, 東京!") == "\xd2a va, \xd2\xd2!"
    assert widen("a\u3000b\u00e9") == "a\x0bb\u00e9"


def test_translate_rewrites_categories_like_llama_cpp():
    assert translate(r" ?\p{L}+", True) == " ?[\xd2A-Za-z]+"
    assert translate(r"[^\s\p{L}\p{N}]", True) == "[^\\s\xd2A-Za-z\xd10-9]"
    assert translate(r"\p{Lu}", True) == "[\xd2A-Za-z]"  # every letter subcategory is \p{L}
    assert translate(r"\s+$", False) == r"\s+\Z"
    assert compile_expr(r"\p{N}").pattern.pattern == "[\xd10-9]"
    with pytest.raises(ValueError):
        compile_expr(r"\p{L}é")


def test_digit_groups_glue_the_text_before_a_run():
    view = collapse("ab1234cd ٤5")
    assert split_digit_groups(view, [(0, len(view))]) == [(0, 3), (3, 6), (6, 11)]  # "ab1" "234" "cd ٤5"


def test_named_examples():
    assert PreTokenizer.named("smollm").split("I'm  fine 42") == ["I", "'m", " ", " fine", " ", "4", "2"]
    assert PreTokenizer.named("llama-bpe").split("x 12345\n\n y") == ["x", " ", "123", "45", "\n\n", " y"]
    assert PreTokenizer.named("qwen2").split("x 12345") == ["x", " ", "1", "2", "3", "4", "5"]
    assert PreTokenizer.named("gpt-2").split("it's  ok") == ["it", "'s", " ", " ok"]
    assert PreTokenizer.named("default").split("") == []


def test_not_implemented_names_are_not_offered():
    assert not NOT_IMPLEMENTED & set(PRE_TOKENIZERS)
    assert {"smollm", "llama-bpe", "gpt-2", "qwen2", "default"} <= set(PRE_TOKENIZERS)
