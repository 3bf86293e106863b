"""Where the LM megakernel's time goes: its TRACE build's marks, phase by phase, averaged over programs and layers.

    python perf/trace_megakernel.py --size 1.5B [--precision fp8] [--streams 1] [--slot-bytes 4096 8192 ...]

Each program's first consumer thread reads its multiprocessor's clock as it passes each mark (engine/megakernel.cu,
MARK); the intervals between marks are the phases below, in microseconds at the clock rate the graph replay's wall
time implies. A barrier's time is how long the program waited there for the slowest one. Weight waits: the share of
the step each consumer warp spent waiting for its ring (little: the products run as fast as the weights come).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from engine.checkpoint import random_checkpoint
from engine.megakernel import SLOT_BYTES, TRACE_PHASES, LanguageModelMegakernel
from engine.runtime import TORCH_PRECISIONS
from engine.runtime.torch_runtime import TorchRuntime
from profile_frame import replay_ms, staggered_positions


@torch.no_grad()
def trace_report(rt: TorchRuntime, streams: int, slot_bytes: int, context: int) -> str:
    """One traced step of `streams` streams' rows (rows at different positions of a `context`-long cache)."""
    spec, step = rt.spec, rt.cached_lm_step
    rows = 2 * streams
    kernel = LanguageModelMegakernel(step.step, step.layer_weights, slot_bytes, trace=True)
    if not kernel.runs(rows):
        return f"{slot_bytes}-byte slots: the kernel does not take {rows} rows here"
    keys = torch.randn(spec.num_layers, rows, spec.kv_heads, context, spec.head_dim, dtype=rt.dtype, device="cuda")
    values = torch.randn_like(keys)
    embeds = torch.randn(rows, spec.hidden_size, dtype=rt.dtype, device="cuda")
    positions = staggered_positions(rows, context)
    ms = replay_ms(lambda: kernel(embeds, positions, keys, values, context))
    kernel(embeds, positions, keys, values, context)
    torch.cuda.synchronize()
    marks, waits = kernel.trace(rows)
    marks = marks.astype(np.float64)
    ends = marks[:, :, -1]
    cycles_per_us = ends[:, -1].mean() / (ms * 1000)
    phases = np.diff(marks, axis=2).mean(axis=(0, 1)) / cycles_per_us
    per_layer = {}
    for name, us in zip(TRACE_PHASES, phases):
        per_layer[name] = per_layer.get(name, 0.0) + us
    layer_us = np.diff(ends, axis=1).mean() / cycles_per_us
    lines = [f"{slot_bytes}-byte slots: {ms:.3f} ms per step (the traced build), "
             f"{layer_us:.1f} us per layer at {cycles_per_us / 1000:.2f} GHz",
             "  per layer, us: " + ", ".join(f"{name} {us:.2f}" for name, us in zip(TRACE_PHASES, phases)),
             "  summed: " + ", ".join(f"{name} {us:.1f}" for name, us in per_layer.items()),
             f"  consumer warps waited for weights {waits.mean() / ends[:, -1].mean():.1%} of the step "
             f"(most {waits.max() / ends[:, -1].mean():.1%})"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1.5B")
    parser.add_argument("--precision", choices=["bf16", "fp8"], default="bf16")
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--slot-bytes", type=int, nargs="+", default=[SLOT_BYTES])
    args = parser.parse_args()
    held = TORCH_PRECISIONS[args.precision]
    rt = TorchRuntime(random_checkpoint(args.size, device="cuda"), "cuda", held.dtype, quantized=held.quantized)
    print(f"{args.size} {args.precision}, {args.streams} stream(s), context {args.context}, "
          f"{torch.cuda.get_device_name()}")
    for slot_bytes in args.slot_bytes:
        print(trace_report(rt, args.streams, slot_bytes, args.context), flush=True)


if __name__ == "__main__":
    main()
