"""The 8-bit LM products on the GPU: engine.triton_kernels.scaled_linear's launch configurations against cuBLAS's
bf16 product of the same shape.

    python perf/tune_scaled_linear.py [--size 1.5B 7B] [--rows 2 16 128] [--kinds fp8 int8]

For each decoder-layer product of the released sizes (qkv, o, gate_up, down), fp8 and int8 (weight-only), and each
row count (2 = one stream's positive and negative rows): microseconds per product (CUDA graph replays over distinct
weights, more than the L2 cache holds) for every configuration (fp8: one activation group per inner step), the
configured one and the best, and the weights' bytes per second; to set engine.triton_kernels.FEW_ROWS_LAUNCH,
MANY_ROWS_LAUNCH and the rule of scaled_linear_launch.
"""
from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F
from profile_frame import launch_timings, replay_ms

from engine import triton_kernels
from engine.quantize import quantize_rows

# (hidden, intermediate, q heads + 2 kv heads) x head_dim 128
SIZES = {"1.5B": (1536, 8960, 12 + 2 * 2), "7B": (3584, 18944, 28 + 2 * 4)}
COPIES = 4  # distinct weights per replay, timed back to back as in a layer: no product rereads the weight it read last
# (the 1.5B's smaller products still fit in the 50 MiB L2 together, so their figures are the optimistic ones)
FEW = [(16, n, k, w) for n, k, w in itertools.product((16, 32, 64), (128, 256, 512), (4, 8))]
MANY = [(m, n, k, w) for m, n, k, w in itertools.product((32, 64, 128), (64, 128, 256), (64, 128), (4, 8))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", nargs="+", default=["1.5B", "7B"])
    parser.add_argument("--rows", type=int, nargs="+", default=[2, 16, 128])
    parser.add_argument("--kinds", nargs="+", default=["fp8", "int8"], choices=["fp8", "int8"])
    args = parser.parse_args()
    for size in args.size:
        hidden, intermediate, heads = SIZES[size]
        shapes = {"qkv": (heads * 128, hidden), "o": (hidden, hidden), "gate_up": (2 * intermediate, hidden),
                  "down": (hidden, intermediate)}
        for (name, (out, inner)), rows, kind in itertools.product(shapes.items(), args.rows, args.kinds):
            floats = [torch.randn(out, inner, device="cuda", dtype=torch.bfloat16) * inner ** -0.5
                      for _ in range(COPIES)]
            quantized = [quantize_rows(w, kind) for w in floats]
            x = torch.randn(rows, inner, device="cuda", dtype=torch.bfloat16)

            def product(launch=None):
                return [triton_kernels.scaled_linear(x, w, s[:, 0], launch=launch) for w, s in quantized]

            cublas = replay_ms(lambda: [F.linear(x, w) for w in floats]) * 1000 / COPIES
            configured = replay_ms(product) * 1000 / COPIES
            launches = [launch for launch in (FEW if rows <= 16 else MANY)
                        if kind != "fp8" or launch[2] == triton_kernels.ACTIVATION_GROUP]
            timings = launch_timings(product, launches, COPIES)
            best = min(timings, key=timings.get)
            error = float((product()[0].float() - F.linear(x, floats[0]).float()).abs().max()
                          / F.linear(x, floats[0]).float().abs().max())
            print(f"{size} {name} [{out}x{inner}] rows {rows} {kind}: bf16 cuBLAS {cublas:.1f} us; configured "
                  f"{configured:.1f} us ({out * inner / configured / 1e6:.2f} TB/s of 8-bit weights); best "
                  f"{timings[best]:.1f} us at (rows, outputs, inner, warps) = {best}; error vs bf16 {error:.1e}",
                  flush=True)


if __name__ == "__main__":
    main()
