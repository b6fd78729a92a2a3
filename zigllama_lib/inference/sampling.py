"""Next-token samplers: turn one logits vector into one token id.

The model's last position gives ``n_vocab`` logits ``z`` (float32, 49k-262k of
them). A sampler turns them into a probability distribution and draws from it:

    softmax:      p_i = exp(z_i - m) / sum_j exp(z_j - m),      m = max_j z_j

(subtracting ``m`` changes nothing mathematically and keeps ``exp`` from
overflowing). Sampling straight from ``p`` lets the long tail of unlikely
tokens through, so llama.cpp first *filters* the candidate set. This module
follows llama.cpp's sampler chain in llama-cpp-python's default order:

    top-k -> top-p -> min-p -> temperature -> softmax -> draw

* **top-k** keeps the ``k`` largest logits (``k <= 0``: off; ``k >= n``: all).
* **top-p** (nucleus): sort the distribution of the current candidates in
  descending order, ``p_(1) >= p_(2) >= ...``, and keep the smallest prefix
  whose cumulative probability reaches ``top_p``:
  ``n_keep = min { n : sum_{i<=n} p_(i) >= top_p }``; the token that crosses
  ``top_p`` is kept, and so is at least one token (``top_p >= 1``: off).
* **min-p** keeps tokens with ``p_i >= min_p * p_max``, measured on the
  distribution of the candidates at that point. Because
  ``p_i / p_max = exp(z_i - z_max)`` this is the logit test
  ``z_i >= z_max + log(min_p)``, which needs no softmax (``min_p <= 0``: off).
* **temperature** divides the logits: ``z_i / T``. ``T < 1`` sharpens the
  distribution, ``T > 1`` flattens it. It comes *after* the filters, so it
  reshapes the kept tokens but does not change which tokens are kept.
* **greedy**: ``T <= 0`` means argmax, whatever the other settings.

Ties are broken towards the lower token id everywhere (as ``np.argmax``), so
every step is deterministic; with a seed, so is the draw.

Cost per call with the default ``top_k=40`` on a 262k vocabulary: one
``np.partition`` and two comparisons over the vector (under a millisecond);
everything after top-k touches 40 numbers. No step sorts the whole vocabulary:
top-p without top-k grows a sorted prefix until it holds ``top_p`` of the mass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from numbers import Integral, Real

import numpy as np

from ..foundation.errors import ConfigError

__all__ = [
    "Candidates", "LogitBias", "SamplerConfig", "apply_temperature", "draw", "greedy", "log_softmax",
    "min_p_filter", "softmax", "sort_candidates", "top_k_filter", "top_logprobs", "top_p_filter",
]

# Rounding slack for the inclusive tests of top-p (cum >= p) and min-p
# (p_i >= min_p * p_max): float64 normalisation turns an exact tie such as
# 0.5 + 0.3 >= 0.8 into 0.7999999999999999 < 0.8. A slack of 1e-9 (far above
# float64 rounding of a 262k-term sum, far below float32 logit resolution)
# lets ties resolve as in exact arithmetic and changes nothing else.
_SLACK = 1e-9


# --------------------------------------------------------------------------- config


def _is_int(x) -> bool:
    return isinstance(x, Integral) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


@dataclass(frozen=True)
class SamplerConfig:
    """Sampler settings; every default is llama.cpp's (``common_params_sampling``), so a default
    config turns on exactly top-k 40, top-p 0.95, min-p 0.05 and temperature 0.8.

    Attributes:
        temperature: divides the logits; ``<= 0`` means greedy (argmax).
        top_k: keep the ``top_k`` most likely tokens; ``<= 0`` disables.
        top_p: nucleus mass to keep, in ``(0, 1]``; ``1`` disables.
        min_p: keep tokens with ``p >= min_p * p_max``, in ``[0, 1]``; ``0`` disables.
        seed: seeds the random draws (``std::mt19937``, taken mod 2^32); ``None`` draws OS entropy.
        repeat_penalty, frequency_penalty, presence_penalty, penalty_last_n: the penalties over the
            last ``penalty_last_n`` tokens (``-1``: the whole context; ``0`` disables).
        dry_multiplier, dry_base, dry_allowed_length, dry_penalty_last_n, dry_sequence_breakers:
            DRY (``dry_multiplier = 0`` disables; ``dry_penalty_last_n = -1``: the whole context).
        typical_p: locally typical sampling's mass; ``1`` disables.
        top_n_sigma: keep logits within ``n`` standard deviations of the best; ``<= 0`` disables.
        xtc_probability, xtc_threshold: exclude-top-choices; probability ``0`` disables.
        dynatemp_range, dynatemp_exponent: dynamic temperature ``temp +- range``; range ``0`` disables.
        mirostat, mirostat_tau, mirostat_eta: ``0`` off, ``1`` Mirostat, ``2`` Mirostat 2.0 (then
            only the temperature runs before it, as in llama.cpp).
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    seed: int | None = None
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = 64
    dry_sequence_breakers: tuple[str, ...] = ("\n", ":", "\"", "*")
    typical_p: float = 1.0
    top_n_sigma: float = -1.0
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    dynatemp_range: float = 0.0
    dynatemp_exponent: float = 1.0
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1

    def __post_init__(self):
        t, k, p, mp, s = self.temperature, self.top_k, self.top_p, self.min_p, self.seed
        if not _is_real(t) or not math.isfinite(t) or t < 0:
            raise ConfigError(f"temperature must be a finite number >= 0 (0 = greedy), got {t!r}")
        if not _is_int(k):
            raise ConfigError(f"top_k must be an integer (<= 0 disables), got {k!r}")
        if not _is_real(p) or not 0 < p <= 1:
            raise ConfigError(f"top_p must be in (0, 1] (1 disables), got {p!r}")
        if not _is_real(mp) or not 0 <= mp <= 1:
            raise ConfigError(f"min_p must be in [0, 1] (0 disables), got {mp!r}")
        if s is not None and (not _is_int(s) or s < 0):
            raise ConfigError(f"seed must be None or a non-negative integer, got {s!r}")
        _check_real(self, "repeat_penalty", 0, None, lo_open=True)
        _check_real(self, "frequency_penalty", -2, 2)
        _check_real(self, "presence_penalty", -2, 2)
        _check_int(self, "penalty_last_n", -1)
        _check_real(self, "dry_multiplier", 0, None)
        _check_real(self, "dry_base", 0, None)
        _check_int(self, "dry_allowed_length", 0)
        _check_int(self, "dry_penalty_last_n", -1)
        b = self.dry_sequence_breakers
        if not isinstance(b, (tuple, list)) or not all(isinstance(x, str) for x in b):
            raise ConfigError(f"dry_sequence_breakers must be a sequence of strings, got {b!r}")
        object.__setattr__(self, "dry_sequence_breakers", tuple(b))
        _check_real(self, "typical_p", 0, 1, lo_open=True)
        _check_real(self, "top_n_sigma", None, None)
        _check_real(self, "xtc_probability", 0, 1)
        _check_real(self, "xtc_threshold", 0, 1)
        _check_real(self, "dynatemp_range", 0, None)
        _check_real(self, "dynatemp_exponent", 0, None)
        if self.mirostat not in (0, 1, 2) or not _is_int(self.mirostat):
            raise ConfigError(f"mirostat must be 0 (off), 1 or 2, got {self.mirostat!r}")
        _check_real(self, "mirostat_tau", 0, None)
        _check_real(self, "mirostat_eta", 0, None)

    @property
    def is_greedy(self) -> bool:
        return self.temperature <= 0


def _check_real(cfg, name: str, lo, hi, lo_open: bool = False) -> None:
    """ConfigError naming ``name`` unless it is a finite real in ``[lo, hi]`` (``(lo, hi]`` if ``lo_open``)."""
    v = getattr(cfg, name)
    ok = _is_real(v) and math.isfinite(v) and (lo is None or (v > lo if lo_open else v >= lo)) \
        and (hi is None or v <= hi)
    if not ok:
        lo_s = "-inf" if lo is None else lo
        rng = f"{'(' if lo_open or lo is None else '['}{lo_s}, {'inf)' if hi is None else f'{hi}]'}"
        raise ConfigError(f"{name} must be a finite number in {rng}, got {v!r}")


def _check_int(cfg, name: str, lo: int) -> None:
    v = getattr(cfg, name)
    if not _is_int(v) or v < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")


# --------------------------------------------------------------------------- candidates


@dataclass(frozen=True, eq=False)
class Candidates:
    """A candidate set: the token ids still in play and their logits.

    Every filter takes a ``Candidates`` and returns a new one. ``probs`` is
    filled by :func:`softmax` only (filters drop it: after filtering, old
    probabilities no longer sum to 1).
    """

    ids: np.ndarray                  # (n,) int64 token ids
    logits: np.ndarray               # (n,) float32/float64 logits of those tokens
    probs: np.ndarray | None = None  # (n,) float64, sums to 1; set by softmax()
    is_sorted: bool = False          # descending logit, ties: lower id first

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_logits(cls, logits) -> "Candidates":
        """Every token of the vocabulary, in id order (validates ``logits``)."""
        z = _checked_logits(logits)
        m = z.max()
        if m == np.inf:
            raise ConfigError("logits contain +inf: the distribution is undefined")
        if m == -np.inf:
            raise ConfigError("logits are all -inf: no token is possible")
        return cls(_identity_ids(len(z)), z)

    def take(self, positions: np.ndarray, is_sorted: bool | None = None) -> "Candidates":
        """The candidates at ``positions`` (an index array or boolean mask), probs dropped."""
        keep_sorted = self.is_sorted if is_sorted is None else is_sorted
        return Candidates(self.ids[positions], self.logits[positions], None, keep_sorted)


@lru_cache(maxsize=4)
def _identity_ids(n: int) -> np.ndarray:
    ids = np.arange(n, dtype=np.int64)  # (n_vocab,), shared and read-only
    ids.flags.writeable = False
    return ids


def _checked_logits(logits) -> np.ndarray:
    """``logits`` as a 1-D float array; ConfigError if it is empty or holds NaN."""
    z = np.asarray(logits)
    if z.ndim != 1:
        raise ConfigError(f"logits must be a 1-D vector of n_vocab scores, got shape {z.shape}")
    if z.size == 0:
        raise ConfigError("logits are empty (n_vocab = 0)")
    if not np.issubdtype(z.dtype, np.floating):
        if not (np.issubdtype(z.dtype, np.integer) or z.dtype == np.bool_):
            raise ConfigError(f"logits must be real numbers, got dtype {z.dtype}")
        z = z.astype(np.float64)
    if np.isnan(z.max()):  # max propagates NaN: one pass finds it
        raise ConfigError("logits contain NaN")
    return z


def sort_candidates(c: Candidates) -> Candidates:
    """``c`` in descending logit order, ties by ascending id."""
    if c.is_sorted:
        return c
    order = np.lexsort((c.ids, -c.logits))  # last key is primary
    probs = None if c.probs is None else c.probs[order]
    return Candidates(c.ids[order], c.logits[order], probs, True)


# --------------------------------------------------------------------------- filters


def top_k_filter(c: Candidates, k: int) -> Candidates:
    """Keep the ``k`` largest logits, sorted (``k <= 0``: unchanged).

    One ``np.partition`` finds the k-th largest logit ``v``; every logit above
    ``v`` is kept, then the lowest ids among those equal to ``v`` fill the rest.
    """
    n = len(c)
    if k <= 0:
        return c
    if c.is_sorted:
        return c if k >= n else Candidates(c.ids[:k], c.logits[:k], None, True)
    if k >= n:
        return sort_candidates(c)
    z = c.logits
    v = np.partition(z, n - k)[n - k]  # the k-th largest logit
    above = np.flatnonzero(z > v)      # fewer than k positions
    ties = np.flatnonzero(z == v)
    ties = ties[np.argsort(c.ids[ties], kind="stable")[: k - len(above)]]
    return sort_candidates(c.take(np.concatenate([above, ties])))


def _unnormalised(z: np.ndarray, m) -> np.ndarray:
    """``exp(z - m)`` in the logits' precision (float32 like llama.cpp's expf)."""
    return np.exp(z - m)


def top_p_filter(c: Candidates, p: float, min_keep: int = 1) -> Candidates:
    """Nucleus: the smallest sorted prefix with cumulative probability ``>= p``.

    With ``p_(1) >= p_(2) >= ...`` the softmax of the candidates,
    ``n_keep = max(min_keep, min { n : p_(1) + ... + p_(n) >= p })``; the token
    that crosses ``p`` is kept. ``p >= 1`` returns ``c`` unchanged. Large
    unsorted sets are not sorted whole: the top 256, 4096, ... are sorted until
    the prefix holds mass ``p`` (normalised by the sum over all candidates).
    The comparison allows ``_SLACK`` (1e-9) of rounding, so exact ties keep
    the crossing token as the real-number maths says.
    """
    n = len(c)
    if p >= 1 or n <= max(1, min_keep):
        return c
    m = c.logits.max()
    total = _unnormalised(c.logits, m).sum(dtype=np.float64)  # softmax denominator
    k = n if c.is_sorted else min(n, 256)
    while True:
        top = top_k_filter(c, k)                                           # (k,) sorted
        cum = np.cumsum(_unnormalised(top.logits, m), dtype=np.float64) / total
        n_keep = int(np.searchsorted(cum, p - _SLACK, side="left")) + 1     # first cum >= p, kept
        if n_keep <= k or k == n:
            return top_k_filter(top, max(min(n_keep, k), min_keep))
        k = min(n, 16 * k)


def min_p_filter(c: Candidates, min_p: float) -> Candidates:
    """Keep tokens with ``p_i >= min_p * p_max`` (``min_p <= 0``: unchanged).

    ``p_i / p_max = exp(z_i - z_max)``, so the test is ``z_i >= z_max + log(min_p)``
    (llama.cpp's form): no softmax needed, and the top token always stays.
    Order (and sortedness) is preserved; ties (up to ``_SLACK``) are kept.
    """
    if min_p <= 0 or len(c) <= 1:
        return c
    threshold = np.float64(c.logits.max()) + np.log(np.float64(min_p)) - _SLACK
    keep = c.logits >= threshold  # (n,) bool, compared in float64
    return c if keep.all() else c.take(keep)


def apply_temperature(c: Candidates, temperature: float) -> Candidates:
    """Logits divided by ``temperature``: ``z_i / T``.

    ``T <= 0`` is the greedy limit (``T -> 0`` puts all mass on the maximum):
    only the largest logit (lowest id among ties) is kept. ``T = 1`` is a no-op.
    """
    if not _is_real(temperature) or math.isnan(temperature):
        raise ConfigError(f"temperature must be a number, got {temperature!r}")
    if temperature <= 0:
        return c.take(np.array([_argmax_position(c)]), is_sorted=True)
    if temperature == 1:
        return c
    return Candidates(c.ids, c.logits / c.logits.dtype.type(temperature), None, c.is_sorted)


def _argmax_position(c: Candidates) -> int:
    """Position of the largest logit in ``c``, lowest id among ties."""
    if c.is_sorted:
        return 0
    ties = np.flatnonzero(c.logits == c.logits.max())
    return int(ties[np.argmin(c.ids[ties])])


def softmax(c: Candidates) -> Candidates:
    """Fill ``probs``: ``p_i = exp(z_i - m) / sum_j exp(z_j - m)``, ``m = max z``.

    The exponentials are taken in the logits' precision, the sum and the
    division in float64. A ``-inf`` logit gets probability 0.
    """
    m = c.logits.max()
    if not np.isfinite(m):
        raise ConfigError(f"cannot normalise logits whose maximum is {m}")
    e = _unnormalised(c.logits, m)               # (n,) in [0, 1], the max gives 1
    probs = e / e.sum(dtype=np.float64)          # (n,) float64
    return Candidates(c.ids, c.logits, probs.astype(np.float64, copy=False), c.is_sorted)


def _drop_impossible(c: Candidates) -> Candidates:
    """Remove candidates whose probability is exactly 0 (``-inf`` or underflow)."""
    keep = c.probs > 0
    if keep.all():
        return c
    return Candidates(c.ids[keep], c.logits[keep], c.probs[keep], c.is_sorted)


# --------------------------------------------------------------------------- drawing


def greedy(logits) -> int:
    """The argmax token id (lowest id among ties, as ``np.argmax``)."""
    z = _checked_logits(logits)
    i = int(np.argmax(z))
    if z[i] == -np.inf:
        raise ConfigError("logits are all -inf: no token is possible")
    return i


def draw(c: Candidates, rng: np.random.Generator) -> int:
    """One token id from ``c.probs`` by inverting the cumulative distribution.

    With ``u ~ U[0, 1)`` and ``C_j = p_1 + ... + p_j``, return the first ``j``
    with ``C_j > u * C_n``: token ``j`` is hit with probability ``p_j``, and a
    token of probability 0 never is.
    """
    if c.probs is None:
        c = softmax(c)
    cum = np.cumsum(c.probs)                                      # (n,) float64
    j = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
    if j >= len(c):  # u * C_n rounded up to C_n: take the last possible token
        j = int(np.flatnonzero(c.probs > 0)[-1])
    return int(c.ids[j])


# --------------------------------------------------------------------------- logit bias, log-probabilities


class LogitBias:
    """A logits processor adding a fixed bias per token id (OpenAI's ``logit_bias``).

        bias = LogitBias({50256: -100.0, 13: 2.5}, n_vocab)
        z2 = bias(z)     # (n_vocab,) copy of z with z2[50256] = z[50256] - 100, z2[13] = z[13] + 2.5

    A bias of -100 all but bans a token, +100 all but forces it (as OpenAI
    describes them); ``-inf`` bans it outright. The input is never modified.
    """

    def __init__(self, bias: dict[int, float], n_vocab: int):
        for tid, b in bias.items():
            if not _is_int(tid) or not 0 <= tid < n_vocab:
                raise ConfigError(f"logit_bias token id {tid!r} is not in [0, {n_vocab})")
            if not _is_real(b) or math.isnan(b) or b == math.inf:
                raise ConfigError(f"logit_bias for token {tid} must be a number (or -inf), got {b!r}")
        self.ids = np.array(sorted(bias), dtype=np.int64)                # (n_bias,)
        self.values = np.array([bias[i] for i in self.ids], np.float32)  # (n_bias,)

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        z = np.array(logits, dtype=np.float32, copy=True)  # (n_vocab,)
        z[self.ids] += self.values
        return z


def log_softmax(logits) -> np.ndarray:
    """``log p_i = z_i - m - log(sum_j exp(z_j - m))``, ``m = max z``, in float64: (n,)."""
    z = _checked_logits(logits).astype(np.float64)
    m = z.max()
    return z - m - np.log(np.exp(z - m).sum())


def top_logprobs(logits, n: int, log_probs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` most likely token ids and their log-probabilities, most likely first.

    Returns ``(ids, logprobs)``: (n,) int64 and (n,) float64, ties by lower id
    (the order of :func:`top_k_filter`); the log-probabilities are those of the
    whole vocabulary's softmax (:func:`log_softmax`), not of the kept ``n``.
    Pass ``log_probs=log_softmax(logits)`` when you have it already.
    """
    lp = log_softmax(logits) if log_probs is None else log_probs
    top = top_k_filter(Candidates(_identity_ids(len(lp)), lp), max(0, n)) if n > 0 else None
    if top is None:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    return top.ids, top.logits
