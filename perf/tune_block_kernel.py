"""The tokenizers' ConvNeXt blocks on the GPU: launch configurations of engine.triton_kernels' block kernels
against the path cuBLAS takes (the mixer kernel, then cuBLAS products, GELU and the residual).

    python perf/tune_block_kernel.py [--slots 1 64] [--stages 32x3200 128x800]

For the blocks of VibeVoice's decoder stages (channels x rows per stream and frame: 32x3200, 64x1600, 128x800,
256x200, 512x40, 1024x8, 2048x1), bf16, random weights: microseconds per block (CUDA graph replays over blocks on
distinct inputs, as many as fill more than the L2 cache, so that no block finds its input there) of
  - convnext_mixer (its tile kernel, its walking kernel) then convnext_ffn: every launch of each (the FFN timed on
    the best mixer's outputs), the best;
  - convnext_block (the whole block in one kernel), for the widths it takes: as configured, every launch, the best;
to set engine.triton_kernels' MIXER_LAUNCH, WALK_LAUNCH, FFN_LAUNCH, BLOCK_LAUNCH and the choice between the
paths. Launches that need more shared memory or registers than the GPU has are skipped.
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

STAGES = ["32x3200", "64x1600", "128x800", "256x200", "512x40", "1024x8", "2048x1"]
WIDTH = 6
L2_BYTES = 64 << 20  # above the H200's 50 MiB
MOST_COPIES = 16
# the launches worth timing (a sweep of rows 16-128, hidden tiles 32-128, 4 or 8 warps and 2 or 3 stages on an H200
# found the rest slower at every width: perf/results/2026-11-25_tune_block_kernel_split.txt)
# convnext_mixer's (rows per program, warps, walkers): the tile kernel's (0 walkers), then the walking kernel's
TILE_MIXER_LAUNCHES = [(rows, warps, 0) for rows in (1, 2, 4, 8, 16, 32, 64) for warps in (4, 8)]
WALK_MIXER_LAUNCHES = [(1, 4, 1), (2, 4, 1), (4, 4, 1), (8, 4, 2), (8, 8, 4), (32, 1, 1), (64, 1, 4), (128, 1, 4),
                       (64, 2, 4), (128, 2, 8), (256, 2, 8), (128, 4, 8), (128, 4, 16), (256, 4, 8), (256, 4, 16),
                       (512, 4, 16), (256, 8, 16), (512, 8, 32)]
FFN_LAUNCHES = [(64, 32, 4, 2), (64, 32, 4, 3), (64, 64, 4, 2), (64, 128, 4, 2), (64, 32, 8, 3), (64, 64, 8, 2),
                (128, 32, 4, 3), (128, 32, 8, 3), (128, 64, 8, 2), (32, 64, 8, 2)]
BLOCK_LAUNCHES = [(16, 64, 4), (16, 64, 8), (32, 64, 4), (32, 64, 8), (32, 32, 4), (64, 64, 8), (16, 128, 8),
                  (32, 128, 8)]
WRONG = 1e-2  # a launch whose results differ more from the configured one's computes something else (bf16: ~4e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--stages", nargs="+", default=STAGES, help="channels x rows per stream, e.g. 128x800")
    parser.add_argument("--mixers", nargs="+", choices=("tile", "walk"), default=("tile", "walk"),
                        help="the mixer kernels whose launches to sweep")
    parser.add_argument("--no-block", action="store_true", help="skip the whole-block kernel's sweep")
    parser.add_argument("--configured", action="store_true",
                        help="time the configured launches only: the paths compared as the engine runs them")
    args = parser.parse_args()
    mixer_launches = (TILE_MIXER_LAUNCHES if "tile" in args.mixers else []) + (
        WALK_MIXER_LAUNCHES if "walk" in args.mixers else [])
    dt, dev = torch.bfloat16, "cuda"
    stages = [tuple(int(n) for n in stage.split("x")) for stage in args.stages]
    for slots, (channels, frames) in itertools.product(args.slots, stages):
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

        def per_block_us(block, inputs):
            return replay_ms(lambda: [block(*args) for args in inputs]) * 1000 / copies

        def sweep(launches, block, inputs):
            timings = {}
            for launch in launches:
                try:
                    timings[launch] = per_block_us(lambda *args: block(*args, launch=launch), inputs)
                except OutOfResources:
                    continue
            return min(timings, key=timings.get), timings

        expected = unfused(x)[0].float()
        baseline = per_block_us(unfused, [(x,) for x in xs])
        configured = per_block_us(lambda x: triton_kernels.convnext_mixer(x, cache, *mixer), [(x,) for x in xs])
        if args.configured:
            mixer_launches = [triton_kernels.mixer_launch(channels, slots * frames)]
        best_mixer, mixer_us = sweep(mixer_launches, lambda x, launch: triton_kernels.convnext_mixer(
            x, cache, *mixer, launch=launch), [(x,) for x in xs])
        errors = {launch: _mixer_error(triton_kernels.convnext_mixer(x, cache, *mixer, launch=launch),
                                       triton_kernels.convnext_mixer(x, cache, *mixer)) for launch in mixer_us}
        wrong = [launch for launch, error in errors.items() if error > WRONG]
        line = (f"slots {slots}, {channels} channels x {frames} rows ({copies} inputs): mixer + cuBLAS "
                f"{baseline:.1f} us; mixer as configured {configured:.1f} us, {mixer_us[best_mixer]:.1f} us at (rows, "
                f"warps, walkers) = {best_mixer}, worst difference from the configured {max(errors.values()):.1e}"
                + (f" (WRONG above {WRONG}: {wrong})" if wrong else ""))
        sweeps = [("mixer", mixer_us)]
        if channels <= triton_kernels.FFN_MAX_CHANNELS:
            halves = [triton_kernels.convnext_mixer(x, cache, *mixer, launch=best_mixer)[:2] for x in xs]
            ffn_launches = [triton_kernels.launch_for(triton_kernels.FFN_LAUNCH, channels)] if args.configured else (
                FFN_LAUNCHES)
            best_ffn, ffn_us = sweep(ffn_launches, lambda x1, ffn_in, launch: triton_kernels.convnext_ffn(
                x1, ffn_in, *ffn, launch=launch), halves)
            x1, ffn_in, _ = triton_kernels.convnext_mixer(x, cache, *mixer, launch=best_mixer)
            out = triton_kernels.convnext_ffn(x1, ffn_in, *ffn, launch=best_ffn).float()
            error = float((out - expected).abs().max() / expected.abs().max())
            line += (f" + ffn {ffn_us[best_ffn]:.1f} us at (rows, hidden tile, warps, stages) = {best_ffn}, "
                     f"error {error:.1e}")
            sweeps.append(("ffn", ffn_us))
        if channels <= triton_kernels.BLOCK_MAX_CHANNELS and not args.no_block:
            whole = per_block_us(lambda x: triton_kernels.convnext_block(x, cache, *mixer, *ffn), [(x,) for x in xs])
            block_launches = ([triton_kernels.launch_for(triton_kernels.BLOCK_LAUNCH, channels)] if args.configured
                              else BLOCK_LAUNCHES)
            best_block, block_us = sweep(block_launches, lambda x, launch: triton_kernels.convnext_block(
                x, cache, *mixer, *ffn, launch=launch), [(x,) for x in xs])
            line += (f"; convnext_block as configured {whole:.1f} us, {block_us[best_block]:.1f} us at (rows, "
                     f"hidden tile, warps) = {best_block}")
            sweeps.append(("block", block_us))
        print(line, flush=True)
        for name, timings in sweeps:
            print(f"    {name}: " + "  ".join(f"{key}:{us:.0f}" for key, us in sorted(timings.items())), flush=True)


def _mixer_error(ours, theirs) -> float:
    """The largest difference of two convnext_mixer results (x1, ffn_in, new cache), relative to the largest value."""
    return max(float((a.float() - b.float()).abs().max() / b.float().abs().max()) for a, b in zip(ours, theirs))


if __name__ == "__main__":
    main()
