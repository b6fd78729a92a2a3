"""Byte-level BPE tokenization against llama.cpp (``Llama.tokenize``, special=False).

The other pre-tokenizers (gpt-2, llama-bpe, qwen2, default) are checked on the
same vocabulary: we write a vocabulary-only copy of SmolLM2's GGUF with
``tokenizer.ggml.pre`` changed, so llama.cpp applies that pre-tokenizer too.
"""

from __future__ import annotations

import numpy as np
import pytest

from tokenizer_corpus import CORPUS
from zigllama_lib.foundation.errors import TokenizerError
from zigllama_lib.foundation.gguf import GGUFFile
from zigllama_lib.foundation.gguf_writer import copy_gguf
from zigllama_lib.models.bpe import Tokenizer, byte_to_char, split_gpt2
from zigllama_lib.models.loader import tokenizer_from_metadata

IDS = [f"{i:02d}" for i in range(len(CORPUS))]


@pytest.fixture(scope="module")
def smollm_gguf(smollm_path):
    return GGUFFile(smollm_path)


@pytest.fixture(scope="module")
def tok(smollm_gguf):
    return tokenizer_from_metadata(smollm_gguf.metadata)


def vocab_llama(llama_cpp, path):
    return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)


@pytest.fixture(scope="module")
def ref(llama_cpp, smollm_path):
    llm = vocab_llama(llama_cpp, smollm_path)
    yield llm
    llm.close()


def test_corpus_is_big_enough():
    assert len(CORPUS) >= 40 and "" in CORPUS


@pytest.mark.parametrize("text", CORPUS, ids=IDS)
def test_matches_llama_cpp(text, tok, ref):
    assert tok.encode(text) == ref.tokenize(text.encode("utf-8"), add_bos=True, special=False)


@pytest.mark.parametrize("text", CORPUS, ids=IDS)
def test_round_trip(text, tok):
    assert tok.decode(tok.encode(text, add_special=False)) == text


@pytest.mark.parametrize("text", ["<|im_start|>user\nhi<|im_end|>\n", "a<|endoftext|>b", "<|im_end|><|im_end|>"])
def test_parse_special_matches_llama_cpp(text, tok, ref):
    ours = tok.encode(text, parse_special=True)
    assert ours == ref.tokenize(text.encode("utf-8"), add_bos=True, special=True)
    assert tok.decode(ours) == text  # control tokens render as their text by default


def test_token_pieces_and_special_rendering(tok, ref):
    ids = tok.encode("Hello<|im_end|>", parse_special=True)
    for i in ids:
        assert tok.token_bytes(i) == ref.detokenize([i], special=True)
    assert tok.decode(ids, skip_special=True) == "Hello"
    assert tok.token_bytes(2, render_special=False) == b""
    assert tok.is_eog(tok.eos_id) and not tok.is_eog(ids[0])


def test_add_special_follows_metadata(smollm_gguf):
    md = dict(smollm_gguf.metadata)
    assert tokenizer_from_metadata(md).encode("hi") == tokenizer_from_metadata(md).encode("hi", add_special=False)
    md["tokenizer.ggml.add_bos_token"] = True
    md["tokenizer.ggml.add_eos_token"] = True
    t = tokenizer_from_metadata(md)
    assert t.encode("hi") == [1] + t.encode("hi", add_special=False) + [2]


PRES = ["gpt-2", "llama-bpe", "qwen2", "default"]


@pytest.fixture(scope="module")
def retargeted(smollm_gguf, llama_cpp, tmp_path_factory):
    """pre name -> (our tokenizer, llama.cpp vocab) on a vocab-only copy with that pre-tokenizer."""
    out = {}
    for pre in PRES:
        path = tmp_path_factory.mktemp("vocab") / f"vocab-{pre}.gguf"
        copy_gguf(smollm_gguf, path, {"tokenizer.ggml.pre": pre}, tensor_transform=lambda info, data: None)
        out[pre] = (tokenizer_from_metadata(GGUFFile(path).metadata), vocab_llama(llama_cpp, path))
    yield out
    for _, llm in out.values():
        llm.close()


@pytest.mark.parametrize("pre", PRES)
def test_other_pre_tokenizers_match_llama_cpp(pre, retargeted):
    ours, llm = retargeted[pre]
    mismatches = [t for t in CORPUS if ours.encode(t) != llm.tokenize(t.encode("utf-8"), add_bos=True, special=False)]
    assert not mismatches, f"{len(mismatches)} of {len(CORPUS)} differ under pre={pre}, first: {mismatches[0]!r}"


def test_gpt2_split_by_hand():
    assert split_gpt2("I'm  fine!") == ["I", "'m", " ", " fine", "!"]
    assert split_gpt2("a  \n") == ["a", "  \n"]
    assert split_gpt2("x 12 ?!") == ["x", " 12", " ?!"]


def test_byte_table_is_a_bijection():
    table = byte_to_char()
    assert len(set(table)) == 256 and table[ord("A")] == "A" and table[0x20] == "\u0120"


def test_merge_steps_show_the_merges(tok):
    steps = tok.merge_steps(" hello")[0]
    assert steps[0] == [bytes([b]) for b in b" hello"] and steps[-1] == [b" hello"]
    assert all(len(a) == len(b) + 1 for a, b in zip(steps, steps[1:]))


def test_bad_metadata_is_refused(smollm_gguf):
    md = dict(smollm_gguf.metadata)
    with pytest.raises(TokenizerError, match="tokenizer.ggml.merges"):
        tokenizer_from_metadata({k: v for k, v in md.items() if k != "tokenizer.ggml.merges"})
    with pytest.raises(TokenizerError, match="does not join two known tokens"):
        tokenizer_from_metadata({**md, "tokenizer.ggml.merges": ["Ġ t", "nope zz"]})
    with pytest.raises(TokenizerError, match="pre-tokenizer"):
        tokenizer_from_metadata({**md, "tokenizer.ggml.pre": "klingon"})
    with pytest.raises(TokenizerError, match="not supported"):
        tokenizer_from_metadata({**md, "tokenizer.ggml.model": "bert"})
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tokenizer_from_metadata({**md, "tokenizer.ggml.eos_token_id": 10**6})


def test_bad_ids_and_inputs(tok):
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tok.decode([tok.n_vocab])
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tok.decode([-1])
    with pytest.raises(TokenizerError, match="str"):
        tok.encode(b"bytes")
