"""llama.cpp's stateful samplers and its random draws, one function per sampler.

:mod:`.sampling` holds the stateless filters (top-k, top-p, min-p, temperature). The
samplers here either remember something (the recent tokens, Mirostat's target ``mu``)
or draw random numbers of their own, so they come with the state they need:

* **repetition penalties** (``llama_sampler_init_penalties``): over the last ``n``
  accepted tokens, a token seen ``c > 0`` times gets
  ``z <- z * r if z <= 0 else z / r`` (Keskar et al. 2019, CTRL; multiplying negative
  logits keeps the penalty a penalty), then ``z <- z - c * f - p`` (OpenAI's frequency and
  presence penalties).
* **locally typical** (``typical``, Meister et al. 2022): with entropy
  ``H = -sum p_i log p_i``, sort by ``|(-log p_i) - H|`` and keep the smallest prefix whose
  mass exceeds ``typical_p``.
* **top-n-sigma** (Tang et al. 2024): keep ``z_i >= max z - n * std(z)``.
* **dynamic temperature** (``temp_ext``): ``T = T_min + (T_max - T_min) * (H / log N)^exponent``
  with ``T_min,max = temp -+ delta``.
* **Mirostat v2** (Basu et al. 2021): drop tokens of surprise ``-log2 p > mu``, draw, then
  ``mu <- mu - eta * (surprise - tau)``: the running surprise is steered to ``tau``.

Random draws: llama.cpp seeds a ``std::mt19937`` and asks libstdc++ for a double in
``[0, 1)``: ``generate_canonical<double, 53>`` takes two 32-bit outputs ``a, b`` and returns
``(a + b * 2^32) / 2^64`` (the sum rounded once to a double). :class:`Mt19937` is the same
generator (Matsumoto & Nishimura 1998), so the same seed gives the same tokens as llama.cpp.
"""

from __future__ import annotations

import copy
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

from ..foundation.errors import ConfigError
from ..foundation.libm import exp_f32, log2_f32, log_f32, logf, powf
from .sampling import Candidates, SamplerConfig, _drop_impossible, apply_temperature, greedy, softmax, top_k_filter

__all__ = ["Dry", "MirostatV1", "Mt19937", "Penalties", "MirostatV2", "Sampler", "Xtc", "canonical_double", "dist_draw",
           "dry_breakers", "dynamic_temperature", "uniform_float",
           "libstdcpp_sort_all_equivalent", "llama_min_p", "llama_softmax", "llama_top_p", "top_n_sigma_filter",
           "typical_filter"]


class Mt19937:
    """The 32-bit Mersenne Twister, seeded as ``std::mt19937(seed)`` (``init_genrand``)."""

    N, M = 624, 397

    def __init__(self, seed: int):
        if not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise ConfigError(f"seed must be an integer in [0, 2^32), got {seed!r}")
        mt = [seed]
        for i in range(1, self.N):
            mt.append((1812433253 * (mt[-1] ^ (mt[-1] >> 30)) + i) & 0xFFFFFFFF)
        self.mt, self.index = mt, self.N

    def _twist(self):
        mt = self.mt
        for i in range(self.N):
            y = (mt[i] & 0x80000000) | (mt[(i + 1) % self.N] & 0x7FFFFFFF)
            mt[i] = mt[(i + self.M) % self.N] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
        self.index = 0

    def next_u32(self) -> int:
        if self.index >= self.N:
            self._twist()
        y = self.mt[self.index]
        self.index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        return y ^ (y >> 18)


def canonical_double(rng: Mt19937) -> float:
    """libstdc++'s ``uniform_real_distribution<double>(0, 1)``: ``(a + b 2^32) / 2^64``, below 1."""
    a = float(rng.next_u32())
    u = (a + float(rng.next_u32()) * 4294967296.0) / 18446744073709551616.0
    return u if u < 1.0 else float(np.nextafter(1.0, 0.0))


def llama_softmax(c: Candidates) -> Candidates:
    """``llama_sampler_softmax_impl`` with sorting: descending logits (ties: lower id), float32
    ``p_i = expf(z_i - z_max)`` summed in order in float32, then ``p_i / sum``."""
    order = np.lexsort((c.ids, -c.logits.astype(np.float64)))
    ids, z = c.ids[order], c.logits[order].astype(np.float32)
    e = exp_f32(z - z[0])                        # (n,) float32, libm's expf
    total = np.cumsum(e, dtype=np.float32)[-1]   # sequential float32 sum, as the C loop
    return Candidates(ids, z, (e / total).astype(np.float32), True)


def dist_draw(c: Candidates, rng: Mt19937) -> int:
    """``llama_sampler_dist``: softmax in candidate order, ``u`` from :func:`canonical_double`,
    the first token whose running (double) sum of float32 ``p`` reaches ``u * sum``.

    ``np.cumsum`` adds strictly left to right, so its float64 running sums are the C loop's."""
    u = canonical_double(rng)
    if len(c) == 1:
        return int(c.ids[0])
    z = c.logits.astype(np.float32)
    running = np.cumsum(exp_f32(z - z.max()), dtype=np.float64)  # (n,) double sums of float32 terms
    i = int(np.searchsorted(running, running[-1] * u, side="left"))  # first running >= target
    return int(c.ids[min(i, len(c) - 1)])


class Penalties:
    """Repetition / frequency / presence penalties over the last ``last_n`` accepted tokens."""

    def __init__(self, last_n: int = 64, repeat: float = 1.0, frequency: float = 0.0, presence: float = 0.0):
        if not isinstance(last_n, int) or last_n < 0:
            raise ConfigError(f"penalty_last_n must be an integer >= 0 (0 disables), got {last_n!r}")
        self.last_n, self.repeat, self.frequency, self.presence = last_n, repeat, frequency, presence
        self.window: deque[int] = deque()
        self.counts: Counter[int] = Counter()

    @property
    def disabled(self) -> bool:
        return self.last_n == 0 or (self.repeat == 1.0 and self.frequency == 0.0 and self.presence == 0.0)

    def accept(self, token: int) -> None:
        if self.last_n == 0:
            return
        self.counts[token] += 1
        if len(self.window) >= self.last_n:
            old = self.window.popleft()
            self.counts[old] -= 1
            if self.counts[old] == 0:
                del self.counts[old]
        self.window.append(token)

    def __call__(self, c: Candidates) -> Candidates:
        if self.disabled or not self.counts:
            return c
        z = c.logits.astype(np.float32).copy()
        pos = np.flatnonzero(np.isin(c.ids, np.fromiter(self.counts, np.int64)))
        r = np.float32(self.repeat)
        for p in pos:
            n = self.counts[int(c.ids[p])]
            z[p] = z[p] * r if z[p] <= 0 else z[p] / r
            z[p] -= np.float32(n) * np.float32(self.frequency) + np.float32(1.0) * np.float32(self.presence)
        return Candidates(c.ids, z, None, False)


def libstdcpp_sort_all_equivalent(n: int) -> np.ndarray:
    """The permutation libstdc++'s ``std::sort`` (GCC 12) makes of ``0..n-1`` when its comparator is
    always false (every key NaN): introsort's median-of-three moves the middle element first, each
    partition reverses the rest, the final insertion sort moves nothing.

        >>> libstdcpp_sort_all_equivalent(20).tolist()[:6]
        [10, 19, 18, 17, 16, 15]

    (checked against the compiled ``std::sort`` for n = 0..3000 and a few vocabulary sizes)."""
    a = np.arange(n)

    def introsort_loop(first: int, last: int, depth: int) -> None:
        while last - first > 16:              # _S_threshold
            if depth == 0:                    # heap-sort fallback; halving never gets here
                raise AssertionError("introsort depth limit reached")
            depth -= 1
            mid = first + (last - first) // 2
            a[first], a[mid] = a[mid], a[first]             # __move_median_to_first: all false -> mid
            a[first + 1:last] = a[first + 1:last][::-1].copy()  # __unguarded_partition swaps both ends inwards
            cut = first + 1 + (last - first - 1) // 2
            introsort_loop(cut, last, depth)
            last = cut

    if n > 1:
        introsort_loop(0, n, 2 * (n.bit_length() - 1))    # 2 * __lg(n)
    return a


def typical_filter(c: Candidates, p: float, min_keep: int = 1) -> Candidates:
    """Locally typical sampling (see the module docstring); ``p >= 1`` disables.

    A candidate of probability 0 (a logit of -inf that an earlier stage, such as top-n-sigma, masked
    but left in the array) makes llama.cpp's entropy ``-0 * log(0)`` NaN, so every score is NaN and
    its ``std::sort`` leaves the tokens in the order of :func:`libstdcpp_sort_all_equivalent`; the
    running sum then keeps a prefix of that order. This reproduces it."""
    if p >= 1.0:
        return c
    s = llama_softmax(c)
    probs = s.probs
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = log_f32(probs.astype(np.float32))  # libm's logf, as llama.cpp (not numpy's per-CPU kernel)
        entropy = np.float32(0)
        for q, lq in zip(probs.tolist(), logp.tolist()):
            entropy = np.float32(entropy + np.float32(-q) * np.float32(lq))
        shifted = np.abs(-logp - entropy)
    if np.isnan(entropy):
        order = libstdcpp_sort_all_equivalent(len(s))
    else:
        order = np.argsort(shifted, kind="stable")
    cum, last = np.float32(0), len(order)
    for i, idx in enumerate(order):
        cum = np.float32(cum + probs[idx])
        if cum > p and (min_keep == 0 or i >= min_keep - 1):
            last = i + 1
            break
    keep = order[:last]
    return Candidates(s.ids[keep], s.logits[keep], None, False)


def llama_top_p(c: Candidates, p: float, min_keep: int = 0) -> Candidates:
    """``llama_sampler_top_p`` to the bit: float32 softmax summed in candidate order, float32
    running sum in sorted order, the first prefix with ``cum >= p`` (and ``>= min_keep`` tokens).

    :func:`.sampling.top_p_filter` is the same rule in exact arithmetic; the two can differ by
    one token where the float32 running sum lands within rounding of ``p``."""
    n = len(c)
    if p >= 1 or n == 0:
        return c
    z = c.logits.astype(np.float32)
    e = exp_f32(z - z.max())
    probs = e / np.cumsum(e, dtype=np.float32)[-1]              # (n,) float32, as the C loop
    # like llama.cpp, sort only the top 256 of a large unsorted set unless they fall short of p
    k = n if c.is_sorted or n <= 1024 else 256
    while True:
        if c.is_sorted:
            order = np.arange(n)
        else:
            top = np.argpartition(-z, k - 1)[:k] if k < n else np.arange(n)
            order = top[np.lexsort((c.ids[top], -z[top].astype(np.float64)))]  # (k,) descending
        cum = np.cumsum(probs[order], dtype=np.float32)         # sequential float32 sums
        hit = np.flatnonzero((cum >= np.float32(p)) & (np.arange(1, k + 1) >= min_keep))
        if len(hit) or k == n:
            keep = order[:int(hit[0]) + 1 if len(hit) else n]
            return Candidates(c.ids[keep], c.logits[keep], None, True)
        k = n


def llama_min_p(c: Candidates, p: float, min_keep: int = 0) -> Candidates:
    """``llama_sampler_min_p`` to the bit: keep ``z_i >= float32(z_max + logf(p))``."""
    n = len(c)
    if p <= 0 or n == 0:
        return c
    z = c.logits.astype(np.float32)
    min_logit = np.float32(z.max() + logf(np.float32(p)))
    keep = z >= min_logit
    if not c.is_sorted and keep.sum() >= max(min_keep, 1):
        return c if keep.all() else c.take(keep)
    s = c if c.is_sorted else c.take(np.lexsort((c.ids, -z.astype(np.float64))), is_sorted=True)
    zs = s.logits.astype(np.float32)
    stop = np.flatnonzero((zs < min_logit) & (np.arange(n) >= max(min_keep, 1)))
    return s.take(np.arange(int(stop[0]) if len(stop) else n))


def top_n_sigma_filter(c: Candidates, n: float, keep_masked: bool = False) -> Candidates:
    """Keep ``z_i >= max z - n std(z)`` over the finite logits; ``n <= 0`` disables.

    ``keep_masked``: as llama.cpp does, set the others to -inf and keep them in the set (its size
    matters downstream: top-k then keeps k entries, typical sampling's entropy turns NaN, dynamic
    temperature's maximum entropy counts them, XTC needs two entries)."""
    if n <= 0 or len(c) <= 1:
        return c
    z = c.logits.astype(np.float32)
    finite = z[z != -np.inf]
    mean = np.float32(np.cumsum(finite, dtype=np.float32)[-1] / np.float32(len(finite)))
    std = np.float32(np.sqrt(np.sum((finite.astype(np.float64) - mean) ** 2) / len(finite)))
    keep = ~(z < z.max() - np.float32(n) * std)
    if keep_masked:
        return c if keep.all() else Candidates(c.ids, np.where(keep, c.logits, -np.inf).astype(c.logits.dtype),
                                               None, c.is_sorted)
    return c.take(np.flatnonzero(keep))


def dynamic_temperature(c: Candidates, temp: float, delta: float, exponent: float) -> Candidates:
    """``temp_ext``: entropy-scaled temperature (see the module docstring); ``delta <= 0``: plain ``temp``."""
    if delta <= 0:
        return Candidates(c.ids, (c.logits.astype(np.float32) / np.float32(temp)).astype(np.float32), None, c.is_sorted)
    if len(c) <= 1:
        return c
    t_min, t_max = max(0.0, temp - delta), temp + delta
    max_entropy = -logf(np.float32(1.0) / np.float32(len(c)))
    s = llama_softmax(c)
    q = s.probs[s.probs > 0]
    entropy = np.float32(-np.sum(q * log_f32(q)))
    t = np.float32(t_min + (t_max - t_min) * powf(entropy / max_entropy, exponent))
    return Candidates(s.ids, (s.logits / t).astype(np.float32), None, True)


@dataclass
class MirostatV2:
    """Mirostat 2.0: truncate at surprise ``mu``, draw, steer ``mu`` towards ``tau``."""

    tau: float = 5.0
    eta: float = 0.1
    seed: int = 0

    def __post_init__(self):
        self.mu = 2.0 * self.tau
        self.rng = Mt19937(self.seed)
        self.surprises: list[float] = []

    def truncate(self, c: Candidates) -> Candidates:
        """The tokens of surprise ``<= mu`` (at least one), renormalised (no state changes)."""
        s = llama_softmax(c)
        surprise = -log2_f32(s.probs.astype(np.float32))  # libm's log2f, as llama.cpp
        over = np.flatnonzero(surprise > np.float32(self.mu))
        n = int(over[0]) if len(over) else len(s)
        return llama_softmax(Candidates(s.ids[:max(n, 1)], s.logits[:max(n, 1)]))

    def __call__(self, c: Candidates) -> int:
        s = self.truncate(c)
        idx = _discrete_draw(s.probs, self.rng)
        observed = float(-log2_f32(s.probs[idx:idx + 1])[0])
        self.surprises.append(observed)
        self.mu = float(np.float32(self.mu) - np.float32(self.eta) * np.float32(observed - self.tau))
        return int(s.ids[idx])


def _discrete_draw(probs: np.ndarray, rng: Mt19937) -> int:
    """``std::discrete_distribution``: double weights normalised, partial sums (the last set to 1),
    the first partial sum ``>= u``. With fewer than two weights libstdc++ draws nothing."""
    if len(probs) < 2:
        return 0
    w = probs.astype(np.float64)
    total = 0.0
    for v in w.tolist():
        total += v
    cp, run = [], 0.0
    for v in w.tolist():
        run += v / total
        cp.append(run)
    cp[-1] = 1.0
    return int(np.searchsorted(np.array(cp), canonical_double(rng), side="left"))


def uniform_float(rng: Mt19937) -> np.float32:
    """libstdc++'s ``uniform_real_distribution<float>(0, 1)``: ``float(a) / 2^32`` in float, below 1."""
    u = np.float32(rng.next_u32()) / np.float32(4294967296.0)
    return u if u < 1 else np.nextafter(np.float32(1), np.float32(0))


@dataclass
class MirostatV1:
    """Mirostat 1.0 (Basu et al. 2021, algorithm 1): estimate the Zipf exponent ``s`` of the top
    ``m`` probabilities, pick the top-k whose expected surprise is ``mu``, draw, steer ``mu``.

        s   = sum_i t_i b_i / sum_i t_i^2,   t_i = log((i+2)/(i+1)),  b_i = log(p_i / p_{i+1}),  i < m-1
        k   = ((s - 1) 2^mu / (1 - N^-(s-1)))^(1/s)              (N = n_vocab)
        mu <- mu - eta (-log2 p_drawn - tau)

    Float32 throughout with libm's ``logf``/``powf``/``log2f``, as ``llama_sampler_mirostat``.
    """

    n_vocab: int
    tau: float = 5.0
    eta: float = 0.1
    m: int = 100
    seed: int = 0

    def __post_init__(self):
        self.mu = np.float32(2.0 * np.float32(self.tau))
        self.rng = Mt19937(self.seed)
        self.surprises: list[float] = []

    def truncate(self, c: Candidates) -> Candidates:
        """The top-k set for the current ``mu``, renormalised (no state changes)."""
        s = llama_softmax(c)
        p = s.probs
        f32 = np.float32
        sum_tb, sum_tt = f32(0), f32(0)
        for i in range(min(self.m - 1, len(s) - 1)):
            t = logf(f32(i + 2) / f32(i + 1))
            b = logf(p[i] / p[i + 1]) if p[i + 1] > 0 else f32(np.inf)
            sum_tb, sum_tt = f32(sum_tb + t * b), f32(sum_tt + t * t)
        s_hat = f32(sum_tb / sum_tt) if sum_tt > 0 else f32(np.nan)
        eps = f32(s_hat - f32(1))
        with np.errstate(all="ignore"):
            k = powf(f32(eps * powf(f32(2), self.mu)) / f32(f32(1) - powf(f32(self.n_vocab), -eps)), f32(1) / s_hat)
        n = int(k) if np.isfinite(k) else len(s)  # C's int(k) truncates; inf/NaN keep everything
        n = min(max(n, 1), len(s))
        return llama_softmax(Candidates(s.ids[:n], s.logits[:n]))

    def __call__(self, c: Candidates) -> int:
        s = self.truncate(c)
        idx = _discrete_draw(s.probs, self.rng)
        observed = -log2_f32(s.probs[idx:idx + 1])[0]
        self.surprises.append(float(observed))
        self.mu = np.float32(self.mu - np.float32(self.eta) * np.float32(observed - np.float32(self.tau)))
        return int(s.ids[idx])


class Xtc:
    """Exclude Top Choices (p-e-w 2024): with probability ``probability``, remove every token whose
    probability is at least ``threshold`` except the least likely of them, so the model does not
    always take the obvious continuation. ``threshold > 0.5`` can remove nothing: disabled."""

    def __init__(self, probability: float, threshold: float, min_keep: int = 0, seed: int = 0):
        self.probability, self.threshold, self.min_keep = np.float32(probability), np.float32(threshold), min_keep
        self.rng = Mt19937(seed)

    def __call__(self, c: Candidates) -> Candidates:
        if self.probability <= 0 or self.threshold > 0.5 or len(c) < 2:
            return c
        if uniform_float(self.rng) > self.probability:
            return c
        s = llama_softmax(c)
        above = np.flatnonzero(~(s.probs >= self.threshold))  # the first position below threshold
        pos_last = (int(above[0]) if len(above) else len(s)) - 1
        if pos_last > 0 and len(s) - pos_last >= self.min_keep:
            return Candidates(s.ids[pos_last:], s.logits[pos_last:], None, True)
        return s


class Dry:
    """DRY, "don't repeat yourself" (p-e-w 2024; llama.cpp's port of koboldcpp's sampler).

    If the last ``L`` tokens also occur earlier followed by token ``t``, emitting ``t`` would
    extend a repetition of length ``L``. For ``L >= allowed_length`` its logit loses
    ``multiplier * base^(L - allowed_length)``. Repetitions are looked for in the last
    ``last_n`` tokens only, and never across a *sequence breaker* (a newline, ``:``...): the
    longest repetition considered ends at the most recent breaker.

    ``breakers`` maps a head token to the tails (token tuples) that complete a breaker string;
    build it with :func:`dry_breakers`.
    """

    MAX_EXPONENT_LOG = np.float32(88.7228391)  # ~log(FLT_MAX): base^exponent stays finite

    def __init__(self, multiplier: float, base: float, allowed_length: int, last_n: int,
                 breakers: dict[int, list[tuple[int, ...]]]):
        self.multiplier, self.base = np.float32(multiplier), np.float32(base)
        self.allowed, self.last_n, self.breakers = allowed_length, max(last_n, 0), breakers
        self.enabled = self.multiplier != 0 and self.base >= 1 and self.last_n != 0
        self.tokens: deque[int] = deque(maxlen=self.last_n or 1)

    def accept(self, token: int) -> None:
        if self.enabled:
            self.tokens.append(token)

    def reset(self) -> None:
        self.tokens.clear()

    def _repeat_limit(self, rev: list[int]) -> int:
        """How far back a repetition may reach: up to the most recent complete breaker."""
        for i, tok in enumerate(rev):
            longest = -1
            for tail in self.breakers.get(tok, ()):
                n = len(tail)
                if longest < n <= i and all(tail[o] == rev[i - o - 1] for o in range(n)):
                    longest = n
            if longest >= 0:
                return i - longest
        return len(rev)

    def penalties(self) -> dict[int, int]:
        """token -> the longest repetition emitting it would extend (only those >= allowed_length)."""
        n = min(len(self.tokens), self.last_n)
        if not self.enabled or n <= self.allowed:
            return {}
        rev = list(self.tokens)[::-1][:n]  # rev[i] = the i-th token from the end
        limit = self._repeat_limit(rev)
        if limit < self.allowed:
            return {}
        z = _z_array(rev)  # z[k] = length of the common prefix of rev and rev[k:]
        longest: dict[int, int] = {}
        for k in range(1, n):
            length = min(z[k], limit)
            if length >= self.allowed:  # the suffix recurs k tokens back, followed by rev[k - 1]
                tok = rev[k - 1]
                if longest.get(tok, -1) < length:
                    longest[tok] = length
        return longest

    def __call__(self, c: Candidates) -> Candidates:
        longest = self.penalties()
        if not longest:
            return c
        max_exp = int(self.MAX_EXPONENT_LOG / logf(self.base)) if self.base > np.float32(1.000001) else 0
        z = c.logits.astype(np.float32).copy()
        for pos in np.flatnonzero(np.isin(c.ids, np.fromiter(longest, np.int64))):
            tok = int(c.ids[pos])
            if any(len(t) == 0 for t in self.breakers.get(tok, ())):
                continue  # a one-token breaker is never penalised
            e = longest[tok] - self.allowed
            if max_exp > 0:
                e = min(e, max_exp)
            # C++'s std::pow(float, int) computes in double; the product is then rounded to float
            z[pos] -= np.float32(float(self.multiplier) * float(self.base) ** e)
        return Candidates(c.ids, z, None, False)


def _z_array(s: list[int]) -> list[int]:
    """The Z-algorithm: ``z[k]`` = length of the longest common prefix of ``s`` and ``s[k:]``, O(n)."""
    n = len(s)
    z, left, right = [0] * n, 0, 0
    for k in range(1, n):
        if k < right:
            z[k] = min(right - k, z[k - left])
        while k + z[k] < n and s[z[k]] == s[k + z[k]]:
            z[k] += 1
        if k + z[k] > right:
            left, right = k, k + z[k]
    return z


_BREAKER_CACHE: dict[tuple, dict[int, list[tuple[int, ...]]]] = {}


def dry_breakers(tokenizer, strings, max_chars: int = 40, max_tail: int = 20) -> dict[int, list[tuple[int, ...]]]:
    """Each breaker string as head token -> tails, as ``llama_sampler_init_dry`` builds them.

    A token whose text contains the string is a breaker by itself (empty tail). A token whose
    text *ends* with a proper prefix of the string is a head; the tail is the tokenisation of
    the rest (at most ``max_tail`` tokens). Strings are cut to ``max_chars`` bytes. Built once
    per tokenizer and breaker list (a pass over the vocabulary).
    """
    key = (id(tokenizer), tuple(strings), max_chars, max_tail)
    if key in _BREAKER_CACHE:
        return _BREAKER_CACHE[key]
    words = [tokenizer.token_bytes(t, render_special=True) for t in range(tokenizer.n_vocab)]
    out: dict[int, list[tuple[int, ...]]] = {}
    for text in strings:
        br = text.encode("utf-8")[:max_chars]
        if not br:
            continue
        for tok, word in enumerate(words):
            if br in word:
                tails = out.setdefault(tok, [])
                if () not in tails:
                    tails.append(())
                continue
            pos = word.find(br[:1])
            while pos != -1:
                matched = min(len(br), len(word) - pos)  # the word ends with br[:matched]
                if word[pos:pos + matched] == br[:matched]:
                    rest = br[matched:].decode("utf-8", errors="replace")
                    tail = tuple(tokenizer.encode(rest, add_special=False, parse_special=False)[:max_tail])
                    tails = out.setdefault(tok, [])
                    if tail not in tails:
                        tails.append(tail)
                pos = word.find(br[:1], pos + 1)
    if len(_BREAKER_CACHE) > 16:
        _BREAKER_CACHE.clear()
    _BREAKER_CACHE[key] = out
    return out


class Sampler:
    """llama.cpp's sampler chain (``common_sampler``) with its state, for one sequence.

        sampler = Sampler(SamplerConfig(temperature=0.7, seed=42), tokenizer)
        sampler.accept_prompt(prompt_ids)   # penalties and DRY see the prompt, as in llama-server
        token = sampler(logits)             # (n_vocab,) float32 -> int; accepts the token
        cands = sampler.candidates(logits)  # what it would draw from, with probabilities

    Order (llama.cpp's default ``--samplers``)::

        penalties -> DRY -> top-n-sigma -> top-k -> typical -> top-p -> min-p -> XTC -> temperature -> dist

    and with ``mirostat`` 1 or 2 just ``temperature -> mirostat``. Each stage is skipped when its
    setting is the "off" value, so the default config is top-k 40, top-p 0.95, min-p 0.05,
    temperature 0.8, then the draw. Draws use ``std::mt19937`` seeded with ``seed mod 2^32`` (the
    draw, XTC and Mirostat each own one, as in llama.cpp), so a seeded sampler picks the tokens
    llama.cpp's picks on the same logits. ``tokenizer`` is needed only for DRY's sequence breakers;
    ``n_ctx`` resolves ``penalty_last_n = -1`` / ``dry_penalty_last_n = -1`` (the whole context).
    """

    def __init__(self, config: SamplerConfig = SamplerConfig(), tokenizer=None, n_ctx: int | None = None):
        if not isinstance(config, SamplerConfig):
            raise ConfigError(f"config must be a SamplerConfig, got {type(config).__name__}")
        self.config, self.tokenizer, self.n_ctx = config, tokenizer, n_ctx
        self.reset()

    def _window(self, last_n: int, name: str) -> int:
        if last_n != -1:
            return last_n
        if self.n_ctx is None:
            raise ConfigError(f"{name} = -1 means the whole context: give the Sampler n_ctx")
        return self.n_ctx

    def reset(self) -> None:
        """Back to the state after construction: no tokens seen, generators re-seeded."""
        cfg = self.config
        seed = int.from_bytes(np.random.SeedSequence().entropy.to_bytes(16, "little")[:4], "little") \
            if cfg.seed is None else cfg.seed % 2**32
        self.seed = seed
        self.rng = Mt19937(seed)
        self.penalties = Penalties(self._window(cfg.penalty_last_n, "penalty_last_n"), cfg.repeat_penalty,
                                   cfg.frequency_penalty, cfg.presence_penalty)
        self.dry = None
        if cfg.dry_multiplier != 0 and cfg.dry_base >= 1 and cfg.dry_penalty_last_n != 0:
            if self.tokenizer is None and cfg.dry_sequence_breakers:
                raise ConfigError("DRY's sequence breakers are strings: give the Sampler the tokenizer")
            breakers = dry_breakers(self.tokenizer, cfg.dry_sequence_breakers) if cfg.dry_sequence_breakers else {}
            self.dry = Dry(cfg.dry_multiplier, cfg.dry_base, cfg.dry_allowed_length,
                           self._window(cfg.dry_penalty_last_n, "dry_penalty_last_n"), breakers)
        self.xtc = Xtc(cfg.xtc_probability, cfg.xtc_threshold, 0, seed) if cfg.xtc_probability > 0 else None
        self.mirostat = None
        if cfg.mirostat == 2:
            self.mirostat = MirostatV2(cfg.mirostat_tau, cfg.mirostat_eta, seed)
        elif cfg.mirostat == 1:
            self.mirostat = "v1"  # built on the first call, when n_vocab is known

    # -- state ------------------------------------------------------------------
    def accept(self, token: int) -> None:
        """Record ``token`` as emitted (llama.cpp's ``llama_sampler_accept``): penalties and DRY."""
        if self.config.mirostat == 0:
            self.penalties.accept(int(token))
            if self.dry is not None:
                self.dry.accept(int(token))

    def accept_prompt(self, ids) -> None:
        for t in ids:
            self.accept(t)

    # -- the chain --------------------------------------------------------------
    def _filtered(self, logits, xtc: Xtc | None) -> Candidates:
        """Every stage before the draw; ``xtc`` is the XTC stage to use (a copy for a dry run)."""
        cfg = self.config
        c = Candidates.from_logits(logits)                   # (n_vocab,) in id order
        if cfg.mirostat:
            return _temperature(c, cfg.temperature, 0.0, 1.0)
        c = self.penalties(c)
        if self.dry is not None:
            c = self.dry(c)
        c = top_n_sigma_filter(c, cfg.top_n_sigma, keep_masked=True)  # llama.cpp's array keeps them at -inf
        c = top_k_filter(c, cfg.top_k)
        c = typical_filter(c, cfg.typical_p)
        c = llama_top_p(c, cfg.top_p)
        c = llama_min_p(c, cfg.min_p)
        if xtc is not None:
            c = xtc(c)
        return _temperature(c, cfg.temperature, cfg.dynatemp_range, cfg.dynatemp_exponent)

    def candidates(self, logits) -> Candidates:
        """The candidates the draw would see, with their probabilities (no state changes).

        Tokens of probability 0 are left out; greedy gives the argmax with probability 1;
        with Mirostat, the top-k set its current ``mu`` allows."""
        xtc = copy.deepcopy(self.xtc)
        c = self._filtered(logits, xtc)
        if self.config.mirostat == 1:
            c = self._mirostat_v1(len(c)).truncate(c)
        elif self.config.mirostat == 2:
            c = self.mirostat.truncate(c)
        return _drop_impossible(softmax(c))

    def _mirostat_v1(self, n_vocab: int) -> MirostatV1:
        if self.mirostat == "v1":
            cfg = self.config
            self.mirostat = MirostatV1(n_vocab, cfg.mirostat_tau, cfg.mirostat_eta, 100, self.seed)
        return self.mirostat

    def __call__(self, logits) -> int:
        """Sample one token id from ``logits`` (shape ``(n_vocab,)``) and accept it."""
        cfg = self.config
        if cfg.is_greedy and cfg.mirostat == 0 and self.penalties.disabled and self.dry is None and self.xtc is None:
            token = greedy(logits)  # nothing before the temperature can move the argmax
        else:
            c = self._filtered(logits, self.xtc)
            if cfg.mirostat == 1:
                token = self._mirostat_v1(len(c))(c)
            elif cfg.mirostat == 2:
                token = self.mirostat(c)
            else:
                token = dist_draw(c, self.rng)
        self.accept(token)
        return token

    def __repr__(self) -> str:
        return f"Sampler({self.config!r})"


def _temperature(c: Candidates, temp: float, delta: float, exponent: float) -> Candidates:
    """``temp_ext``: ``temp <= 0`` keeps only the argmax; else plain or dynamic temperature."""
    if temp <= 0 or delta <= 0:
        return apply_temperature(c, temp)  # z / T in the logits' precision (float32: llama.cpp's)
    return dynamic_temperature(c, temp, delta, exponent)
