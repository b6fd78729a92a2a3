"""Mistral's sliding window, every layer, against transformers' ``MistralForCausalLM`` (torch, CPU).

Mistral v0.1 (transformers' ``MistralForCausalLM`` with ``config.sliding_window = W``) windows EVERY
layer: the query at position ``i`` sees the keys ``j`` with ``i - W < j <= i`` (``masking_utils.
sliding_window_overlay``: ``kv_idx > q_idx - sliding_window``, and'ed with ``kv_idx <= q_idx``) --
the convention of our attention kernels (``q_pos - k_pos < window``, llama.cpp's standard SWA)
that Gemma 3's five-of-six sliding layers already use.

The oracle is independent of this library: a tiny random Mistral built offline from a
``MistralConfig`` (eager attention, float32), written as a ``general.architecture = "mistral"``
GGUF with our writer (Q and K rows permuted as llama.cpp's ``convert_hf_to_gguf.py``
``LlamaModel.permute`` does for the "norm" RoPE), loaded with ``zl.load``. Sequences run to 40
positions, five windows of 8.

Every code path that attends over a cache is compared with transformers' full-sequence logits
(teacher-forced on the tokens actually fed), windowed and unwindowed:

* float numerics: prefill (contiguous cache); one token at a time (contiguous cache); the paged
  cache in chunks and then one token at a time, with a sliding-window pool too small to hold the
  sequence without eviction; greedy ``generate_ids`` vs transformers' greedy ``generate``;
  ``ContinuousBatcher`` (``forward_batch`` over paged sequences, chunked prefill).
* llama.cpp numerics (float16 KV cache), F32 file: the same paths through llama.cpp's kernels
  (``attention_ggml``, ``attention_ggml_paged``, and the batcher's block-table kernel
  ``attention_rows_paged``).
* llama.cpp numerics, Q8_0 copy of the weights (the oracle then runs the dequantised Q8_0
  weights, checked to float precision with float numerics): the fused one-token step
  (``fused_decode``, contiguous and paged, also checked bit for bit against the unfused loop) and
  the batcher mixing batched and fused steps.

Tolerances, as a fraction of ``scale = max |logit|`` (7-11 here); the window's own effect on the
logits is at least ~0.15 * scale at every position past it (measured; >= 0.1 checked):

* float numerics: ``1e-4``. Both sides float32, other summation orders: measured <= 2.3e-6
  (<= 1.9e-5 absolute), 40x margin, and 1000x below the window's effect.
* llama.cpp numerics, F32 weights: ``1e-2``. The float16 KV cache: measured <= 3.1e-3.
* llama.cpp numerics, Q8_0 weights: ``8e-2``. Every activation is also rounded to 8 bits per
  block of 32 before each product (llama.cpp's Q8_0 x Q8_0 dot products), through three layers of
  sharp attention: measured <= 4.5e-2 (already ~1e-2 at position 0, where no window acts). As
  that is loose, every llama.cpp-numerics check also requires each position past the window to be
  more than 3x the max difference away from the other window setting's oracle (measured: >= 5x).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import zigllama_lib as zl  # noqa: E402
from zigllama_lib.foundation.ggml_types import GGMLType  # noqa: E402
from zigllama_lib.foundation.gguf_writer import GGUFWriter  # noqa: E402
from zigllama_lib.inference.batching import BatchRequest, ContinuousBatcher  # noqa: E402
from zigllama_lib.inference.generation import make_sampler  # noqa: E402
from zigllama_lib.linear_algebra.quantize import quantize, round_trip  # noqa: E402
from zigllama_lib.models.arch import spec_from_metadata  # noqa: E402
from zigllama_lib.models.decoder import numerics_named  # noqa: E402

VOCAB, D, N_LAYER, N_HEAD, N_KV, D_FF, WINDOW = 320, 64, 3, 4, 2, 128, 8
HEAD_DIM = D // N_HEAD
N_POS = 40  # five windows
N_CTX = 64
TOL = {("float", "F32"): 1e-4, ("float", "Q8_0"): 1e-4,  # x max |logit| (module docstring)
       ("llama.cpp", "F32"): 1e-2, ("llama.cpp", "Q8_0"): 8e-2}


# -- the model: numpy weights under HF's names -------------------------------------------------
def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights, std gain/sqrt(fan_in) (HF's default init, std 0.02, gives near-uniform
    attention and ~0.01 logits: a window would barely show); norm weights 1 + 0.1 N(0, 1)."""
    rng = np.random.default_rng(seed)

    def mat(n_out, n_in, gain=1.0):
        return (rng.standard_normal((n_out, n_in)) * gain / np.sqrt(n_in)).astype(np.float32)

    def norm():
        return (1 + 0.1 * rng.standard_normal(D)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((VOCAB, D)).astype(np.float32),
         "model.norm.weight": norm(), "lm_head.weight": mat(VOCAB, D, 2.0)}
    for i in range(N_LAYER):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = mat(N_HEAD * HEAD_DIM, D, 2.0)  # sharp attention
        w[p + "self_attn.k_proj.weight"] = mat(N_KV * HEAD_DIM, D, 2.0)
        w[p + "self_attn.v_proj.weight"] = mat(N_KV * HEAD_DIM, D)
        w[p + "self_attn.o_proj.weight"] = mat(D, N_HEAD * HEAD_DIM)
        w[p + "mlp.gate_proj.weight"] = mat(D_FF, D)
        w[p + "mlp.up_proj.weight"] = mat(D_FF, D)
        w[p + "mlp.down_proj.weight"] = mat(D, D_FF)
        w[p + "input_layernorm.weight"] = norm()
        w[p + "post_attention_layernorm.weight"] = norm()
    return w


def _hf_model(weights: dict[str, np.ndarray], window: int | None):
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(vocab_size=VOCAB, hidden_size=D, intermediate_size=D_FF, num_hidden_layers=N_LAYER,
                           num_attention_heads=N_HEAD, num_key_value_heads=N_KV, head_dim=HEAD_DIM,
                           sliding_window=window, rope_theta=10000.0, rms_norm_eps=1e-5,
                           max_position_embeddings=N_CTX, tie_word_embeddings=False, bos_token_id=1,
                           eos_token_id=2, pad_token_id=0, attn_implementation="eager")
    torch.manual_seed(0)
    model = MistralForCausalLM(config).to(torch.float32).eval()
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()},
                                                strict=False)
    assert not unexpected and not [m for m in missing if "rotary" not in m], (missing, unexpected)
    assert model.config.sliding_window == window and model.config._attn_implementation == "eager"
    return model


def _permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py ``LlamaModel.permute``: HF's split-half RoPE rows ->
    the interleaved pairs of llama.cpp's "norm" RoPE."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tokenizer_metadata() -> dict:
    """A SentencePiece ("llama") vocabulary of VOCAB pieces: <unk> <s> </s>, the 256 byte tokens,
    then plain pieces (the tests feed token ids)."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581t{i}" for i in range(VOCAB - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (VOCAB - 259)
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": np.array([0.0] * 259 + [-float(i) for i in range(VOCAB - 259)], np.float32),
            "tokenizer.ggml.token_type": np.array(types, np.int32), "tokenizer.ggml.unknown_token_id": 0,
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.add_bos_token": True}


def _write_gguf(path, weights: dict[str, np.ndarray], window: int | None, qtype: GGMLType) -> str:
    """The model as llama.cpp's converter lays out a llama-family GGUF, under arch "mistral";
    matrices in ``qtype`` (F32 or Q8_0), norms F32."""
    w = GGUFWriter(path)
    a = "mistral."
    for k, v in {"general.architecture": "mistral", "general.name": "tiny-random-mistral",
                 a + "context_length": np.uint32(N_CTX), a + "embedding_length": np.uint32(D),
                 a + "block_count": np.uint32(N_LAYER), a + "feed_forward_length": np.uint32(D_FF),
                 a + "attention.head_count": np.uint32(N_HEAD), a + "attention.head_count_kv": np.uint32(N_KV),
                 a + "attention.layer_norm_rms_epsilon": np.float32(1e-5), a + "rope.freq_base": np.float32(10000.0),
                 a + "rope.dimension_count": np.uint32(HEAD_DIM), **_tokenizer_metadata()}.items():
        w.add_metadata(k, v)
    if window is not None:
        w.add_metadata(a + "attention.sliding_window", np.uint32(window))

    def matrix(name, m):
        if qtype == GGMLType.F32:
            w.add_tensor(name, m)
        else:
            w.add_tensor(name, quantize(m, qtype), ggml_type=qtype)

    matrix("token_embd.weight", weights["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", weights["model.norm.weight"])
    matrix("output.weight", weights["lm_head.weight"])
    for i in range(N_LAYER):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", weights[p + "input_layernorm.weight"])
        matrix(b + "attn_q.weight", _permute(weights[p + "self_attn.q_proj.weight"], N_HEAD, N_HEAD))
        matrix(b + "attn_k.weight", _permute(weights[p + "self_attn.k_proj.weight"], N_HEAD, N_KV))
        matrix(b + "attn_v.weight", weights[p + "self_attn.v_proj.weight"])
        matrix(b + "attn_output.weight", weights[p + "self_attn.o_proj.weight"])
        w.add_tensor(b + "ffn_norm.weight", weights[p + "post_attention_layernorm.weight"])
        matrix(b + "ffn_gate.weight", weights[p + "mlp.gate_proj.weight"])
        matrix(b + "ffn_up.weight", weights[p + "mlp.up_proj.weight"])
        matrix(b + "ffn_down.weight", weights[p + "mlp.down_proj.weight"])
    return w.write()


class Pair:
    """One model as transformers runs it and as the library loads it from GGUF."""

    def __init__(self, hf, ours):
        self.hf, self.ours = hf, ours
        self.decoder = ours.decoder

    def hf_logits(self, ids) -> np.ndarray:
        """transformers' logits at every position of ``ids`` (a batch if ``ids`` is 2-D)."""
        ids = np.asarray(ids, np.int64)
        with torch.no_grad():
            out = self.hf(torch.from_numpy(np.atleast_2d(ids))).logits.numpy()
        return out[0] if ids.ndim == 1 else out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """``models[fmt, windowed]``: the F32 file or its Q8_0 copy, with the window (8) or without."""
    d = tmp_path_factory.mktemp("mistral")
    f32 = _weights()
    q8 = {k: (round_trip(v, GGMLType.Q8_0) if v.ndim == 2 else v) for k, v in f32.items()}
    out = {}
    for fmt, weights in (("F32", f32), ("Q8_0", q8)):
        for windowed in (True, False):
            window = WINDOW if windowed else None
            path = _write_gguf(d / f"{fmt}-{windowed}.gguf", f32, window, GGMLType[fmt])
            out[fmt, windowed] = Pair(_hf_model(weights, window), zl.load(path, n_ctx=N_CTX, progress=False))
    return out


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(1).integers(3, VOCAB, N_POS)


def _check(got, ref, ref_other, numerics, fmt, what, first_pos=0):
    """``got`` (logits, a row per position ``first_pos ..``) matches ``ref`` (transformers', same rows)
    within the tolerance; with llama.cpp numerics, each row past the window is also more than 3x
    that max difference from ``ref_other``, the oracle of the other window setting."""
    tol = TOL[numerics, fmt] * float(np.abs(ref).max())
    err = float(np.abs(got - ref).max())
    assert err <= tol, f"{what} ({numerics}, {fmt}): max |ours - transformers| = {err:.3g} > {tol:.3g}"
    if numerics != "float":
        other = np.abs(got - ref_other)[max(0, WINDOW - first_pos):].max(axis=1)
        assert other.min() > 3 * err, f"{what}: a position past the window is {other.min():.3g} from the other oracle"


def _check_pairs(models, fmt, windowed, ids, got, numerics, what):
    pair, other = models[fmt, windowed], models[fmt, not windowed]
    _check(got, pair.hf_logits(ids), other.hf_logits(ids), numerics, fmt, what)


# -- the spec -------------------------------------------------------------------------------------
def _md(arch, n_layer, window):
    md = {"general.architecture": arch, f"{arch}.embedding_length": 64, f"{arch}.block_count": n_layer,
          f"{arch}.attention.head_count": 4, f"{arch}.feed_forward_length": 128, f"{arch}.vocab_size": 256}
    if window:
        md[f"{arch}.attention.sliding_window"] = window
    return md


def test_which_layers_slide():
    mistral = spec_from_metadata(_md("mistral", 4, 4096))
    assert mistral.sliding_window == 4096 and all(mistral.is_sliding(i) for i in range(4))
    assert not any(spec_from_metadata(_md("mistral", 4, None)).is_sliding(i) for i in range(4))
    gemma = spec_from_metadata({**_md("gemma3", 12, 512), "gemma3.rope.freq_base": 1e6})
    assert [gemma.is_sliding(i) for i in range(12)] == [True] * 5 + [False] + [True] * 5 + [False]  # 6th, 12th global
    assert [gemma.rope_base_for(i) for i in (0, 5)] == [10000.0, 1e6]
    for arch in ("llama", "qwen2", "qwen3"):  # a stray window key is ignored: never windowed
        s = spec_from_metadata(_md(arch, 3, 64))
        assert s.sliding_window is None and not any(s.is_sliding(i) for i in range(3))


def test_loaded_model_windows_every_layer(models):
    s = models["F32", True].ours.spec
    assert s.arch == "mistral" and s.sliding_window == WINDOW and all(s.is_sliding(i) for i in range(N_LAYER))
    assert not any(models["F32", False].ours.spec.is_sliding(i) for i in range(N_LAYER))
    assert models["Q8_0", True].decoder.fused_decode and not models["F32", True].decoder.fused_decode


def test_window_changes_logits_exactly_from_position_window(models, ids):
    """The two oracles agree while every key is inside the window (positions < W) and differ from
    position W on (the first query that loses key 0): the other tests see the window applied, and
    its boundary is pinned (``i - j < W`` visible, ``i - j = W`` masked)."""
    for fmt in ("F32", "Q8_0"):
        on, off = models[fmt, True].hf_logits(ids), models[fmt, False].hf_logits(ids)
        scale = float(np.abs(on).max())
        diff = np.abs(on - off).max(axis=1)
        assert diff[:WINDOW].max() <= 1e-4 * scale
        assert diff[WINDOW:].min() > 0.1 * scale, diff


def test_quantised_oracle_is_the_q8_0_file(models, ids):
    """The Q8_0 oracle runs exactly the file's weights: float numerics agree to float precision."""
    for windowed in (True, False):
        _check_pairs(models, "Q8_0", windowed, ids, models["Q8_0", windowed].ours.logits(ids), "float", "prefill")


# -- every path ------------------------------------------------------------------------------
@pytest.mark.parametrize("numerics", ["float", "llama.cpp"])
@pytest.mark.parametrize("windowed", [True, False])
def test_prefill_and_token_by_token(models, ids, numerics, windowed):
    """Whole-sequence prefill, and 3 tokens then one at a time, on the contiguous cache (F32 file)."""
    dec, nm = models["F32", windowed].decoder, numerics_named(numerics)
    prefill = models["F32", windowed].ours.logits(ids, numerics=numerics)
    _check_pairs(models, "F32", windowed, ids, prefill, numerics, "prefill")
    cache = dec.new_cache(N_CTX, nm)
    steps = [dec.forward(ids[:3], cache, nm, all_logits=True)] + [dec.forward([int(t)], cache, nm) for t in ids[3:]]
    _check_pairs(models, "F32", windowed, ids, np.concatenate(steps), numerics, "one token at a time")


@pytest.mark.parametrize("numerics", ["float", "llama.cpp"])
def test_paged_cache_chunks_and_eviction(models, ids, numerics):
    """Prefill in chunks of 5 (queries over earlier cells), then one token at a time, through a
    paged cache whose sliding-window pool -- the only pool, every layer slides -- has 5 blocks of 4
    cells: 40 positions fit only because the blocks behind the window are released."""
    dec, nm = models["F32", True].decoder, numerics_named(numerics)
    cache = dec.new_paged_cache(1, nm, block_size=4, n_blocks_window=5)
    assert [(g.window, g.pool.n_blocks) for g in cache.groups] == [(WINDOW, 5)]
    seq = cache.sequence(0)
    got = [dec.forward(ids[i:i + 5], seq, nm, all_logits=True) for i in range(0, 20, 5)]
    got += [dec.forward([int(t)], seq, nm) for t in ids[20:]]
    _check_pairs(models, "F32", True, ids, np.concatenate(got), numerics, "paged")
    on_full_pool = models["F32", False].decoder.new_paged_cache(64, nm, block_size=4).sequence(0)
    got_off = models["F32", False].decoder.forward(ids, on_full_pool, nm, all_logits=True)
    _check_pairs(models, "F32", False, ids, got_off, numerics, "paged, no window")


@pytest.mark.parametrize("paged", [False, True])
def test_fused_decode_step(models, ids, paged):
    """llama.cpp numerics on the Q8_0 file: the fused one-token step (its own windowed attention,
    ``first = pos + 1 - window``) equals the unfused loop bit for bit, and transformers' logits."""
    for windowed in (True, False):
        dec, nm = models["Q8_0", windowed].decoder, numerics_named("llama.cpp")

        def run(fused):
            cache = dec.new_paged_cache(64, nm, block_size=4).sequence(0) if paged else dec.new_cache(N_CTX, nm)
            out = [dec.forward(ids[:3], cache, nm, all_logits=True)]
            # all_logits=True keeps a one-token step off the fused path
            out += [dec.forward([int(t)], cache, nm, all_logits=not fused) for t in ids[3:]]
            return np.concatenate(out)

        dec._fused = None
        fused = run(True)
        assert dec._fused is not None  # the one-token steps took the fused path
        np.testing.assert_array_equal(fused, run(False))
        _check_pairs(models, "Q8_0", windowed, ids, fused, "llama.cpp", "fused decode")


def test_greedy_generation_matches_transformers_generate(models, ids):
    """Greedy ``generate_ids`` (prefill 6, then the KV cache) = transformers' greedy ``generate``
    (its own sliding-window cache) to 40 tokens; without the window the continuation differs."""
    prompt = [int(t) for t in ids[:6]]
    n_new = N_POS - len(prompt)

    def ours(windowed):
        return list(models["F32", windowed].ours.generate_ids(prompt, max_tokens=n_new, temperature=0.0,
                                                              stop_at_eog=False, numerics="float"))

    with torch.no_grad():
        hf = models["F32", True].hf.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False)[0, len(prompt):].tolist()
    assert ours(True) == hf
    assert ours(False) != hf


@pytest.mark.parametrize("numerics, fmt", [("float", "F32"), ("llama.cpp", "F32"), ("llama.cpp", "Q8_0")])
def test_continuous_batching_matches_transformers(models, numerics, fmt):
    """Four sequences (prompts of 4, 7, 10, 13 tokens, prefill chunks of 5) decoded together to 40
    tokens each: every step's logits equal transformers' on that sequence so far (``forward_batch``;
    with llama.cpp numerics its block-table kernel, and on the Q8_0 file fused steps once fewer
    than four rows are left). Greedy, so with float numerics the tokens are transformers' argmax."""
    rng = np.random.default_rng(2)
    prompts = [[int(t) for t in rng.integers(3, VOCAB, n)] for n in (4, 7, 10, 13)]
    batcher = ContinuousBatcher(models[fmt, True].decoder, numerics_named(numerics), n_ctx=N_CTX,
                                max_batch=len(prompts), block_size=4, prefill_chunk=5)
    seqs = [batcher.submit(BatchRequest(p, make_sampler(0.0, 40, 0.95, 0.05, None), N_POS - len(p),
                                        lambda t: False, stop_at_eog=False)) for p in prompts]
    got = {s: [] for s in seqs}
    n_rows = []
    while not batcher.idle:
        for e in batcher.step():
            if e.step is not None:
                got[e.seq].append(e.step)
        n_rows.append(batcher.stats.n_decode)
    assert max(n_rows) == len(prompts)  # one forward_batch of every sequence
    full = np.array([p + [st.token for st in got[s]] for p, s in zip(prompts, seqs)])  # (4, N_POS)
    ref, ref_other = models[fmt, True].hf_logits(full), models[fmt, False].hf_logits(full)
    for r, (p, s) in enumerate(zip(prompts, seqs)):
        logits = np.stack([st.logits for st in got[s]])
        assert len(logits) == N_POS - len(p)
        rows = slice(len(p) - 1, N_POS - 1)  # the logits each generated token was drawn from
        _check(logits, ref[r, rows], ref_other[r, rows], numerics, fmt, f"batched sequence {r}", len(p) - 1)
        if numerics == "float":
            assert [st.token for st in got[s]] == ref[r, rows].argmax(axis=1).tolist()
