"""The few-row products on the GPU: engine.triton_kernels.few_rows_linear's launches against the kernels it replaces
(the torch ops of engine.network.linear_block: RMSNorm, cuBLAS's product, silu_mul or GELU, the residual's addmm
or addcmul).

    python perf/tune_few_rows_linear.py [--size 1.5B 7B] [--rows 2 16] [--only qkv tokenizer] [--weights bf16 fp8 int8]
        [--warps 4 8] [--stages 3 4 5] [--splits 1 2 4 8] [--deep] [--tiles 64:64 34:64]

For each product of a frame's LM step, diffusion solve and widest tokenizer blocks at the released sizes, with what
surrounds it there, and each row count (2 = one stream's positive and negative rows): microseconds per product (CUDA
graph replays over distinct weights, more than the L2 cache holds) of the current path, of the configured launch
and of every launch tried, the best, and the weights' bytes per second; to set engine.triton_kernels.few_rows_launch.
8-bit weights (engine.quantize) run against the path without few_rows_linear (scaled_linear), with tiles of as many
bytes (fp8: one activation group deep, at least 64 outputs for Hopper's fp8 products).
"""
from __future__ import annotations

import argparse
import itertools
import types

import torch
from profile_frame import launch_timings, replay_ms

from engine import network, triton_kernels
from engine.quantize import quantize_rows

# (hidden, LM intermediate, q heads + 2 kv heads, diffusion head intermediate), head_dim 128
SIZES = {"1.5B": (1536, 8960, 12 + 2 * 2, 4608), "7B": (3584, 18944, 28 + 2 * 4, 10752)}
L2_BYTES = 50 * 2 ** 20
TILES = [(32, 128), (32, 256), (64, 64), (64, 128), (128, 64)]  # (outputs, inner step) per program
NARROW_DEEP_TILES = [(16, 256), (16, 512), (32, 512)]  # --deep: few outputs, long steps (unsplit programs)
TILES_8BIT = {"fp8": [(64, 128), (128, 128)], "int8": [(32, 256), (64, 128), (64, 256)]}
CURRENT = types.SimpleNamespace(silu_mul=triton_kernels.silu_mul)  # linear_block's ops before few_rows_linear


def products(size: str) -> dict[str, tuple[int, int, dict]]:
    """name -> (weight rows, inner width, what surrounds the product: norm, bias, activation, residual,
    layer_scale). The tokenizers' widest ConvNeXt blocks (2048 and 1024 channels) have 1 and 8 rows per stream."""
    hidden, intermediate, heads, head_intermediate = SIZES[size]
    products = {"lm qkv": (heads * 128, hidden, {"norm": True, "bias": True}),
                "lm o": (hidden, hidden, {"residual": True}),
                "lm gate_up": (2 * intermediate, hidden, {"norm": True, "activation": "silu_glu"}),
                "lm down": (hidden, intermediate, {"residual": True}),
                "head gate_up": (2 * head_intermediate, hidden, {"activation": "silu_glu"}),
                "head down": (hidden, head_intermediate, {})}
    for channels in (2048, 1024):
        products[f"tokenizer {channels} linear1"] = (4 * channels, channels, {"bias": True, "activation": "gelu"})
        products[f"tokenizer {channels} linear2"] = (channels, 4 * channels,
                                                     {"bias": True, "residual": True, "layer_scale": True})
    return products


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", nargs="+", default=["1.5B", "7B"])
    parser.add_argument("--rows", type=int, nargs="+", default=[2])
    parser.add_argument("--only", nargs="+", help="products whose name contains one of these")
    parser.add_argument("--weights", nargs="+", default=["bf16"], choices=["bf16", "fp8", "int8"])
    parser.add_argument("--warps", type=int, nargs="+", default=[4])
    parser.add_argument("--stages", type=int, nargs="+", default=[3, 4, 5])
    parser.add_argument("--splits", type=int, nargs="+", default=[1, 2, 4, 8], help="splits of the inner width")
    parser.add_argument("--deep", action="store_true", help="also narrow tiles with long inner steps")
    parser.add_argument("--tiles", nargs="+", metavar="OUTPUTS:STEP",
                        help="the tiles to try (outputs per program, any width, : inner step) instead of the defaults")
    args = parser.parse_args()
    for size, kind, rows in itertools.product(args.size, args.weights, args.rows):
        eight_bit = kind != "bf16"
        tiles = ([tuple(int(part) for part in tile.split(":")) for tile in args.tiles] if args.tiles else
                 TILES_8BIT.get(kind, TILES + (NARROW_DEEP_TILES if args.deep else [])))
        launches = [(n, k, splits, warps, stages) for (n, k), splits, warps, stages in itertools.product(
            tiles, args.splits, args.warps, args.stages)]
        for name, (out, inner, options) in products(size).items():
            if args.only and not any(part in name for part in args.only):
                continue
            activation = options.get("activation")
            outputs = out // 2 if activation == "silu_glu" else out
            bytes_ = out * inner * (1 if eight_bit else 2)
            copies = max(4, -(-3 * L2_BYTES // bytes_))
            weights = []
            for _ in range(copies):
                weight = torch.randn(out, inner, device="cuda", dtype=torch.bfloat16) * inner ** -0.5
                bias = torch.randn(out, device="cuda", dtype=torch.bfloat16) if options.get("bias") else None
                if eight_bit:
                    weight, scale = quantize_rows(weight, kind)
                    weights.append((weight, bias, scale[:, 0].contiguous()))
                else:
                    weights.append((weight, bias))
            x = torch.randn(rows, inner, device="cuda", dtype=torch.bfloat16)
            norm = (torch.rand(inner, device="cuda", dtype=torch.bfloat16) + 0.5, 1e-6) if options.get("norm") else None
            around = {"norm": norm, "activation": activation,
                      "residual": (torch.randn(rows, outputs, device="cuda", dtype=torch.bfloat16)
                                   if options.get("residual") else None),
                      "layer_scale": (torch.rand(outputs, device="cuda", dtype=torch.bfloat16)
                                      if options.get("layer_scale") else None)}

            def current():
                return [network.linear_block(x, p, CURRENT, **around) for p in weights]

            def ours(launch=None):
                return [triton_kernels.few_rows_linear(x, *p, **around, launch=launch) for p in weights]

            before = replay_ms(current) * 1000 / copies
            configured = replay_ms(ours) * 1000 / copies
            splittable = [launch for launch in launches if launch[2] == 1 or launch[1] * launch[2] <= inner]
            timings = launch_timings(ours, splittable, copies)
            best = min(timings, key=timings.get)
            reference, result = current()[0].float(), ours()[0].float()
            error = float((result - reference).abs().max() / reference.abs().max())
            twin = torch_twin(x, weights[0], around).cuda().float()  # linear_block's torch ops, on the CPU
            twin_error = float((result - twin).abs().max() / twin.abs().max())
            ranked = sorted(timings, key=timings.get)[:5]
            unsplit = min((launch for launch in timings if launch[2] == 1), key=timings.get, default=None)
            print(f"{size} {kind} {name} [{out}x{inner}] rows {rows}: current {before:.1f} us; configured "
                  f"{configured:.1f} us ({bytes_ / configured / 1e6:.2f} TB/s); best {timings[best]:.1f} us "
                  f"({bytes_ / timings[best] / 1e6:.2f} TB/s) at {best}; next "
                  + ", ".join(f"{timings[launch]:.1f} {launch}" for launch in ranked[1:])
                  + (f"; unsplit {timings[unsplit]:.1f} at {unsplit}" if unsplit else "")
                  + f"; error vs current {error:.1e}, vs torch ops {twin_error:.1e}", flush=True)


def torch_twin(x, params, around) -> torch.Tensor:
    """engine.network.linear_block's torch ops (engine.quantize's arithmetic for 8-bit weights) on the CPU."""
    def cpu(value):
        return tuple(cpu(v) for v in value) if isinstance(value, tuple) else (
            value.cpu() if isinstance(value, torch.Tensor) else value)

    return network.linear_block(x.cpu(), cpu(params), network, **{key: cpu(v) for key, v in around.items()})


if __name__ == "__main__":
    main()
