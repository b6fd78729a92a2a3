"""The vocabulary half of a GGUF tokenizer: tokens, their attributes, special ids.

This module reproduces what llama.cpp's ``llama_vocab::impl::load`` decides
before any text is tokenized:

* every token's *attributes* (llama.h's ``llama_token_attr`` bit set), starting
  from ``tokenizer.ggml.token_type`` and then patched by name, as llama.cpp does;
* the special ids (BOS, EOS, EOT, EOM, UNK, PAD, FIM ...): model defaults,
  overridden by metadata, completed by spotting well-known token texts;
* the end-of-generation set (``is_eog``) and ``add_bos`` / ``add_eos``.

Example (SmolLM2; the defaults are byte-level BPE's)::

    v = load_vocab(md, False, False, DEFAULT_IDS["gpt2"], default_add_space_prefix=False)
    v.ids.bos, v.ids.eos, v.ids.eot   # -> 1, 2, 0
    sorted(v.eog)                      # -> [0, 2, 4]   (<|endoftext|>, <|im_end|>, <reponame>)

llama.cpp behaviour kept on purpose (quirks)
--------------------------------------------
* an empty token string is renamed ``[EMPTY_<id>]``; a duplicate string is an error;
* byte-level BPE vocabularies default to BOS = EOS = 11 (LLaMA-style ones to
  BOS 1, EOS 2, UNK 0); a default outside the vocabulary becomes "none";
* a special id in the metadata outside the vocabulary is ignored (with a
  warning) and the default kept;
* EOT, EOM and the FIM ids are guessed from token texts when the metadata lacks
  them, and the guessed token becomes CONTROL. When several texts qualify
  (SmolLM2 has both ``<|im_end|>`` and ``<|endoftext|>``) llama.cpp takes the
  first in its hash table's order; we take the lowest id, which agrees on the
  models we test (SmolLM2: EOT = 0);
* tokens whose text is in llama.cpp's EOG list become CONTROL and end
  generation; CONTROL tokens whose text contains ``unused`` become UNUSED;
  gpt-oss's ``<|channel|>`` & co. become USER_DEFINED; ``<|end|>`` stops being
  EOG next to ``<|return|>`` + ``<|call|>`` (or ``<|calls|>`` + ``<|flush|>``),
  and ``</s>`` next to ``<|tool_response>``;
* phi-3 models (by ``general.name``) get RSTRIP on special tokens, jina-v2 /
  modern-bert models LSTRIP on their mask token.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import numpy as np

from ..foundation.errors import TokenizerError

# llama.h's llama_token_attr (a token can carry several)
ATTR_UNDEFINED = 0
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5
ATTR_NORMALIZED = 1 << 6
ATTR_LSTRIP = 1 << 7
ATTR_RSTRIP = 1 << 8
ATTR_SINGLE_WORD = 1 << 9

# tokenizer.ggml.token_type values (llama_token_type) -> attribute
TYPE_UNDEFINED, TYPE_NORMAL, TYPE_UNKNOWN, TYPE_CONTROL, TYPE_USER_DEFINED, TYPE_UNUSED, TYPE_BYTE = range(7)
_TYPE_TO_ATTR = {
    TYPE_UNDEFINED: ATTR_UNDEFINED, TYPE_NORMAL: ATTR_NORMAL, TYPE_UNKNOWN: ATTR_UNKNOWN,
    TYPE_CONTROL: ATTR_CONTROL, TYPE_USER_DEFINED: ATTR_USER_DEFINED, TYPE_UNUSED: ATTR_UNUSED, TYPE_BYTE: ATTR_BYTE,
}

KEY = "tokenizer.ggml."

# token texts llama.cpp recognises when the metadata does not name the id
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
              "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>")
_GUESSED_TEXTS = {
    "eot": _EOT_TEXTS,
    "eom": ("<|eom_id|>",),
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
_EOG_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[",
})
_GPT_OSS_USER_DEFINED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")


@dataclass
class SpecialIds:
    """Special token ids (None: the vocabulary has none)."""

    bos: int | None = None
    eos: int | None = None
    eot: int | None = None
    eom: int | None = None
    unk: int | None = None
    sep: int | None = None
    pad: int | None = None
    mask: int | None = None
    fim_pre: int | None = None
    fim_suf: int | None = None
    fim_mid: int | None = None
    fim_pad: int | None = None
    fim_rep: int | None = None
    fim_sep: int | None = None


# metadata key -> SpecialIds field, in llama.cpp's order (the deprecated FIM keys last)
_ID_KEYS = (
    ("bos_token_id", "bos"), ("eos_token_id", "eos"), ("eot_token_id", "eot"), ("eom_token_id", "eom"),
    ("unknown_token_id", "unk"), ("seperator_token_id", "sep"), ("padding_token_id", "pad"),
    ("mask_token_id", "mask"), ("fim_pre_token_id", "fim_pre"), ("fim_suf_token_id", "fim_suf"),
    ("fim_mid_token_id", "fim_mid"), ("fim_pad_token_id", "fim_pad"), ("fim_rep_token_id", "fim_rep"),
    ("fim_sep_token_id", "fim_sep"), ("prefix_token_id", "fim_pre"), ("suffix_token_id", "fim_suf"),
    ("middle_token_id", "fim_mid"),
)

# tokenizer.ggml.model -> default special ids (llama.cpp's per-model defaults)
DEFAULT_IDS = {
    "gpt2": SpecialIds(bos=11, eos=11),
    "llama": SpecialIds(bos=1, eos=2, unk=0),
}


@dataclass
class Vocab:
    """A loaded vocabulary. Shapes: ``attrs`` (n_vocab,) int32, ``scores`` (n_vocab,) float32."""

    tokens: list[str]  # the strings as stored in the GGUF (surrogateescape'd where not UTF-8)
    texts: list[str]  # llama.cpp's token texts: tokens, with "" renamed "[EMPTY_<id>]"
    attrs: np.ndarray  # (n_vocab,) int32 llama_token_attr bits
    scores: np.ndarray  # (n_vocab,) float32 (zeros when the metadata has none)
    token_to_id: dict[str, int]
    ids: SpecialIds
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    eog: frozenset[int] = field(default_factory=frozenset)

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    def special_ids_longest_first(self) -> list[int]:
        """CONTROL / USER_DEFINED / UNKNOWN ids, longest text first (ties: lower id first).

        llama.cpp's ``cache_special_tokens``; its ``std::sort`` leaves equal
        lengths in no particular order, which only matters if two equally long
        special texts overlap in a prompt.
        """
        mask = ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN
        ids = np.flatnonzero(self.attrs & mask).tolist()
        return sorted(ids, key=lambda i: (-len(self.texts[i].encode("utf-8", "surrogateescape")), i))


# -- reading the metadata ------------------------------------------------------

def require(md: Mapping[str, Any], key: str) -> Any:
    """``md[key]``, or TokenizerError naming the missing key."""
    if key not in md:
        raise TokenizerError(f"missing metadata key {key!r}")
    return md[key]


def read_tokens(md: Mapping[str, Any]) -> list[str]:
    """``tokenizer.ggml.tokens`` as a list of str (non-empty).

    Example: ``read_tokens({"tokenizer.ggml.tokens": ["a", "b"]})`` -> ``["a", "b"]``.
    """
    tokens = require(md, KEY + "tokens")
    if isinstance(tokens, (str, bytes)) or not all(isinstance(t, str) for t in tokens):
        raise TokenizerError(f"metadata key {KEY + 'tokens'!r} must be an array of strings")
    tokens = list(tokens)
    if not tokens:
        raise TokenizerError(f"metadata key {KEY + 'tokens'!r} is empty")
    return tokens


def read_per_token(md: Mapping[str, Any], name: str, n: int, dtype: type, default: float) -> np.ndarray:
    """A per-token array (``token_type`` / ``scores``): (n,), or ``default`` everywhere if absent."""
    key = KEY + name
    if key not in md:
        return np.full(n, default, dtype)
    values = md[key]
    try:
        arr = np.asarray(values, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise TokenizerError(f"metadata key {key!r} is not a numeric array ({e})") from None
    if arr.ndim != 1 or len(arr) < n:
        raise TokenizerError(f"metadata key {key!r} has {arr.size} entries for {n} tokens")
    return arr[:n]


def token_texts(tokens: list[str]) -> tuple[list[str], dict[str, int]]:
    """llama.cpp's token texts and text -> id map; duplicates are an error.

    Example: ``token_texts(["a", ""])`` -> ``(["a", "[EMPTY_1]"], {"a": 0, "[EMPTY_1]": 1})``.
    """
    texts = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
    token_to_id: dict[str, int] = {}
    for i, t in enumerate(texts):
        if token_to_id.setdefault(t, i) != i:
            raise TokenizerError(f"duplicate token in vocabulary: {t!r} has ids {token_to_id[t]} and {i}")
    return texts, token_to_id


def initial_attrs(types: np.ndarray) -> np.ndarray:
    """Token types -> attributes (unknown type values -> UNDEFINED). (n,) int32."""
    attrs = np.zeros(len(types), np.int32)
    for t, a in _TYPE_TO_ATTR.items():
        attrs[types == t] = a
    return attrs


def read_special_ids(md: Mapping[str, Any], n: int, defaults: SpecialIds) -> SpecialIds:
    """Defaults (dropped if outside the vocabulary), overridden by in-range metadata ids."""
    ids = SpecialIds(**{f.name: getattr(defaults, f.name) for f in fields(SpecialIds)})
    for suffix, name in _ID_KEYS:
        current = getattr(ids, name)
        if current is not None and not 0 <= current < n:
            setattr(ids, name, current := None)
        key = KEY + suffix
        if key not in md:
            continue
        value = md[key]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TokenizerError(f"metadata key {key!r} must be an integer token id, got {value!r}")
        if 0 <= int(value) < n:
            setattr(ids, name, int(value))
        else:
            warnings.warn(f"{key} = {value} is outside the vocabulary of {n} tokens; using {current}",
                          stacklevel=3)
    return ids


def read_flag(md: Mapping[str, Any], name: str, default: bool) -> bool:
    """A boolean ``tokenizer.ggml.<name>``, or ``default``."""
    value = md.get(KEY + name, default)
    if not isinstance(value, (bool, np.bool_)):
        raise TokenizerError(f"metadata key {KEY + name!r} must be a bool, got {value!r}")
    return bool(value)


# -- llama.cpp's corrections by token text ----------------------------------

def guess_ids(ids: SpecialIds, token_to_id: Mapping[str, int], attrs: np.ndarray) -> None:
    """Fill missing EOT/EOM/FIM ids from well-known texts; the chosen tokens become CONTROL."""
    for name, texts in _GUESSED_TEXTS.items():
        if getattr(ids, name) is not None:
            continue
        found = [token_to_id[t] for t in texts if t in token_to_id]
        if found:
            setattr(ids, name, tid := min(found))
            attrs[tid] |= ATTR_CONTROL


def mark_unused(texts: list[str], attrs: np.ndarray) -> None:
    """CONTROL tokens whose text contains "unused" get the UNUSED attribute."""
    for i in np.flatnonzero(attrs & ATTR_CONTROL):
        if "unused" in texts[i]:
            attrs[i] |= ATTR_UNUSED


def end_of_generation(ids: SpecialIds, token_to_id: Mapping[str, int], attrs: np.ndarray) -> set[int]:
    """llama.cpp's ``special_eog_ids`` (before its two pruning workarounds)."""
    eog = {i for i in (ids.fim_pad, ids.fim_rep, ids.fim_sep) if i is not None}
    for text in _EOG_TEXTS:
        tid = token_to_id.get(text)
        if tid is not None:
            eog.add(tid)
            attrs[tid] |= ATTR_CONTROL
    for text in _GPT_OSS_USER_DEFINED:
        if text in token_to_id:
            attrs[token_to_id[text]] = ATTR_USER_DEFINED
    eog.update(i for i in (ids.eos, ids.eot, ids.eom) if i is not None)
    return eog


def prune_eog(eog: set[int], texts: list[str], attrs: np.ndarray) -> None:
    """Drop ``<|end|>`` (gpt-oss, solar-open) and ``</s>`` (gemma 4) from the EOG set when llama.cpp does."""
    by_text = {texts[i]: i for i in eog}
    if "<|end|>" in by_text and (("<|return|>" in by_text and ("<|call|>" in by_text or "<|calls|>" in by_text))
                                 or ("<|flush|>" in by_text and ("<|call|>" in by_text or "<|calls|>" in by_text))):
        end = by_text["<|end|>"]
        eog.discard(end)
        attrs[end] = ATTR_USER_DEFINED
    if "<|tool_response>" in by_text and "</s>" in by_text:
        eos = by_text["</s>"]
        eog.discard(eos)
        attrs[eos] = ATTR_NORMAL


def name_based_attrs(md: Mapping[str, Any], texts: list[str], token_to_id: Mapping[str, int],
                     attrs: np.ndarray) -> None:
    """LSTRIP / RSTRIP set by model name (llama.cpp's per-model token attributes)."""
    name = str(md.get("general.name", "")).lower()
    pre = str(md.get(KEY + "pre", ""))
    arch = str(md.get("general.architecture", ""))

    def set_attr(text: str, bit: int, on: bool) -> None:
        if text in token_to_id:
            tid = token_to_id[text]
            attrs[tid] = attrs[tid] | bit if on else attrs[tid] & ~bit

    jina = any(s in pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code"))
    if jina or arch in ("nomic-bert-moe", "jina-bert-v3"):
        set_attr("<mask>", ATTR_LSTRIP, True)
    elif "phi-3" in name or "phi3" in name:
        for tid in np.flatnonzero(attrs & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)):
            attrs[tid] |= ATTR_RSTRIP
        set_attr("</s>", ATTR_RSTRIP, True)
        for text in ("<unk>", "<s>", "<|endoftext|>"):
            set_attr(text, ATTR_RSTRIP, False)
    elif "modern-bert" in name:
        set_attr("[MASK]", ATTR_LSTRIP, True)


# -- putting it together ---------------------------------------------------

def load_vocab(md: Mapping[str, Any], default_add_bos: bool, default_add_eos: bool,
               default_ids: SpecialIds, default_add_space_prefix: bool) -> Vocab:
    """Read the vocabulary of ``md`` as llama.cpp's ``llama_vocab::impl::load``.

    The defaults depend on the tokenizer kind and pre-tokenizer (``tokenizer.py``,
    ``tokenizer_spm.py``); the metadata overrides them.
    """
    tokens = read_tokens(md)
    n = len(tokens)
    texts, token_to_id = token_texts(tokens)
    attrs = initial_attrs(read_per_token(md, "token_type", n, np.int32, TYPE_NORMAL))
    scores = read_per_token(md, "scores", n, np.float32, 0.0)
    ids = read_special_ids(md, n, default_ids)
    add_bos = read_flag(md, "add_bos_token", default_add_bos)
    add_eos = read_flag(md, "add_eos_token", default_add_eos)
    add_space_prefix = read_flag(md, "add_space_prefix", default_add_space_prefix)
    if add_bos and ids.bos is None:
        raise TokenizerError(f"{KEY}add_bos_token is true, but {KEY}bos_token_id is not set")
    if add_eos and ids.eos is None:
        raise TokenizerError(f"{KEY}add_eos_token is true, but {KEY}eos_token_id is not set")
    guess_ids(ids, token_to_id, attrs)
    mark_unused(texts, attrs)
    eog = end_of_generation(ids, token_to_id, attrs)
    prune_eog(eog, texts, attrs)
    name_based_attrs(md, texts, token_to_id, attrs)
    return Vocab(tokens, texts, attrs, scores, token_to_id, ids, add_bos, add_eos, add_space_prefix,
                 frozenset(eog))
