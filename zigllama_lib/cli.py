"""The ``zigllama`` command: generate, chat, serve, bench-serve, pull, inspect, bench, bench-batch, bench-kernels, profile, parity.

    zigllama generate "The capital of France is"          # default model, greedy
    zigllama generate "Once upon a time" --temperature 0.8 --top-p 0.95 --seed 1
    zigllama chat --system "Answer briefly."               # interactive, through the chat template
    zigllama serve --model smollm2-135m-instruct --port 8080   # OpenAI-compatible, on 127.0.0.1
    zigllama pull gemma3-270m
    zigllama inspect ~/.cache/zigllama/SmolLM2-135M-Instruct.Q4_1.gguf
    zigllama bench --vs llama.cpp --json bench.json --markdown bench.md
    zigllama bench --highlights               # the seed's Performance Highlights, measured
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from .foundation.errors import ConfigError, ZigLlamaError
from .models.registry import DEFAULT_MODEL, REGISTRY


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=DEFAULT_MODEL,
                   help=f"registry name ({', '.join(sorted(REGISTRY))}) or path to a .gguf (default: {DEFAULT_MODEL})")
    p.add_argument("--threads", "-t", type=int, default=None, help="kernel threads (default: all cores)")
    p.add_argument("--n-ctx", type=int, default=None, help="context window in tokens (default: min(train ctx, 2048))")


# llama-cli's sampler flags -> SamplerConfig fields (llama.cpp's names, its defaults in SamplerConfig)
SAMPLER_FLAGS = (
    ("--repeat-penalty", "repeat_penalty", float, "penalise repeated tokens (1.0 = off)"),
    ("--repeat-last-n", "penalty_last_n", int, "tokens the penalties look back over (0 = off, -1 = context)"),
    ("--presence-penalty", "presence_penalty", float, "subtract from tokens already present (0.0 = off)"),
    ("--frequency-penalty", "frequency_penalty", float, "subtract per occurrence (0.0 = off)"),
    ("--dry-multiplier", "dry_multiplier", float, "DRY: penalise continuing a repeat (0.0 = off)"),
    ("--dry-base", "dry_base", float, "DRY's exponential base"),
    ("--dry-allowed-length", "dry_allowed_length", int, "DRY: repeats up to this length are free"),
    ("--dry-penalty-last-n", "dry_penalty_last_n", int, "DRY's look-back (0 = off, -1 = context)"),
    ("--typical", "typical_p", float, "locally typical sampling's mass (1.0 = off)"),
    ("--top-n-sigma", "top_n_sigma", float, "keep logits within n standard deviations of the best (-1 = off)"),
    ("--xtc-probability", "xtc_probability", float, "exclude-top-choices probability (0.0 = off)"),
    ("--xtc-threshold", "xtc_threshold", float, "XTC's probability threshold"),
    ("--dynatemp-range", "dynatemp_range", float, "dynamic temperature: temperature +- range (0.0 = off)"),
    ("--dynatemp-exp", "dynatemp_exponent", float, "dynamic temperature's exponent"),
    ("--mirostat", "mirostat", int, "0 off, 1 Mirostat, 2 Mirostat 2.0"),
    ("--mirostat-ent", "mirostat_tau", float, "Mirostat's target surprise tau (bits)"),
    ("--mirostat-lr", "mirostat_eta", float, "Mirostat's learning rate eta"),
)


def _add_sampler_args(p) -> None:
    """The sampler flags of llama-cli (``SAMPLER_FLAGS``) and the grammar flags."""
    s = p.add_argument_group("more samplers (llama.cpp's flags; default: off)")
    for flag, dest, kind, text in SAMPLER_FLAGS:
        s.add_argument(flag, dest=dest, type=kind, default=None, help=text)
    g = p.add_argument_group("constrained output (at most one)").add_mutually_exclusive_group()
    g.add_argument("--grammar", default=None, help="GBNF text the output must follow")
    g.add_argument("--grammar-file", default=None, help="a file of GBNF text")
    g.add_argument("--json-schema", default=None, help="a JSON schema (text) the output must validate against")
    t = p.add_argument_group("generation strategies (inference/strategies.py)")
    t.add_argument("--penalty-alpha", type=float, default=None,
                   help="contrastive search among the --top-k most likely tokens with this degeneration penalty")
    t.add_argument("--cfg-negative-prompt", default=None,
                   help="classifier-free guidance away from this prompt (sampled with the other flags)")
    t.add_argument("--cfg-scale", type=float, default=1.5, help="guidance strength gamma (1 = the prompt alone)")


def _sampler_options(args) -> dict:
    return {dest: getattr(args, dest) for _flag, dest, _kind, _text in SAMPLER_FLAGS
            if getattr(args, dest, None) is not None}


def _grammar_text(args) -> str | None:
    from .inference.json_schema import json_schema_to_gbnf

    if args.grammar_file is not None:
        try:
            with open(args.grammar_file, encoding="utf-8") as f:
                return f.read()
        except OSError as e:
            raise ConfigError(f"--grammar-file: cannot read {args.grammar_file!r}: {e.strerror}") from None
    if args.json_schema is not None:
        return json_schema_to_gbnf(args.json_schema)
    return args.grammar


def _strategy_pieces(model, args):
    """Text pieces of contrastive search (``--penalty-alpha``) or classifier-free guidance
    (``--cfg-negative-prompt`` / ``--cfg-scale``), from :mod:`.inference.strategies`."""
    from .inference.generation import make_sampler
    from .inference.strategies import cfg_steps, contrastive_search
    from .inference.streaming import stream_text
    from .models.decoder import numerics_named

    if args.grammar or args.grammar_file or args.json_schema:
        raise ConfigError("--penalty-alpha / --cfg-* do not combine with a grammar")
    tok, numerics = model.tokenizer, numerics_named(args.numerics)
    ids = tok.encode(args.prompt, add_special=True)
    if args.penalty_alpha is not None:
        if args.cfg_negative_prompt is not None:
            raise ConfigError("choose one strategy: --penalty-alpha (contrastive search) or --cfg-negative-prompt")
        steps = contrastive_search(model.decoder, ids, numerics, model.n_ctx, tok.is_eog, max_tokens=args.max_tokens,
                                   k=args.top_k, alpha=args.penalty_alpha)
    else:
        sampler = make_sampler(args.temperature, args.top_k, args.top_p, args.min_p, args.seed, tokenizer=tok,
                               n_ctx=model.n_ctx, **_sampler_options(args))
        negative = tok.encode(args.cfg_negative_prompt, add_special=True)
        steps = cfg_steps(model.decoder, ids, negative, sampler, numerics, model.n_ctx, tok.is_eog,
                          gamma=args.cfg_scale, max_tokens=args.max_tokens)
    return stream_text((s.token for s in steps), lambda t: tok.token_bytes(t, render_special=False))


def _cmd_generate(args) -> int:
    from .inference.engine import load

    model = load(args.model, n_ctx=args.n_ctx, n_threads=args.threads, numerics=args.numerics)
    if args.penalty_alpha is not None or args.cfg_negative_prompt is not None:
        pieces = _strategy_pieces(model, args)
    else:
        pieces = model.generate(args.prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                                top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, seed=args.seed,
                                grammar=_grammar_text(args), **_sampler_options(args))
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    st = model.last_stats
    if args.verbose and st:
        n = st.get("n_generated", 0)
        msg = f"[{st['n_prompt']} prompt tokens in {st.get('prefill_s', 0):.3f} s; {n} generated"
        if n and st.get("decode_s"):
            msg += f" at {n / st['decode_s']:.1f} tok/s"
        print(msg + f"; stop: {st['stop_reason']}]", file=sys.stderr)
    return 0


def _cmd_chat(args) -> int:
    from .inference import chat_cli
    from .inference.engine import load

    model = load(args.model, n_ctx=args.n_ctx, n_threads=args.threads, numerics=args.numerics)
    return chat_cli.run(model, system=args.system, max_tokens=args.max_tokens, temperature=args.temperature,
                        top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, seed=args.seed)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _cmd_serve(args) -> int:
    import os
    import signal
    import threading

    import uvicorn

    from .inference.engine import load
    from .serve.app import create_app, model_id
    from .serve.engine import Engine

    api_key = args.api_key or os.environ.get("ZIGLLAMA_API_KEY") or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print(f"zigllama serve: warning: listening on {args.host} without an API key: anyone who can reach "
              f"this port can use it (--api-key or ZIGLLAMA_API_KEY)", file=sys.stderr)
    models = {}
    for spec in args.model or [DEFAULT_MODEL]:
        name = model_id(spec)
        if name in models:
            raise ZigLlamaError(f"--model {spec!r}: a model with the id {name!r} is already being served")
        model = load(spec, n_ctx=args.n_ctx, n_threads=args.threads, numerics=args.numerics, progress=False)
        models[name] = model
        print(f"zigllama serve: {name}: {model}", file=sys.stderr)
    engine = Engine(max_batch=args.max_batch, prefill_chunk=args.prefill_chunk)
    for model in models.values():
        engine.warm_up(model)  # compile (or load from Numba's cache) the one-token and the batched step
    app = create_app(models, api_key=api_key, max_body_bytes=args.max_body_bytes, max_queue=args.max_queue,
                     engine=engine)
    http = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                         timeout_graceful_shutdown=5))
    # uvicorn's event loop on a thread, every forward pass on this one (the thread that loaded the models and
    # ran the warm-up: see serve.engine.Engine); SIGTERM stops both as Ctrl-C does.
    http_thread = threading.Thread(target=http.run, name="zigllama-http", daemon=True)
    signal.signal(signal.SIGTERM, _interrupt)
    http_thread.start()
    print(f"zigllama serve: http://{args.host}:{args.port}/v1 ({'API key required' if api_key else 'no API key'})",
          file=sys.stderr, flush=True)
    try:
        engine.run(keep_going=http_thread.is_alive)
    except KeyboardInterrupt:
        pass
    finally:
        http.should_exit = True
        http_thread.join(timeout=10)
    if not http.started:
        raise ZigLlamaError(f"could not serve on {args.host}:{args.port} (is the port in use?)")
    return 0


def _cmd_pull(args) -> int:
    from .models.registry import pull

    print(pull(args.name))
    return 0


def _cmd_inspect(args) -> int:
    from .foundation.gguf import GGUFFile
    from .foundation.inspect import format_report

    print(format_report(GGUFFile(args.file), max_items=args.max_items))
    return 0


class _NumericsNames:
    """The decoder's ``NUMERICS`` names, imported only when argparse needs them (other commands skip Numba)."""

    def _names(self) -> list[str]:
        from .models.decoder import NUMERICS

        return sorted(NUMERICS)

    def __iter__(self):
        return iter(self._names())

    def __contains__(self, name) -> bool:
        return name in self._names()


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def _bench_command(args, **resolved) -> str:
    """The command line that reproduces this run, every setting explicit (for the README)."""
    import shlex

    cmd = ["zigllama", "bench", "--model", str(args.model), "--threads", str(resolved["threads"]),
           "--numerics", resolved["numerics"], "--reps", str(args.reps)]
    if args.highlights:
        cmd += ["--highlights", "--only", ",".join(resolved["only"]), "--n-kv", str(args.n_kv),
                "--n-naive", str(args.n_naive), "--n-prompt", str(resolved["n_prompt"]),
                "--n-decode", str(resolved["n_decode"])]
    else:
        cmd += ["--n-prompt", str(resolved["n_prompt"]), "--n-decode", str(resolved["n_decode"])]
        cmd += ["--vs", args.vs] if args.vs else []
        cmd += ["--startup"] if args.startup else []
    for flag in ("json", "markdown"):
        if getattr(args, flag):
            cmd += [f"--{flag}", getattr(args, flag)]
    return shlex.join(cmd)


def _cmd_parity(args) -> int:
    from .foundation.threads import available_cores
    from .inference import llama_cpp_builds
    from .inference.engine import load

    threads = args.threads or available_cores()
    model = load(args.model, n_threads=threads, progress=False, **({"n_ctx": args.n_ctx} if args.n_ctx else {}))
    report = llama_cpp_builds.parity_report(model, args.llama_cpp, prompts=args.prompt, n_greedy=args.n_greedy,
                                            n_threads=threads)
    print(llama_cpp_builds.format_parity(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return 0


def _cmd_bench_batch(args) -> int:
    from .inference import bench_batch

    seqs = [int(x) for x in args.sequences.split(",") if x.strip()]
    result = bench_batch.run(args.model, seqs, n_decode=args.n_decode, rounds=args.rounds,
                             vs_llama_cpp=args.vs == "llama.cpp", n_threads=args.threads, numerics=args.numerics,
                             llama_cpp=args.llama_cpp, command=shlex.join(["zigllama", *sys.argv[1:]]))
    print(bench_batch.format_table(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


def _cmd_bench_kernels(args) -> int:
    from .inference import bench_kernels

    types = {t.strip() for t in args.types.split(",") if t.strip()} if args.types else None
    result = bench_kernels.run(args.model, n_tok=args.n_tok, rounds=args.rounds, reps=args.reps, copies=args.copies,
                               n_threads=args.threads, llama_cpp=args.llama_cpp, layer=args.layer, types=types)
    print(bench_kernels.format_table(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


def _cmd_bench(args) -> int:
    import importlib.util

    from .foundation.threads import available_cores
    from .inference import bench

    if args.threads is not None and args.threads < 1:
        raise ZigLlamaError(f"--threads must be a positive integer, got {args.threads}")
    numerics = args.numerics or bench.default_numerics()
    threads = args.threads or available_cores()
    if args.highlights:
        from .inference import highlights

        if args.vs or args.startup:
            raise ZigLlamaError("--highlights runs alone; drop --vs / --startup")
        only = [r.strip() for r in args.only.split(",") if r.strip()] if args.only else list(highlights.ROWS)
        bad = [r for r in only if r not in highlights.ROWS]
        if bad or not only:
            raise ZigLlamaError(f"--only takes some of {','.join(highlights.ROWS)}; got {args.only!r}")
        # highlights' batch row defaults to a shorter run than the engine benchmark
        n_prompt, n_decode = args.n_prompt or 64, args.n_decode or 32
        res = dict(threads=threads, numerics=numerics, only=only, n_prompt=n_prompt, n_decode=n_decode)

        def row_command(row):
            import shlex

            return shlex.join(["zigllama", "bench", "--highlights", "--only", row, "--model", str(args.model),
                               "--threads", str(threads), "--numerics", numerics])

        result = highlights.run(args.model, n_threads=threads, numerics=numerics, only=only, n_kv=args.n_kv,
                                n_naive=args.n_naive, n_prompt=n_prompt, n_decode=n_decode, reps=args.reps,
                                command=_bench_command(args, **res), row_command=row_command)
        text = highlights.format_markdown(result)
    else:
        if args.vs is not None and args.vs != "llama.cpp":
            raise ZigLlamaError(f"--vs accepts only 'llama.cpp', got {args.vs!r}")
        if args.vs and args.llama_cpp in ("auto", "installed") and importlib.util.find_spec("llama_cpp") is None:
            raise ZigLlamaError("--vs llama.cpp needs llama-cpp-python: scripts/install_oracle.sh")
        n_prompt, n_decode = args.n_prompt or 128, args.n_decode or 128
        res = dict(threads=threads, numerics=numerics, n_prompt=n_prompt, n_decode=n_decode)
        result = bench.run(args.model, n_prompt=n_prompt, n_decode=n_decode, reps=args.reps,
                           vs_llama_cpp=args.vs is not None, n_threads=threads, numerics=numerics,
                           startup=args.startup, command=_bench_command(args, **res), llama_cpp=args.llama_cpp)
        text = bench.format_markdown(result)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(text)
    return 0


def _cmd_profile(args) -> int:
    from .inference import profile
    from .inference.engine import load

    model = load(args.model, n_threads=args.threads)
    result = profile.run(model, n_prompt=args.n_prompt, n_decode=args.n_decode, reps=args.reps,
                         numerics=args.numerics, n_threads=args.threads)
    print(profile.format_report(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zigllama", description="LLM inference from GGUF files, in six layers.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="continue a prompt (greedy by default)")
    g.add_argument("prompt")
    _add_model_args(g)
    g.add_argument("--max-tokens", "-n", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=40, help="<= 0 disables")
    g.add_argument("--top-p", type=float, default=0.95, help=">= 1 disables")
    g.add_argument("--min-p", type=float, default=0.05, help="<= 0 disables")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--numerics", choices=["llama.cpp", "float"], default="llama.cpp")
    g.add_argument("--verbose", "-v", action="store_true", help="print timing to stderr")
    _add_sampler_args(g)
    g.set_defaults(func=_cmd_generate)

    c = sub.add_parser("chat", help="talk to a model in the terminal, through its chat template (greedy by default)",
                       description="Interactive chat: /reset, /system TEXT, /help, /exit (or Ctrl-D); Ctrl-C stops "
                                   "a reply (zigllama_lib.inference.chat_cli).")
    _add_model_args(c)
    c.add_argument("--system", default=None, help="system message")
    c.add_argument("--max-tokens", "-n", type=_positive_int, default=512, help="longest reply in tokens")
    c.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    c.add_argument("--top-k", type=int, default=40, help="<= 0 disables")
    c.add_argument("--top-p", type=float, default=0.95, help=">= 1 disables")
    c.add_argument("--min-p", type=float, default=0.05, help="<= 0 disables")
    c.add_argument("--seed", type=int, default=None)
    c.add_argument("--numerics", choices=["llama.cpp", "float"], default="llama.cpp")
    c.set_defaults(func=_cmd_chat)

    sv = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions)",
                        description="OpenAI-compatible server (zigllama_lib.serve): /v1/models, /v1/completions, "
                                    "/v1/chat/completions (stream or not), /health, /metrics, /tokenize, /detokenize. "
                                    "A model's id is its registry name, or the file's stem for a path.")
    sv.add_argument("--model", "-m", action="append", default=None,
                    help=f"registry name ({', '.join(sorted(REGISTRY))}) or path to a .gguf; repeat to serve "
                         f"several (default: {DEFAULT_MODEL})")
    sv.add_argument("--threads", "-t", type=int, default=None, help="kernel threads (default: all cores)")
    sv.add_argument("--n-ctx", type=_positive_int, default=None,
                    help="context window in tokens (default: min(train ctx, 2048))")
    sv.add_argument("--numerics", choices=["llama.cpp", "float"], default="llama.cpp")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    sv.add_argument("--port", type=int, default=8080)
    sv.add_argument("--api-key", default=None,
                    help="require 'Authorization: Bearer KEY' (default: $ZIGLLAMA_API_KEY if set)")
    sv.add_argument("--max-body-bytes", type=_positive_int, default=2 * 1024 * 1024,
                    help="largest request body; more is a 413 (default: 2 MiB)")
    sv.add_argument("--max-queue", type=_positive_int, default=64,
                    help="generation requests queued or running at once; more get a 503 (default: 64)")
    sv.add_argument("--max-batch", type=_positive_int, default=8,
                    help="requests decoded together per model (continuous batching); 1 serves one at a time "
                         "(default: 8)")
    sv.add_argument("--prefill-chunk", type=_positive_int, default=512,
                    help="prompt tokens read per scheduler step, so long prompts do not stall the others "
                         "(default: 512)")
    sv.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    sv.set_defaults(func=_cmd_serve)

    from .serve import bench as serve_bench

    serve_bench.add_parser(sub)  # zigllama bench-serve: our server vs llama-server under concurrent load

    p = sub.add_parser("pull", help="fetch a registry model into the cache")
    p.add_argument("name", choices=sorted(REGISTRY))
    p.set_defaults(func=_cmd_pull)

    i = sub.add_parser("inspect", help="print a GGUF file's metadata and tensor table")
    i.add_argument("file")
    i.add_argument("--max-items", type=int, default=8, help="array items shown per metadata value")
    i.set_defaults(func=_cmd_inspect)

    b = sub.add_parser("bench", help="prefill and decode tokens/s, load time, memory, startup (optionally "
                                     "against llama.cpp); --highlights: the seed's performance table",
                       description="Engine benchmark (default) or, with --highlights, the seed's 'Performance "
                                   "Highlights' measured (zigllama_lib.inference.bench / .highlights).")
    _add_model_args(b)
    b.add_argument("--vs", metavar="ENGINE", default=None, help="compare with 'llama.cpp' (needs llama-cpp-python)")
    b.add_argument("--llama-cpp", default="auto", metavar="BUILD",
                   help="with --vs llama.cpp: which build, 'auto' (native if installed by "
                        "scripts/install_oracle.sh --native, else installed), 'native', 'installed' or a folder "
                        "holding llama_cpp")
    b.add_argument("--n-prompt", type=_positive_int, default=None,
                   help="prefill length (default 128; 64 with --highlights)")
    b.add_argument("--n-decode", type=_positive_int, default=None,
                   help="greedy tokens timed (default 128; 32 with --highlights)")
    b.add_argument("--reps", type=_positive_int, default=5, help="repetitions; medians and min-max are reported")
    b.add_argument("--numerics", choices=_NumericsNames(), default=None, metavar="NAME",
                   help="the decoder's numerics, one of: %(choices)s (default: 'fast' if the decoder has it, "
                        "else 'llama.cpp')")
    b.add_argument("--startup", action="store_true",
                   help="also time a fresh process to its first token, Numba cache warm and cold (cold: minutes)")
    b.add_argument("--highlights", action="store_true",
                   help="measure the seed's Performance Highlights table instead (KV cache, kernels, memory, "
                        "mmap, batching, combined)")
    b.add_argument("--only", default=None, help="with --highlights: comma-separated rows "
                                                "(kv,kernels,memory,mmap,batch,combined; default all)")
    b.add_argument("--n-kv", type=_positive_int, default=32, help="with --highlights: tokens for KV cache vs recompute")
    b.add_argument("--n-naive", type=_positive_int, default=3, help="with --highlights: tokens of the naive engine")
    b.add_argument("--json", help="also write the result as JSON to this file")
    b.add_argument("--markdown", help="also write the markdown (headed by this command line) to this file")
    b.set_defaults(func=_cmd_bench)

    bb = sub.add_parser("bench-batch", help="batched decode throughput (continuous batching) vs number of "
                                            "sequences, optionally vs llama.cpp's batch API")
    bb.add_argument("--model", "-m", default=DEFAULT_MODEL,
                    help=f"registry name ({', '.join(sorted(REGISTRY))}) or path to a .gguf (default: {DEFAULT_MODEL})")
    bb.add_argument("--threads", "-t", type=int, default=None, help="kernel threads (default: all cores)")
    bb.add_argument("--sequences", default="1,2,4,8", help="comma-separated numbers of sequences (default 1,2,4,8)")
    bb.add_argument("--n-decode", type=_positive_int, default=64, help="timed decode steps (default 64)")
    bb.add_argument("--rounds", type=_positive_int, default=3, help="interleaved rounds; medians reported")
    bb.add_argument("--numerics", choices=["llama.cpp", "float"], default="llama.cpp")
    bb.add_argument("--vs", choices=["llama.cpp"], default=None, help="also time llama.cpp's batched decoding")
    bb.add_argument("--llama-cpp", default="auto", metavar="BUILD",
                    help="'auto' (native if installed, else the pinned build), 'native', 'installed' or a folder")
    bb.add_argument("--json", help="also write the result as JSON to this file")
    bb.set_defaults(func=_cmd_bench_batch)

    bk = sub.add_parser("bench-kernels", help="one matrix product per weight type of a layer: our kernels vs "
                                              "ggml's mul_mat on the same bytes (a llama.cpp build's libggml)")
    bk.add_argument("--model", "-m", default=DEFAULT_MODEL,
                    help=f"registry name ({', '.join(sorted(REGISTRY))}) or path to a .gguf (default: {DEFAULT_MODEL})")
    bk.add_argument("--threads", "-t", type=_positive_int, default=None, help="kernel threads (default: all cores)")
    bk.add_argument("--n-tok", type=_positive_int, default=128, help="tokens per product (default 128, a prefill)")
    bk.add_argument("--layer", type=int, default=0, help="whose matrices (default 0)")
    bk.add_argument("--types", default=None, help="only these weight types, comma-separated (e.g. Q5_0,Q4_K)")
    bk.add_argument("--rounds", type=_positive_int, default=3, help="interleaved rounds; medians reported")
    bk.add_argument("--reps", type=_positive_int, default=5, help="timings per round; the best is kept")
    bk.add_argument("--copies", type=_positive_int, default=8, help="products per timing")
    bk.add_argument("--llama-cpp", default="auto", metavar="BUILD",
                    help="'auto' (native if installed, else the pinned build), 'native', 'installed' or a folder")
    bk.add_argument("--json", help="also write the result as JSON to this file")
    bk.set_defaults(func=_cmd_bench_kernels)

    pr = sub.add_parser("profile", help="where a decode step and a prefill spend their time, against the machine")
    pr.add_argument("--model", "-m", default=DEFAULT_MODEL,
                    help=f"registry name ({', '.join(sorted(REGISTRY))}) or path to a .gguf (default: {DEFAULT_MODEL})")
    pr.add_argument("--threads", "-t", type=int, default=None, help="kernel threads (default: all cores)")
    pr.add_argument("--n-prompt", type=int, default=128, help="prefill length; the decode step runs after it")
    pr.add_argument("--n-decode", type=int, default=64, help="greedy tokens timed for the latency percentiles")
    pr.add_argument("--reps", type=int, default=5, help="repetitions of the decode step and of the prefill")
    pr.add_argument("--numerics", choices=["llama.cpp", "float"], default="llama.cpp")
    pr.add_argument("--json", help="also write the result as JSON to this file")
    pr.set_defaults(func=_cmd_profile)

    pa = sub.add_parser("parity", help="how far our llama.cpp numerics agree with a llama.cpp build "
                                       "(logits and greedy tokens)")
    _add_model_args(pa)
    pa.add_argument("--llama-cpp", default="installed", metavar="BUILD",
                    help="'installed' (default: the pinned oracle in the test environment), 'native' "
                         "(scripts/install_oracle.sh --native), 'auto' or a folder holding llama_cpp")
    pa.add_argument("--n-greedy", type=_positive_int, default=48, help="greedy tokens compared per prompt")
    pa.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable; default: four built-in)")
    pa.add_argument("--json", help="also write the report as JSON to this file")
    pa.set_defaults(func=_cmd_parity)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ZigLlamaError as e:
        print(f"zigllama: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
