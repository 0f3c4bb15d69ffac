"""What llama.cpp itself gains from batching: raw llama_decode throughput at batch 1 vs. B.

No ponder code on the hot path: one prompt is decoded, its KV shared with B
sequences, then S steps decode one token per sequence. This is the ceiling the
engine's batched sampling (benchmarks/engine.py) can approach.

    .venv/bin/python benchmarks/decode_ceiling.py --batch 8 --steps 64
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import llama_cpp
from llama_cpp import _internals
from llama_cpp._logger import set_verbose

from ponder.backends.catalog import ensure_model
from ponder.config import default_cache_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=64)
    args = p.parse_args()
    set_verbose(False)
    path = ensure_model(args.model, Path(default_cache_dir()))
    model = _internals.LlamaModel(
        path_model=str(path), params=llama_cpp.llama_model_default_params(), verbose=False
    )
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = 4096, 512, 512, args.batch
    cp.n_threads = cp.n_threads_batch = os.cpu_count() or 1
    cp.kv_unified = True
    ctx = _internals.LlamaContext(model=model, params=cp, verbose=False)
    mem = llama_cpp.llama_get_memory(ctx.ctx)
    batch = llama_cpp.llama_batch_init(512, 0, 1)

    def decode(rows: list[tuple[int, int, int, bool]]) -> None:
        batch.n_tokens = len(rows)
        for i, (tok, pos, sid, logits) in enumerate(rows):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos, 1
            batch.seq_id[i][0], batch.logits[i] = sid, int(logits)
        if llama_cpp.llama_decode(ctx.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    prompt = list(model.tokenize(b"Write a story about a lighthouse keeper. " * 4, False, False))
    decode([(t, i, 0, i == len(prompt) - 1) for i, t in enumerate(prompt)])
    for s in range(1, args.batch):
        llama_cpp.llama_memory_seq_cp(mem, 0, s, -1, -1)
    rates = {}
    for width in (1, args.batch):
        decode([(100, len(prompt), s, True) for s in range(width)])  # warm-up step
        t0 = time.perf_counter()
        for step in range(1, args.steps + 1):
            decode([(100 + step, len(prompt) + step, s, True) for s in range(width)])
        secs = time.perf_counter() - t0
        rates[width] = width * args.steps / secs
        print(json.dumps({"batch": width, "steps": args.steps, "wall_s": round(secs, 3),
                          "tokens_per_s": round(rates[width], 1)}))  # fmt: skip
        for s in range(args.batch):
            llama_cpp.llama_memory_seq_rm(mem, s, len(prompt), -1)
    print(json.dumps({"summary": True, "model": args.model,
                      "throughput_ratio": round(rates[args.batch] / rates[1], 2),
                      "equivalent_wall_ratio": round(rates[1] / rates[args.batch], 3)}))  # fmt: skip
    llama_cpp.llama_batch_free(batch)


if __name__ == "__main__":
    main()
