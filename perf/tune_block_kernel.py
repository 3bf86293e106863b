"""The tokenizers' narrow ConvNeXt blocks on the GPU: engine.triton_kernels.convnext_block's launch configurations
against the path wider blocks take (the mixer kernel, then cuBLAS products, GELU and the residual).

    python perf/tune_block_kernel.py [--slots 1 64]

For each narrow stage of VibeVoice's decoder (channels x rows per stream and frame: 32 x 3200, 64 x 400, 128 x 80),
bf16, random weights: microseconds per block (CUDA graph replays), every configuration and the best, to set
engine.triton_kernels.BLOCK_KERNEL. (A wider search at one stream, rows up to 128, hidden tiles of 32, 2 warps,
found nothing better: fewer rows per program means more programs, which the small stages need.)
"""
from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F
from profile_frame import replay_ms

from engine import triton_kernels

STAGES = [(32, 3200), (64, 400), (128, 80)]
WIDTH = 6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 64])
    args = parser.parse_args()
    dt, dev = torch.bfloat16, "cuda"
    for slots, (channels, frames) in itertools.product(args.slots, STAGES):
        def rand(*shape, scale=1.0):
            return (torch.randn(*shape, device=dev) * scale).to(dt)

        x = rand(slots, frames, channels)
        cache = rand(slots, channels, WIDTH).transpose(1, 2)
        mixer = (rand(channels), 1e-5, rand(channels, 1, WIDTH + 1), rand(channels), rand(channels),
                 rand(channels), 1e-6)
        ffn = (rand(4 * channels, channels, scale=channels ** -0.5), rand(4 * channels),
               rand(channels, 4 * channels, scale=(4 * channels) ** -0.5), rand(channels), rand(channels))

        def unfused():
            x1, ffn_in, new = triton_kernels.convnext_mixer(x, cache, *mixer)
            hidden = F.gelu(F.linear(ffn_in, ffn[0], ffn[1]))
            return torch.addcmul(x1, F.linear(hidden, ffn[2], ffn[3]), ffn[4]), new

        baseline = replay_ms(unfused) * 1000
        expected = unfused()[0].float()
        timings = {}
        for rows, hidden_tile, warps in itertools.product((16, 32), (64, 128), (4, 8)):
            def fused():
                return triton_kernels.convnext_block(x, cache, *mixer, *ffn, rows=rows, hidden_tile=hidden_tile,
                                                     warps=warps)
            error = float((fused()[0].float() - expected).abs().max() / expected.abs().max())
            timings[(rows, hidden_tile, warps)] = (replay_ms(fused) * 1000, error)
        best = min(timings, key=lambda key: timings[key][0])
        print(f"slots {slots}, {channels} channels x {frames} rows: mixer + cuBLAS {baseline:.1f} us; "
              f"convnext_block best {timings[best][0]:.1f} us at (rows, hidden tile, warps) = {best}, "
              f"error {timings[best][1]:.1e}", flush=True)
        print("    " + "  ".join(f"{key}:{us:.0f}" for key, (us, _) in sorted(timings.items())), flush=True)


if __name__ == "__main__":
    main()
