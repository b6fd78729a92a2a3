"""GBNF grammars: the parser, the stack-set matcher, and its token mask vs llama.cpp's grammar sampler."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

from zigllama_lib.foundation.errors import ZigLlamaError
from zigllama_lib.foundation.gguf import GGUFFile
from zigllama_lib.inference.grammar import (MAX_PARSE_STACKS, MAX_STEP_EXPANSIONS, Grammar, GrammarError,
                                           GrammarMatcher, TokenTrie, decode_utf8)
from zigllama_lib.models.tokenizer import Tokenizer

from oracles import llama_cpp_source_tree

# llama.cpp's grammars/ (scripts/fetch_llama_cpp_sources.sh unpacks them on first use)
LLAMA_CPP_GRAMMARS = (llama_cpp_source_tree() or Path("(llama.cpp sources could not be fetched)")) / "grammars"
GRAMMAR_FILES = sorted(LLAMA_CPP_GRAMMARS.glob("*.gbnf"))


def read(name: str) -> str:
    return (LLAMA_CPP_GRAMMARS / name).read_text(encoding="utf-8")


# -- parser -----------------------------------------------------------------------------------------

def test_llama_cpp_grammars_found():
    assert len(GRAMMAR_FILES) >= 8, f"llama.cpp's grammars/ not found under {LLAMA_CPP_GRAMMARS}"


@pytest.mark.parametrize("path", GRAMMAR_FILES, ids=lambda p: p.name)
def test_every_llama_cpp_grammar_parses(path):
    g = Grammar.parse(path.read_text(encoding="utf-8"))
    assert g.names[g.root_id] == "root"
    assert g._states[g.start_state], "no initial stack"


@pytest.mark.parametrize("text, where, what", [
    ('root ::= "abc', "line 1, column 10", "unclosed string"),
    ('root ::= "\\q"', "line 1, column 11", "unknown escape"),
    ('root ::= "\\x4"', "line 1, column 13", "hex digits"),
    ('root "a"', "line 1, column 6", "'::='"),
    ('root ::= "a"\nitem ::= [a-z\n', "line 2, column 10", "unclosed character class"),
    ('root ::= item\n', "line 1, column 10", "undefined rule 'item'"),
    ('root ::= ("a" | "b"\n', "line 2, column 1", "expecting ')' to close the group opened at column 10"),
    ('root ::= * "a"', "line 1, column 10", "expecting an item before the repetition"),
    ('root ::= "a" | +', "line 1, column 16", "expecting an item before the repetition"),
    ('root ::= "a"{2', "line 1, column 15", "expecting ',' or '}'"),
    ('root ::= "a"{3,1}', "line 1, column 13", "max < min"),
    ('root ::= "a" ]', "line 1, column 14", "expecting newline"),
])
def test_malformed_grammar_names_where(text, where, what):
    with pytest.raises(GrammarError) as exc:
        Grammar.parse(text)
    assert where in str(exc.value) and what in str(exc.value)
    assert isinstance(exc.value, ZigLlamaError)


def test_missing_root():
    with pytest.raises(GrammarError, match="no 'root' rule"):
        Grammar.parse('item ::= "a"')
    assert Grammar.parse('item ::= "a"', root="item").matches("a")


@pytest.mark.parametrize("text, cycle", [
    ('root ::= expr\nexpr ::= expr "+" term | term\nterm ::= [0-9]', "expr -> expr"),
    ('root ::= a\na ::= b "x"\nb ::= opt a | "y"\nopt ::= "z"?', "a -> b"),  # through a nullable rule
])
def test_left_recursion_is_rejected(text, cycle):
    with pytest.raises(GrammarError, match="left recursion") as exc:
        Grammar.parse(text)
    assert cycle in str(exc.value)


def test_right_recursion_is_fine():
    g = Grammar.parse('root ::= "(" root ")" | ""')
    assert g.matches("((()))") and not g.matches("(()")


@pytest.mark.parametrize("grammar, yes, no", [
    ('root ::= "a"{2,3} "b"?', ["aa", "aaa", "aab"], ["a", "aaaa", "ab"]),
    ('root ::= [^"\\\\]* "!"', ["x!", "!", "é!"], ['"!', "\\!"]),
    ('root ::= [a-cx] .', ["ab", "x\u4e2d"], ["d1", "a"]),
    ('root ::= "\\u00e9\\U0001F600\\x41\\t"  # a comment\n', ["é😀A\t"], ["é😀A"]),
    ('root ::= ("ab" | "c")+ ', ["ab", "cabc"], ["", "a", "abca"]),
    ('root ::= "x"{0,}', ["", "xxx"], ["y"]),
])
def test_language(grammar, yes, no):
    g = Grammar.parse(grammar)
    assert all(g.matches(s) for s in yes), [s for s in yes if not g.matches(s)]
    assert not any(g.matches(s) for s in no), [s for s in no if g.matches(s)]


def test_json_grammar_language():
    g = Grammar.parse(read("json.gbnf"))
    assert g.matches('{"a": [1, -2.5e3, "x\\n", true], "b": {"c": null}}')
    assert not g.matches('{"a" 1}') and not g.matches('{"a": 01}')


def test_decode_utf8_like_llama_cpp():
    assert decode_utf8(b"a\xc3\xa9") == ([0x61, 0xE9], (0, 0))
    assert decode_utf8(b"a\xe2\x82") == ([0x61], ((0x2 << 6) | 0x2, 1))
    assert decode_utf8(b"\xac", ((0x2 << 6) | 0x2, 1)) == ([0x20AC], (0, 0))
    assert decode_utf8(b"\x80") is None and decode_utf8(b"x", (3, 1)) is None
    assert decode_utf8(b"ab\0cd") == ([0x61, 0x62], (0, 0))


# -- matcher over a small synthetic vocabulary -------------------------------------------------------

def tiny_trie():
    pieces = [b"<eos>", b"a", b"b", b"ab", b"{", b"}", b"\xe2\x82", b"\xac", b"\xe2", b"\x82\xac", b""]
    return TokenTrie(pieces, eog_ids=[0])


def test_matcher_steps_and_eog():
    m = GrammarMatcher('root ::= "a" "b"+', tiny_trie())
    assert m.allowed_mask().tolist() == [False, True, False, True, False, False, False, False, False, False, False]
    m.accept(3)  # "ab"
    assert m.is_complete and m.allowed(0) and m.allowed(2) and not m.allowed(1)
    logits = np.zeros(11, dtype=np.float32)
    out = m.mask(logits)
    assert out is not logits and np.isneginf(out[1]) and out[2] == 0 and logits[1] == 0
    with pytest.raises(GrammarError, match="not allowed"):
        m.accept(1)
    m.accept(0)
    assert m.finished


def test_matcher_partial_utf8():
    m = GrammarMatcher('root ::= "€"+', tiny_trie())
    ok = np.flatnonzero(m.allowed_mask()).tolist()
    assert ok == [6, 8]  # b"\xe2\x82" and b"\xe2" could become "€"; a lone continuation byte cannot
    m.accept(8)
    assert np.flatnonzero(m.allowed_mask()).tolist() == [9]  # only b"\x82\xac" completes it
    m.accept(9)
    assert m.is_complete


def test_eog_before_complete_is_an_error():
    m = GrammarMatcher('root ::= "ab"', tiny_trie())
    with pytest.raises(GrammarError, match="before the grammar is complete"):
        m.accept(0)


def test_dead_end_gives_a_clear_error():
    m = GrammarMatcher('root ::= "a" "z"', tiny_trie())  # no token starts with "z"
    m.accept(1)
    with pytest.raises(GrammarError, match="admits no token"):
        m.mask(np.zeros(11, dtype=np.float32))


AMBIGUOUS = r'root ::= [a::\x00-z\xa1[<[\\]* | . . {0,7}root {2,7}root'  # found by fuzzing


def test_an_ambiguous_grammar_is_refused_not_followed_forever():
    """Each character multiplies this grammar's parses (``root{2,7}`` of a root that can be two
    any-chars): unchecked, the fourth character of '{"a": 1}' took over a minute and gigabytes."""
    g = Grammar.parse(AMBIGUOUS)
    assert g.matches("ab")  # two characters: 124 stacks, still followed
    with pytest.raises(GrammarError, match=f"too ambiguous: more than {MAX_PARSE_STACKS} parse stacks"):
        g.matches('{"a": 1}')


def test_nested_repetitions_are_refused_within_a_fraction_of_a_second():
    """``.+++*{323}`` keeps a few hundred stacks but expands each of them hundreds of ways per character
    (found by fuzzing: a second per character, growing); the per-step expansion budget stops it."""
    import time

    g = Grammar.parse("root ::=.+++*{323}")
    t0 = time.perf_counter()
    with pytest.raises(GrammarError, match=f"{MAX_STEP_EXPANSIONS} expansions for one character"):
        g.matches('{"a": 1}')
    assert time.perf_counter() - t0 < 30  # generous: the point is that it ends (about 0.2 s here)


def test_stack_counts_of_llama_cpp_grammars_stay_far_below_the_cap():
    g = Grammar.parse(open(LLAMA_CPP_GRAMMARS / "json.gbnf").read())
    assert g.matches('{"a": [1, 2.5e3, {"b": "c\\n"}], "d": [true, false, null]}')
    assert max(len(stacks) for stacks in g._states) * 100 < MAX_PARSE_STACKS


def test_token_references():
    m = GrammarMatcher("root ::= <[4]> [a-b]* !<[5]>", tiny_trie())
    assert np.flatnonzero(m.allowed_mask()).tolist() == [4]
    m.accept(4)
    allowed = m.allowed_mask()
    assert allowed[1] and allowed[3] and not allowed[5] and not allowed[0] and not allowed[10]


# -- the mask vs llama.cpp's grammar sampler on SmolLM2's vocabulary ------------------------------------

@pytest.fixture(scope="module")
def smollm_tokenizer(smollm_path):
    return Tokenizer.from_metadata(GGUFFile(smollm_path).metadata)


@pytest.fixture(scope="module")
def smollm_trie(smollm_tokenizer):
    return TokenTrie.from_tokenizer(smollm_tokenizer)


@pytest.fixture(scope="module")
def llama_vocab(llama_cpp, smollm_path):
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(smollm_path).encode(), params)
    assert model, "llama.cpp could not load the vocabulary"
    yield llama_cpp.llama_model_get_vocab(model)
    llama_cpp.llama_model_free(model)


class LlamaGrammar:
    """llama.cpp's grammar sampler over all-zero logits: which tokens stay finite."""

    def __init__(self, lc, vocab, text: str):
        self.lc = lc
        self.smpl = lc.llama_sampler_init_grammar(vocab, text.encode("utf-8"), b"root")
        assert self.smpl, "llama.cpp rejected the grammar"
        self.n = lc.llama_vocab_n_tokens(vocab)
        self.buf = (lc.llama_token_data * self.n)()
        self.view = np.ctypeslib.as_array(self.buf)

    def allowed(self) -> np.ndarray:
        lc = self.lc
        self.view["id"], self.view["logit"], self.view["p"] = np.arange(self.n), 0.0, 0.0
        cur = lc.llama_token_data_array(data=ctypes.cast(self.buf, lc.llama_token_data_p), size=self.n,
                                        selected=-1, sorted=False)
        lc.llama_sampler_apply(self.smpl, ctypes.byref(cur))
        out = np.zeros(self.n, dtype=bool)
        out[self.view["id"]] = np.isfinite(self.view["logit"])
        return out

    def accept(self, token: int) -> None:
        self.lc.llama_sampler_accept(self.smpl, token)

    def close(self):
        self.lc.llama_sampler_free(self.smpl)


ORACLE_GRAMMARS = {
    "json": (read("json.gbnf") if GRAMMAR_FILES else "", '{"name": "Zig", "ids": [1, 2.5, -3e2], "ok": true}'),
    "arithmetic": (read("arithmetic.gbnf") if GRAMMAR_FILES else "", "(12 +x1 )*3 -y/( 4)= 42\nz=7\n"),
    "list": (read("list.gbnf") if GRAMMAR_FILES else "", "- apples\n- two pears\n"),
    "classes": ('root ::= [A-Z] [a-z0-9_]{2,5} ("-" [^-\\n]+)? "."', "Abc_9-hello world."),
    "utf8": ('root ::= "«" [α-ωé€😀 ]+ "»" | "日本" [ぁ-ん]*', "«αβγ é€ 😀»"),
}


def compare_path(lc, vocab, trie, text, tokens, rng=None, max_steps=40):
    """Step through ``tokens`` (or random allowed ones when rng is given), comparing masks at every step."""
    ours, theirs = GrammarMatcher(text, trie), LlamaGrammar(lc, vocab, text)
    try:
        steps = 0
        while steps < max_steps:
            a, b = ours.allowed_mask(), theirs.allowed()
            diff = np.flatnonzero(a != b)
            assert not len(diff), (f"step {steps}: masks differ at {diff[:10].tolist()} "
                                   f"{[trie.pieces[i] for i in diff[:10]]} ours={a[diff[:10]].tolist()}")
            if rng is None:
                if steps == len(tokens):
                    break
                token = tokens[steps]
            else:
                text_ids = np.flatnonzero(a & ~trie.eog)
                if not len(text_ids):
                    break
                token = int(rng.choice(text_ids))
            ours.accept(token)
            theirs.accept(token)
            steps += 1
        return ours
    finally:
        theirs.close()


@pytest.mark.oracle
@pytest.mark.parametrize("name", list(ORACLE_GRAMMARS))
def test_mask_matches_llama_cpp_on_valid_text(llama_cpp, llama_vocab, smollm_tokenizer, smollm_trie, name):
    text, sample = ORACLE_GRAMMARS[name]
    tokens = smollm_tokenizer.encode(sample, add_special=False)
    m = compare_path(llama_cpp, llama_vocab, smollm_trie, text, tokens)
    assert m.is_complete, f"{sample!r} should be complete under the {name} grammar"


@pytest.mark.oracle
@pytest.mark.parametrize("name", list(ORACLE_GRAMMARS))
def test_mask_matches_llama_cpp_on_random_paths(llama_cpp, llama_vocab, smollm_trie, name):
    text, _ = ORACLE_GRAMMARS[name]
    compare_path(llama_cpp, llama_vocab, smollm_trie, text, None, rng=np.random.default_rng(7), max_steps=12)


@pytest.mark.oracle
def test_mask_matches_llama_cpp_through_byte_tokens(llama_cpp, llama_vocab, smollm_tokenizer, smollm_trie):
    # "€" split into its single-byte tokens: the matcher carries a partial UTF-8 sequence between tokens.
    text = 'root ::= "x" [€¢]+ "!"'
    byte_ids = [smollm_tokenizer.encode(bytes([b]).decode("latin-1"), add_special=False) for b in b"\xe2\x82\xac"]
    pieces = {smollm_trie.pieces[i]: i for i in range(smollm_trie.n_vocab)}
    if not all(bytes([b]) in pieces for b in b"\xe2\x82\xac"):
        pytest.skip("the vocabulary lacks single-byte tokens")
    del byte_ids
    tokens = smollm_tokenizer.encode("x", add_special=False) + [pieces[bytes([b])] for b in b"\xe2\x82\xac"]
    tokens += smollm_tokenizer.encode("!", add_special=False)
    m = compare_path(llama_cpp, llama_vocab, smollm_trie, text, tokens)
    assert m.is_complete


def test_mask_is_fast_enough(smollm_trie):
    """One cold mask inside a JSON string (the worst case: nearly the whole vocabulary) stays well under 1 s."""
    import time

    m = GrammarMatcher(read("json.gbnf"), smollm_trie)
    m.accept_text('{"a": "')
    best = float("inf")
    for _ in range(3):
        m.grammar._mask_cache.clear()
        t0 = time.perf_counter()
        allowed = m.allowed_mask()
        best = min(best, time.perf_counter() - t0)
    assert allowed.sum() > 40000
    assert best < 1.0, f"mask took {best * 1e3:.0f} ms"
