"""Throughput of the transformers sampler: one prompt per generate() (batch 1) against the batched
window (prompts from concurrent tasks share one generate()), on a GPT-2 with random weights made
here (nothing downloaded).

    python benchmarks/sampler_throughput.py                       # CPU, the tests' tiny GPT-2
    python benchmarks/sampler_throughput.py --size mid --device cuda --dtype float16

Each mode runs the same prompts (FunSearch prompts for deletion_codes with two parents) from
``--threads`` concurrent callers, as a threaded sampler pool would, with fixed-length generations
(``min_new_tokens = max_new_tokens``) so both modes do the same work. Reports completions/s,
generated tokens/s and the batch sizes seen; ``--json`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.tiny_lm, from a checkout

SIZES = {"tiny": {"n_layer": 2, "n_embd": 64, "n_head": 2},
         "mid": {"n_layer": 24, "n_embd": 1024, "n_head": 16}}  # GPT-2 medium's shape, ~300M parameters


def prompts(n: int) -> list[str]:
    from eqflow.funsearch.code import function_source
    from eqflow.funsearch.prompts import build_prompt
    from eqflow.funsearch.spec import Spec

    spec = Spec.load("deletion_codes")
    bodies = ["    return float(sum(el))", "    return float(len(set(el[i:i + 2] for i in range(n - 1))))",
              "    return -float(sum(i * x for i, x in enumerate(el)) % (n + 1))"]
    return [build_prompt(spec, [function_source(spec.header, bodies[i % 3]),
                                function_source(spec.header, bodies[(i + 1) % 3])]) for i in range(n)]


def run_mode(model: Path, texts: list[str], args: argparse.Namespace, batched: bool) -> dict[str, Any]:
    from eqflow.funsearch.samplers import SampleRequest
    from eqflow.funsearch.transformers_sampler import TransformersSampler

    sampler = TransformersSampler(
        str(model), device=args.device, dtype=args.dtype, max_batch=args.threads if batched else 1,
        batch_window_s=args.window if batched else 0, torch_threads=args.torch_threads,
        stop_at_function_end=False, max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens)
    warm = SampleRequest(prompt=texts[0], parents=(), function_name="priority", header="", samples=args.samples)
    sampler.sample(warm)  # first call: kernels, caches
    sampler.batches.clear()
    results: list[Any] = []
    lock = threading.Lock()
    todo = list(enumerate(texts))

    def caller() -> None:
        while True:
            with lock:
                if not todo:
                    return
                i, text = todo.pop()
            result = sampler.sample(SampleRequest(prompt=text, parents=(), function_name="priority", header="",
                                                  samples=args.samples, seed=i))
            with lock:
                results.append(result)

    started = time.perf_counter()
    threads = [threading.Thread(target=caller) for _ in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    completions = sum(len(r.bodies) for r in results)
    tokens = sum(r.tokens_out for r in results)
    return {"mode": f"window {args.window:g}s, max_batch {args.threads}" if batched else "batch 1",
            "prompts": len(results), "completions": completions, "wall_s": round(wall, 2),
            "completions_per_s": round(completions / wall, 2), "tokens_per_s": round(tokens / wall, 1),
            "mean_batch": round(sum(sampler.batches) / max(1, len(sampler.batches)), 2),
            "prompt_tokens_mean": round(sum(r.tokens_in for r in results) / max(1, len(results)), 1),
            "gpu_seconds": round(sum(r.gpu_seconds for r in results), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--dtype", default="auto", help="auto (fp16 on GPU, fp32 on CPU) | float16 | bfloat16")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--threads", type=int, default=8, help="concurrent callers (= max_batch when batched)")
    parser.add_argument("--samples", type=int, default=2, help="samples_per_prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--window", type=float, default=0.05, help="batch window, seconds")
    parser.add_argument("--torch-threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from tests.tiny_lm import make_model

    with tempfile.TemporaryDirectory() as tmp:
        model = make_model(Path(tmp) / args.size, **SIZES[args.size])
        texts = prompts(args.prompts)
        rows = [run_mode(model, texts, args, batched=False), run_mode(model, texts, args, batched=True)]
    info = {"size": args.size, "device": args.device, "dtype": args.dtype, "samples_per_prompt": args.samples,
            "max_new_tokens": args.max_new_tokens, "threads": args.threads, "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "cpu_threads": torch.get_num_threads(), "results": rows,
            "speedup": round(rows[1]["completions_per_s"] / rows[0]["completions_per_s"], 2)}
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{args.size} GPT-2 (random weights) on {info['gpu'] or 'CPU'} ({args.dtype}), {args.prompts} prompts "
          f"of ~{rows[0]['prompt_tokens_mean']:.0f} tokens, {args.samples} samples each, {args.max_new_tokens} new "
          f"tokens, {args.threads} callers")
    print(f"{'mode':<28} {'completions/s':>14} {'tokens/s':>10} {'mean batch':>11} {'wall s':>8}")
    for row in rows:
        print(f"{row['mode']:<28} {row['completions_per_s']:>14} {row['tokens_per_s']:>10} {row['mean_batch']:>11} "
              f"{row['wall_s']:>8}")
    print(f"batched / batch 1: {info['speedup']}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
