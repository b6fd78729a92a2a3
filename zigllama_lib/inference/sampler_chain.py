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

from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

from ..foundation.errors import ConfigError
from ..foundation.libm import exp_f32, log2_f32, log_f32, logf, powf
from .sampling import Candidates

__all__ = ["Mt19937", "Penalties", "MirostatV2", "canonical_double", "dist_draw", "dynamic_temperature",
           "llama_softmax", "top_n_sigma_filter", "typical_filter"]


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
    the first token whose running (double) sum of float32 ``p`` reaches ``u * sum``."""
    u = canonical_double(rng)
    if len(c) == 1:
        return int(c.ids[0])
    z = c.logits.astype(np.float32)
    e = exp_f32(z - z.max())
    total = 0.0
    for v in e.tolist():  # double sum of float32 terms, in order
        total += v
    target, running = total * u, 0.0
    for i, v in enumerate(e.tolist()):
        running += v
        if running >= target:
            return int(c.ids[i])
    return int(c.ids[-1])


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


def typical_filter(c: Candidates, p: float, min_keep: int = 1) -> Candidates:
    """Locally typical sampling (see the module docstring); ``p >= 1`` disables."""
    if p >= 1.0:
        return c
    s = llama_softmax(c)
    probs = s.probs
    logp = log_f32(probs.astype(np.float32))  # libm's logf, as llama.cpp (not numpy's per-CPU kernel)
    entropy = np.float32(0)
    for q, lq in zip(probs.tolist(), logp.tolist()):
        entropy = np.float32(entropy + np.float32(-q) * np.float32(lq))
    shifted = np.abs(-logp - entropy)
    order = np.argsort(shifted, kind="stable")
    cum, last = np.float32(0), len(order)
    for i, idx in enumerate(order):
        cum = np.float32(cum + probs[idx])
        if cum > p and (min_keep == 0 or i >= min_keep - 1):
            last = i + 1
            break
    keep = order[:last]
    return Candidates(s.ids[keep], s.logits[keep], None, False)


def top_n_sigma_filter(c: Candidates, n: float) -> Candidates:
    """Keep ``z_i >= max z - n std(z)`` over the finite logits; ``n <= 0`` disables."""
    if n <= 0 or len(c) <= 1:
        return c
    z = c.logits.astype(np.float32)
    finite = z[z != -np.inf]
    mean = np.float32(np.cumsum(finite, dtype=np.float32)[-1] / np.float32(len(finite)))
    std = np.float32(np.sqrt(np.sum((finite.astype(np.float64) - mean) ** 2) / len(finite)))
    keep = ~(z < z.max() - np.float32(n) * std)
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

    def __call__(self, c: Candidates) -> int:
        s = llama_softmax(c)
        surprise = -log2_f32(s.probs.astype(np.float32))  # libm's log2f, as llama.cpp
        over = np.flatnonzero(surprise > np.float32(self.mu))
        n = int(over[0]) if len(over) else len(s)
        s = llama_softmax(Candidates(s.ids[:max(n, 1)], s.logits[:max(n, 1)]))
        idx = _discrete_draw(s.probs, self.rng)
        observed = float(-log2_f32(s.probs[idx:idx + 1])[0])
        self.surprises.append(observed)
        self.mu = float(np.float32(self.mu) - np.float32(self.eta) * np.float32(observed - self.tau))
        return int(s.ids[idx])


def _discrete_draw(probs: np.ndarray, rng: Mt19937) -> int:
    """``std::discrete_distribution``: double weights normalised, partial sums (the last set to 1),
    the first partial sum ``>= u``."""
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
