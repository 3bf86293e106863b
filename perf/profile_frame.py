"""Where a captured frame's time goes: each piece of the frame captured as its own CUDA graph and replayed.

    python perf/profile_frame.py --size 1.5B --slots 1 64 [--kernels 12] [--no-dependent-launch] [--precision fp8]
        [--only lm ...] [--megakernel [SLOT_BYTES ...]]

Times are GPU times of graph replays (no launch overhead), bf16 unless asked, random weights, attended context
512. With --kernels N, each piece also runs once eagerly under the profiler: its kernel count, the sum of its
kernels' GPU times (against the replay: the rest is the gaps between kernels) and its N costliest kernels. Under
programmatic dependent launch (the default), it first checks that each piece's replays equal, bit for bit, its
replays without.
"""
from __future__ import annotations

import argparse

import torch

from engine import triton_kernels
from engine.checkpoint import random_checkpoint
from engine.config import HOP_SAMPLES
from engine.megakernel import SLOT_BYTES, LanguageModelMegakernel
from engine.network import StreamingConvStep
from engine.runtime import TORCH_PRECISIONS
from engine.runtime.torch_runtime import TorchRuntime
from engine.sampler import schedule_table


def captured(fn):
    """(fn captured as a CUDA graph, the outputs its replays write), after one eager run on a side stream (lazy
    initialisation must not happen inside a capture)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = fn()
    return graph, outputs


def replay_ms(fn, repeats: int = 50) -> float:
    graph, _ = captured(fn)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    for _ in range(repeats):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def launch_timings(run, launches, calls: int) -> dict:
    """Microseconds per call of `run(launch)` (which makes `calls` calls, replayed as a graph) for each launch that
    compiles: Triton refuses those that need more shared memory or registers than a multiprocessor has."""
    from triton.runtime.errors import OutOfResources

    timings = {}
    for launch in launches:
        try:
            run(launch)
        except OutOfResources:
            continue
        timings[launch] = replay_ms(lambda: run(launch)) * 1000 / calls
    return timings


def flat_tensors(result) -> list[torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    return [t for item in result for t in flat_tensors(item)]


def graph_outputs(fn) -> list[torch.Tensor]:
    """fn's outputs as a replay of its captured graph leaves them."""
    graph, outputs = captured(fn)
    graph.replay()
    torch.cuda.synchronize()
    return flat_tensors(outputs)


def launch_differences(parts: dict) -> str:
    """The pieces whose graph replays under programmatic dependent launch differ (in any bit) from replays without
    it: a kernel that touched memory before waiting for the kernel before would show here."""
    differ = []
    for name, fn in parts.items():
        triton_kernels.DEPENDENT_LAUNCH = False
        expected = [t.clone() for t in graph_outputs(fn)]
        triton_kernels.DEPENDENT_LAUNCH = True
        if not all(torch.equal(a, b) for a, b in zip(expected, graph_outputs(fn), strict=True)):
            differ.append(name)
    return ", ".join(differ) or "none"


def kernel_table(fn, top: int) -> str:
    """One eager run of `fn` under the profiler: kernel count, summed kernel time and the costliest kernels."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels: dict[str, list[float]] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels.setdefault(event.name, []).append(event.device_time / 1000)
    total = sum(sum(times) for times in kernels.values())
    rows = sorted(kernels.items(), key=lambda item: -sum(item[1]))[:top]
    lines = [f"    {sum(len(t) for t in kernels.values())} kernels, {total:.2f} ms of kernel time"]
    lines += [f"    {sum(t):7.3f} ms {len(t):4d}x  {name[:110]}" for name, t in rows]
    return "\n".join(lines)


def tokenizer_errors(rt: TorchRuntime, inner, n: int, chunks: int = 3) -> str:
    """The runtime's tokenizer halves (channels-last, Triton kernels on CUDA) against transformers' modules on this
    device, chunk after chunk with carried caches: the largest error relative to the output's largest value."""
    generator = torch.Generator(device="cuda").manual_seed(0)
    results = []
    for name, ours, module, output, shape in (
            ("decoder", rt.decode, inner.audio_tower.decoder, "audio", (n, rt.spec.latent_dim, 1)),
            ("semantic", rt.semantic, inner.semantic_tokenizer_encoder, "latents", (n, 1, HOP_SAMPLES))):
        reference = StreamingConvStep(module, output)
        theirs = mine = reference.zero_caches(n, rt.dtype, "cuda")
        worst = 0.0
        with torch.no_grad():
            for _ in range(chunks):
                x = torch.randn(*shape, generator=generator, device="cuda", dtype=rt.dtype)
                expected, *theirs = reference(x, *theirs)
                result, *mine = ours(x, *mine)
                worst = max(worst, float((result.float() - expected.float()).abs().max() / expected.abs().max()))
        results.append(f"{name} {worst:.1e}")
    return ", ".join(results)


def staggered_positions(rows: int, context: int) -> torch.Tensor:
    """Positions of `rows` rows far apart (3/4 into the context and 7), so that the attention sees both a long and a
    short row in one step."""
    return torch.tensor([context * 3 // 4 if row % 2 == 0 else 7 for row in range(rows)], device="cuda")


@torch.no_grad()
def megakernel_comparison(rt: TorchRuntime, slot_bytes: int, embeds, keys, values, context: int) -> str:
    """The LM step as engine.megakernel's persistent kernel (ring slots of `slot_bytes`) against the runtime's
    step (its other kernels) on the same inputs, rows at different positions: the largest differences of the outputs
    and of the caches they write, relative to the largest value, whether the kernel's graph replays equal its eager
    runs, and both replays' times."""
    step, rows = rt.cached_lm_step, embeds.shape[0]
    why = LanguageModelMegakernel.suits(step.step, step.layer_weights)
    kernel = None if why else LanguageModelMegakernel(step.step, step.layer_weights, slot_bytes)
    if kernel is None or not kernel.runs(rows):
        return f"megakernel not run ({why or f'{rows} rows in {slot_bytes}-byte slots do not fit'})"
    positions = staggered_positions(rows, context)
    mine, theirs = (keys.clone(), values.clone()), (keys.clone(), values.clone())
    ours = [*kernel(embeds, positions, *mine, context), *mine]
    reference = [*step(embeds, positions, *theirs, context), *theirs]
    errors = [float((a.float() - b.float()).abs().max() / b.float().abs().max()) for a, b in zip(ours, reference)]
    replayed = graph_outputs(lambda: kernel(embeds, positions, *mine, context))
    eager = kernel(embeds, positions, *mine, context)
    same = all(torch.equal(a, b) for a, b in zip(replayed, eager))
    mega_ms = replay_ms(lambda: kernel(embeds, positions, keys, values, context))
    kernels_ms = replay_ms(lambda: step(embeds, positions, keys, values, context))
    return (f"megakernel ({slot_bytes}-byte copies) {mega_ms:.3f} ms against the kernels' {kernels_ms:.3f}; "
            f"relative differences hidden {errors[0]:.1e}, logits {errors[1]:.1e}, keys {errors[2]:.1e}, values "
            f"{errors[3]:.1e}; replays equal eager: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1.5B")
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--compile", action="store_true", help="the pieces as TorchRuntime(compile=True) runs them")
    parser.add_argument("--kernels", type=int, default=0, help="list each piece's N costliest kernels")
    parser.add_argument("--no-dependent-launch", action="store_true",
                        help="the Triton kernels without programmatic dependent launch")
    parser.add_argument("--precision", choices=[p for p in TORCH_PRECISIONS if p != "fp32"], default="bf16")
    parser.add_argument("--megakernel", type=int, nargs="*", metavar="SLOT_BYTES",
                        help="compare the LM step as engine.megakernel's kernel, with ring slots of these sizes "
                             "(none given: the default), against its other kernels")
    parser.add_argument("--only", nargs="+", help="profile only these pieces (names' first words: lm, diffusion, ...)")
    args = parser.parse_args()
    checkpoint = random_checkpoint(args.size, device="cuda")
    held = TORCH_PRECISIONS[args.precision]
    rt = TorchRuntime(checkpoint, "cuda", held.dtype, compile=args.compile, quantized=held.quantized)
    spec, dt = rt.spec, held.dtype
    print(f"{args.size}, {args.precision}{', compiled' if args.compile else ''}, context {args.context}: "
          "ms per replay")
    for n in args.slots:
        keys = torch.randn(spec.num_layers, 2 * n, spec.kv_heads, args.context, spec.head_dim, dtype=dt,
                           device="cuda")
        values = torch.randn_like(keys)
        embeds = torch.randn(2 * n, spec.hidden_size, dtype=dt, device="cuda")
        positions = torch.full((2 * n,), args.context // 2, device="cuda")
        hidden = torch.randn(n, spec.hidden_size, dtype=dt, device="cuda")
        noise = torch.randn(n, spec.latent_dim, dtype=dt, device="cuda")
        cfg = torch.full((n,), 1.3, dtype=dt, device="cuda")
        table = torch.tensor(schedule_table([10] * n), dtype=dt, device="cuda")
        latents = torch.randn(n, spec.latent_dim, 1, dtype=dt, device="cuda")
        audio = torch.randn(n, 1, HOP_SAMPLES, dtype=dt, device="cuda")
        # caches as the engine holds them: channels-last, seen as [n, C, W]
        decoder, semantic = ([torch.zeros(n, c.width, c.channels, dtype=dt, device="cuda").transpose(1, 2)
                              for c in specs] for specs in (spec.decoder_caches, spec.semantic_caches))
        parts = {
            "lm step (pos+neg rows)": lambda: rt.lm_cached(embeds, positions, keys, values, args.context),
            "diffusion solve (10 steps)": lambda: rt.solve(noise, hidden, hidden, cfg, table),
            "acoustic decoder": lambda: rt.decode(latents, *decoder),
            "semantic encoder": lambda: rt.semantic(audio, *semantic),
            "connectors + embed": lambda: rt.acoustic_connector(noise) + rt.semantic_connector(
                torch.zeros(n, spec.semantic_dim, dtype=dt, device="cuda")),
        }
        if args.only:
            parts = {name: fn for name, fn in parts.items() if name.split()[0] in args.only}
        for slot_bytes in ([] if args.megakernel is None else args.megakernel or [SLOT_BYTES]):
            print(f"slots {n}: lm step: {megakernel_comparison(rt, slot_bytes, embeds, keys, values, args.context)}")
        print(f"slots {n}: tokenizer steps against transformers' modules, relative error: "
              f"{tokenizer_errors(rt, checkpoint.model.model, n)}")
        if not args.no_dependent_launch:
            print(f"slots {n}: pieces whose replays under dependent launch differ from replays without: "
                  f"{launch_differences(parts)}")
        triton_kernels.DEPENDENT_LAUNCH = not args.no_dependent_launch
        times = {name: replay_ms(fn) for name, fn in parts.items()}
        print(f"slots {n}: " + ", ".join(f"{name} {ms:.2f}" for name, ms in times.items())
              + f"; sum {sum(times.values()):.2f}")
        if args.kernels:
            for name, fn in parts.items():
                print(f"  {name}, replay {times[name]:.2f} ms; eager:\n{kernel_table(fn, args.kernels)}")


if __name__ == "__main__":
    main()
