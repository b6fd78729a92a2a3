"""The ``zigllama`` command: generate, pull, inspect, bench.

    zigllama generate "The capital of France is"          # default model, greedy
    zigllama generate "Once upon a time" --temperature 0.8 --top-p 0.95 --seed 1
    zigllama pull gemma3-270m
    zigllama inspect ~/.cache/zigllama/SmolLM2-135M-Instruct.Q4_1.gguf
    zigllama bench --vs llama.cpp
"""

from __future__ import annotations

import argparse
import json
import sys

from .foundation.errors import ZigLlamaError
from .models.registry import DEFAULT_MODEL, REGISTRY


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=DEFAULT_MODEL,
                   help=f"registry name ({', '.join(sorted(REGISTRY))}) or path to a .gguf (default: {DEFAULT_MODEL})")
    p.add_argument("--threads", "-t", type=int, default=None, help="kernel threads (default: all cores)")
    p.add_argument("--n-ctx", type=int, default=None, help="context window in tokens (default: min(train ctx, 2048))")


def _cmd_generate(args) -> int:
    from .inference.engine import load

    model = load(args.model, n_ctx=args.n_ctx, n_threads=args.threads, numerics=args.numerics)
    for piece in model.generate(args.prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                                top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, seed=args.seed):
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


def _cmd_pull(args) -> int:
    from .models.registry import pull

    print(pull(args.name))
    return 0


def _cmd_inspect(args) -> int:
    from .foundation.gguf import GGUFFile
    from .foundation.inspect import format_report

    print(format_report(GGUFFile(args.file), max_items=args.max_items))
    return 0


def _cmd_bench(args) -> int:
    from .inference import bench
    from .inference.engine import load

    vs = args.vs is not None
    if vs and args.vs != "llama.cpp":
        raise SystemExit(f"--vs accepts only 'llama.cpp', got {args.vs!r}")
    if vs:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise SystemExit("--vs llama.cpp needs llama-cpp-python: pip install 'zigllama-lib[oracle]'")
    model = load(args.model, n_threads=args.threads)
    result = bench.run(model, n_prompt=args.n_prompt, n_decode=args.n_decode, reps=args.reps,
                       vs_llama_cpp=vs, n_threads=args.threads or 2, numerics=args.numerics)
    print(bench.format_table(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
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
    g.set_defaults(func=_cmd_generate)

    p = sub.add_parser("pull", help="fetch a registry model into the cache")
    p.add_argument("name", choices=sorted(REGISTRY))
    p.set_defaults(func=_cmd_pull)

    i = sub.add_parser("inspect", help="print a GGUF file's metadata and tensor table")
    i.add_argument("file")
    i.add_argument("--max-items", type=int, default=8, help="array items shown per metadata value")
    i.set_defaults(func=_cmd_inspect)

    b = sub.add_parser("bench", help="prefill and decode tokens/s (optionally against llama.cpp)")
    _add_model_args(b)
    b.add_argument("--vs", metavar="ENGINE", default=None, help="compare with 'llama.cpp' (needs llama-cpp-python)")
    b.add_argument("--n-prompt", type=int, default=128)
    b.add_argument("--n-decode", type=int, default=128)
    b.add_argument("--reps", type=int, default=5)
    b.add_argument("--numerics", choices=["llama.cpp", "float"], default="llama.cpp")
    b.add_argument("--json", help="also write the result as JSON to this file")
    b.set_defaults(func=_cmd_bench)

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
