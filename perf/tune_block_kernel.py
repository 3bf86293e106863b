"""The tokenizers' narrow ConvNeXt blocks on the GPU: engine.triton_kernels.convnext_block's launch configurations
against the path wider blocks take (the mixer kernel, then cuBLAS products, GELU and the residual).

    python perf/tune_block_kernel.py [--slots 1 64]

For each narrow stage of VibeVoice's decoder (channels x rows per stream and frame: 32 x 3200, 64 x 1600, 128 x 800),
bf16, random weights: microseconds per block (CUDA graph replays over blocks on distinct inputs, as many as fill
more than the L2 cache, so that no block finds its input there), every configuration and the best, to set
engine.triton_kernels.BLOCK_LAUNCH. Configurations that need more shared memory than the GPU has are skipped.
"""
from __future__ import annotations

import argparse
import itertools
import math

import torch
import torch.nn.functional as F
from profile_frame import replay_ms
from triton.runtime.errors import OutOfResources

from engine import triton_kernels

STAGES = [(32, 3200), (64, 1600), (128, 800)]
WIDTH = 6
L2_BYTES = 64 << 20  # above the H200's 50 MiB
MOST_COPIES = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 64])
    args = parser.parse_args()
    dt, dev = torch.bfloat16, "cuda"
    for slots, (channels, frames) in itertools.product(args.slots, STAGES):
        def rand(*shape, scale=1.0):
            return (torch.randn(*shape, device=dev) * scale).to(dt)

        x = rand(slots, frames, channels)
        copies = min(MOST_COPIES, math.ceil(L2_BYTES / (x.numel() * x.element_size())))
        xs = [rand(slots, frames, channels) for _ in range(copies)]
        cache = rand(slots, channels, WIDTH).transpose(1, 2)
        mixer = (rand(channels), 1e-5, rand(channels, 1, WIDTH + 1), rand(channels), rand(channels),
                 rand(channels), 1e-6)
        ffn = (rand(4 * channels, channels, scale=channels ** -0.5), rand(4 * channels),
               rand(channels, 4 * channels, scale=(4 * channels) ** -0.5), rand(channels), rand(channels))

        def unfused(x):
            x1, ffn_in, new = triton_kernels.convnext_mixer(x, cache, *mixer)
            hidden = F.gelu(F.linear(ffn_in, ffn[0], ffn[1]))
            return torch.addcmul(x1, F.linear(hidden, ffn[2], ffn[3]), ffn[4]), new

        def per_block_us(block):
            return replay_ms(lambda: [block(x) for x in xs]) * 1000 / copies

        baseline = per_block_us(unfused)
        expected = unfused(x)[0].float()
        timings = {}
        for launch in itertools.product((16, 32, 64, 128), (32, 64, 128), (4, 8)):
            def fused(x):
                return triton_kernels.convnext_block(x, cache, *mixer, *ffn, launch=launch)
            try:
                error = float((fused(x)[0].float() - expected).abs().max() / expected.abs().max())
            except OutOfResources:
                continue
            timings[launch] = (per_block_us(fused), error)
        configured = per_block_us(lambda x: triton_kernels.convnext_block(x, cache, *mixer, *ffn))
        best = min(timings, key=lambda key: timings[key][0])
        print(f"slots {slots}, {channels} channels x {frames} rows ({copies} inputs): mixer + cuBLAS {baseline:.1f} us; "
              f"convnext_block as configured {configured:.1f} us; best {timings[best][0]:.1f} us at (rows, hidden "
              f"tile, warps) = {best}, error {timings[best][1]:.1e}; worst error "
              f"{max(error for _, error in timings.values()):.1e}", flush=True)
        print("    " + "  ".join(f"{key}:{us:.0f}" for key, (us, _) in sorted(timings.items())), flush=True)


if __name__ == "__main__":
    main()
