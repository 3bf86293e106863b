"""The LM step's attention on the GPU: engine.triton_kernels.rotary_attend (the qkv product's split sums finished,
q and k rotated, k and v written into the cache, one new token per row attending over its live positions) per
call, by the number of live positions and launch, to set engine.triton_kernels.attend_launch and
ATTEND_SPLIT_POSITIONS.

    python perf/tune_attention.py [--size 1.5B 7B] [--rows 2 16] [--positions 1 64 256 1024]

Microseconds per call: CUDA graph replays of one call per LM layer (each layer its own KV cache, as in a step),
after the layer's qkv product (few_rows_linear with its RMSNorm, left as split sums, as the step runs it; not
timed). Random bf16 values; the caches' context is the engine's bucket for the live positions. As configured, with
the context split every SPLIT_POSITIONS positions (with no limit on the splits), and unsplit at every launch of
LAUNCHES.
"""
from __future__ import annotations

import argparse
import itertools

import torch
import triton
from profile_frame import launch_timings, replay_ms

from engine import triton_kernels

# (hidden, layers, query heads, kv heads), head_dim 128
SIZES = {"1.5B": (1536, 28, 12, 2), "7B": (3584, 28, 28, 4)}
LAUNCHES = [(n, warps, stages) for n, warps, stages in itertools.product((32, 64, 128, 256), (4, 8), (1, 2, 3, 4))]
HEAD_DIM = 128
SPLIT_POSITIONS = (128, 256, 512, 1024)  # ATTEND_SPLIT_POSITIONS tried, with the configured launch
CONFIGURED = triton_kernels.ATTEND_SPLIT_POSITIONS, triton_kernels.ATTEND_MOST_SPLITS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", nargs="+", default=["1.5B", "7B"])
    parser.add_argument("--rows", type=int, nargs="+", default=[2, 16])
    parser.add_argument("--positions", type=int, nargs="+", default=[1, 64, 256, 1024])
    args = parser.parse_args()
    dt = torch.bfloat16
    for size, rows in itertools.product(args.size, args.rows):
        hidden, layers, heads, kv_heads = SIZES[size]
        context = max(args.positions)
        width = (heads + 2 * kv_heads) * HEAD_DIM
        weight = torch.randn(width, hidden, device="cuda", dtype=dt) * hidden ** -0.5
        bias = torch.randn(width, device="cuda", dtype=dt)
        norm = (torch.rand(hidden, device="cuda", dtype=dt) + 0.5, 1e-6)
        x = torch.randn(rows, hidden, device="cuda", dtype=dt)
        qkv = triton_kernels.few_rows_linear(x, weight, bias, norm=norm, reduce=False)
        angles = torch.rand(rows, HEAD_DIM, device="cuda") * 6.28
        cos, sin = angles.cos().to(dt), angles.sin().to(dt)
        caches = [(torch.randn(rows, kv_heads, context, HEAD_DIM, device="cuda", dtype=dt),
                   torch.randn(rows, kv_heads, context, HEAD_DIM, device="cuda", dtype=dt)) for _ in range(layers)]
        for positions in args.positions:
            where = torch.full((rows,), positions - 1, device="cuda")
            context = max(256, triton.next_power_of_2(positions))  # the engine's context buckets
            layer_caches = [(keys[:, :, :context], values[:, :, :context]) for keys, values in caches]

            def step(launch=None):
                return [triton_kernels.rotary_attend(qkv, cos, sin, keys, values, None, where, heads, kv_heads,
                                                     HEAD_DIM ** -0.5, launch=launch) for keys, values in layer_caches]

            configured = replay_ms(step) * 1000 / layers
            splits = {}
            triton_kernels.ATTEND_MOST_SPLITS = 1 << 30  # every SPLIT_POSITIONS positions, however many
            for split_positions in SPLIT_POSITIONS:
                triton_kernels.ATTEND_SPLIT_POSITIONS = split_positions
                splits[split_positions] = replay_ms(step) * 1000 / layers
            triton_kernels.ATTEND_SPLIT_POSITIONS = 1 << 30  # the launches unsplit
            timings = launch_timings(step, LAUNCHES, layers)
            triton_kernels.ATTEND_SPLIT_POSITIONS, triton_kernels.ATTEND_MOST_SPLITS = CONFIGURED
            ranked = sorted(timings, key=timings.get)
            print(f"{size} rows {rows}, {positions} positions (context {context}): configured "
                  f"{triton_kernels.attend_launch(rows, dt)}, {triton_kernels.attend_splits(rows, context)} splits: "
                  f"{configured:.1f} us; "
                  "split every " + ", ".join(f"{n}: {us:.1f}" for n, us in splits.items())
                  + "; unsplit launches, best " + ", ".join(f"{timings[launch]:.1f} {launch}" for launch in ranked[:4])
                  + f"; worst {timings[ranked[-1]]:.1f} {ranked[-1]}", flush=True)


if __name__ == "__main__":
    main()
