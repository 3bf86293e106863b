"""The engine on a GPU against transformers' generate(), on the same inputs, in one run.

    python perf/gpu_bench.py --size 1.5B --frames 75 --streams 1 8 32 64 --json OUT.json

Builds the random-weight model directly on the GPU, then measures with exactly --frames frames per request (10 s
voice prompt, 10 diffusion steps, cfg 1.3):
  - fp32 eager engine: the quality reference;
  - transformers' generate() in bf16 (the model's own loop), and our engine at --precision (bf16 unless asked)
    eager and with CUDA graphs:
    ms per frame, RTF and relative error / SNR of the audio against the fp32 reference;
  - first audio with the voice's latents cached, and the engine's readiness (graph captures included);
  - a concurrency sweep with CUDA graphs (voices as cached latents, as a server with a voice cache sends them):
    aggregate audio seconds per wall second and first audio per stream.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from engine.benchmark import BENCH_SCRIPT, bench_voice, run_bench
from engine.checkpoint import random_checkpoint
from engine.config import HOP_SAMPLES, SAMPLE_RATE, EngineSettings
from engine.prompt import conversation, encode_voices, prepare_prompt
from engine.request import SynthesisOptions, SynthesisRequest, Voice
from engine.runtime import TORCH_PRECISIONS
from engine.runtime.torch_runtime import TorchRuntime
from engine.synthesizer import Synthesizer


def quality(audio: np.ndarray, reference: np.ndarray) -> dict:
    """Max relative error and SNR over the clip, and the relative error of the first frame alone: with random
    weights the loop feeds every difference back, so later frames drift apart at any precision."""
    def relative(a, b):
        return float(np.abs(a - b).max() / np.abs(b).max())

    error = audio - reference
    return {"rel_error": relative(audio, reference), "first_frame_rel_error": relative(audio[:HOP_SAMPLES],
                                                                                   reference[:HOP_SAMPLES]),
            "snr_db": float(10 * np.log10(np.sum(reference**2) / max(np.sum(error**2), 1e-30)))}


def timed_synthesis(synth: Synthesizer, request: SynthesisRequest) -> tuple[np.ndarray, float]:
    if synth.runtime.device.type == "cuda":  # the clock starts with the GPU idle
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = synth.synthesize(request)
    return result.audio, time.perf_counter() - started


def transformers_generate(checkpoint, request: SynthesisRequest, voice: np.ndarray) -> tuple[np.ndarray, float]:
    """transformers' own loop on the same prompt, seed and forced frames (as tests/engine/reference.py)."""
    model, processor, options = checkpoint.model, checkpoint.processor, request.options
    messages, _ = conversation(request)
    text = processor.apply_chat_template(messages, tokenize=False)
    inputs = processor(text=text, audio=[voice], sampling_rate=SAMPLE_RATE, return_tensors="pt").to("cuda")
    inputs["input_values"] = inputs["input_values"].to(torch.bfloat16)
    cfg = model.config

    def generate(frames):
        torch.manual_seed(options.seed)
        with torch.no_grad():
            return model.generate(**inputs, max_new_tokens=frames, min_new_tokens=frames, do_sample=False,
                                  suppress_tokens=[cfg.audio_bos_token_id, cfg.audio_eos_token_id],
                                  num_diffusion_steps=options.diffusion_steps, guidance_scale=options.cfg_scale,
                                  return_dict_in_generate=True)

    generate(4)  # warm-up
    torch.cuda.synchronize()
    started = time.perf_counter()
    out = generate(options.exact_frames)
    torch.cuda.synchronize()
    return out.audio[0].reshape(-1).float().cpu().numpy(), time.perf_counter() - started


def speed(seconds: float, frames: int) -> dict:
    return {"ms_per_frame": 1000 * seconds / frames, "rtf": seconds / (frames * HOP_SAMPLES / SAMPLE_RATE)}


def show(name: str, row: dict) -> None:
    print(f"{name:<34}{row['ms_per_frame']:>10.2f}{row['rtf']:>8.4f}{row.get('rel_error', 0):>10.2e}"
          f"{row.get('first_frame_rel_error', 0):>10.2e}{row.get('snr_db', float('inf')):>8.1f}", flush=True)


def frame_errors(audio: np.ndarray, reference: np.ndarray, frames: int = 5) -> list[float]:
    """Relative error of each of the first frames: where two runs start to drift apart."""
    return [float(np.abs(audio[i * HOP_SAMPLES:(i + 1) * HOP_SAMPLES] - reference[i * HOP_SAMPLES:(i + 1) * HOP_SAMPLES]
                         ).max() / np.abs(reference[i * HOP_SAMPLES:(i + 1) * HOP_SAMPLES]).max()) for i in range(frames)]


def first_audio_ms(synth: Synthesizer, request: SynthesisRequest) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    frames = synth.stream(request)
    next(frames)
    elapsed = time.perf_counter() - started
    frames.close()
    return 1000 * elapsed


def first_audio_phases(synth: Synthesizer, request: SynthesisRequest) -> dict:
    """Where first audio's time goes, each phase waited for on the device: the prompt (tokens, voice sampling,
    embeddings), its prefill into a slot, and the step that hands out the first frame."""
    engine, phases = synth.engine, {}
    torch.cuda.synchronize()
    started = time.perf_counter()
    prompt = prepare_prompt(synth.runtime, synth.processor, request, seed=1)
    torch.cuda.synchronize()
    phases["prompt_ms"] = 1000 * (time.perf_counter() - started)
    started = time.perf_counter()
    stream = engine.add(prompt, request.options)
    torch.cuda.synchronize()
    phases["prefill_ms"] = 1000 * (time.perf_counter() - started)
    started = time.perf_counter()
    engine.step()
    phases["first_step_ms"] = 1000 * (time.perf_counter() - started)
    engine.cancel(stream)  # the frame still in flight is dropped by the next step
    return phases


def print_sweep(rows: list[dict]) -> None:
    print(f"{'streams':>8}{'ms/step':>10}{'RTF/stream':>12}{'audio s/s':>11}{'first audio':>13}")
    for row in rows:
        print(f"{row['streams']:>8}{row['ms_per_frame']:>10.2f}{row['rtf']:>12.4f}"
              f"{row['aggregate_audio_per_second']:>11.1f}{row['first_audio_ms']:>10.0f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1.5B")
    parser.add_argument("--frames", type=int, default=75)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--max-context", type=int, default=2048)
    parser.add_argument("--skip-transformers", action="store_true",
                        help="implied by 8-bit precisions, which replace the model's linears in place")
    parser.add_argument("--precision", choices=[p for p in TORCH_PRECISIONS if p != "fp32"], default="bf16")
    parser.add_argument("--compile", action="store_true", help="also measure graphs over torch.compile'd pieces")
    parser.add_argument("--megakernel", action="store_true",
                        help="the LM step of 1-2 streams as engine.megakernel's persistent kernel")
    parser.add_argument("--json")
    args = parser.parse_args()
    report: dict = {"size": args.size, "frames": args.frames, "precision": args.precision,
                    "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    held = TORCH_PRECISIONS[args.precision]
    ours = f"engine {args.precision}"

    started = time.perf_counter()
    checkpoint = random_checkpoint(args.size, seed=0, device="cuda")
    report["build_s"] = time.perf_counter() - started
    voice = bench_voice(10.0)
    options = SynthesisOptions(seed=1, exact_frames=args.frames)
    request = SynthesisRequest(BENCH_SCRIPT, {0: Voice(audio=voice)}, options)
    eager = EngineSettings(max_streams=1, max_context=args.max_context, cuda_graphs=False)

    fp32 = Synthesizer(TorchRuntime(checkpoint, "cuda", torch.float32), checkpoint.processor, eager)
    timed_synthesis(fp32, SynthesisRequest(BENCH_SCRIPT, {0: Voice(audio=voice)}, SynthesisOptions(seed=1,
                                                                                               exact_frames=2)))
    reference, seconds = timed_synthesis(fp32, request)
    rows = {"engine fp32 eager": speed(seconds, args.frames)}
    print(f"{args.size} on {report['gpu']}, {args.frames} frames, 10 diffusion steps, cfg 1.3")
    print(f"{'':<34}{'ms/frame':>10}{'RTF':>8}{'rel err':>10}{'frame 1':>10}{'SNR dB':>8}")
    show("engine fp32 eager", rows["engine fp32 eager"])
    del fp32

    runtime = TorchRuntime(checkpoint, "cuda", held.dtype, quantized=held.quantized,  # converts the model in place
                           megakernel=args.megakernel)
    if not (args.skip_transformers or held.quantized):
        audio, seconds = transformers_generate(checkpoint, request, voice)
        rows["transformers bf16"] = {**speed(seconds, args.frames), **quality(audio, reference)}
        show("transformers bf16", rows["transformers bf16"])

    eager_engine = Synthesizer(runtime, checkpoint.processor, eager)
    timed_synthesis(eager_engine, request)
    eager_audio, seconds = timed_synthesis(eager_engine, request)
    rows[f"{ours} eager"] = {**speed(seconds, args.frames), **quality(eager_audio, reference)}
    show(f"{ours} eager", rows[f"{ours} eager"])
    del eager_engine

    graphs = Synthesizer(runtime, checkpoint.processor,
                         EngineSettings(max_streams=max(args.streams), max_context=args.max_context))
    started = time.perf_counter()
    report["graphs_captured"] = graphs.engine.warm_up()
    report["warm_up_s"] = time.perf_counter() - started
    report["ready_s"] = report["build_s"] + report["warm_up_s"]  # weights on the GPU, every graph captured
    timed_synthesis(graphs, request)
    audio, seconds = timed_synthesis(graphs, request)
    rows[f"{ours} cuda graphs"] = {**speed(seconds, args.frames), **quality(audio, reference),
                                   "first_frames_vs_eager": frame_errors(audio, eager_audio)}
    show(f"{ours} cuda graphs", rows[f"{ours} cuda graphs"])
    print(f"cuda graphs against {args.precision} eager, first frames:",
          " ".join(f"{e:.1e}" for e in rows[f"{ours} cuda graphs"]["first_frames_vs_eager"]), flush=True)
    report["single_stream"] = rows

    latents = encode_voices(runtime, [voice])[0]
    cached = SynthesisRequest(BENCH_SCRIPT, {0: Voice(latents=latents)}, options)
    first_audio_ms(graphs, cached)
    report["first_audio_cached_ms"] = first_audio_ms(graphs, cached)
    report["first_audio_phases"] = first_audio_phases(graphs, cached)
    print("first audio, latents cached, by phase: " + ", ".join(f"{name} {ms:.1f}"
                                                                for name, ms in report["first_audio_phases"].items()))

    sweep = []
    for streams in args.streams:
        run_bench(graphs, frames=args.frames, streams=streams, cached_voice=True)  # captures the level's graphs
        sweep.append(run_bench(graphs, frames=args.frames, streams=streams, cached_voice=True).as_dict())
    report["sweep"] = sweep
    report["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print_sweep(sweep)
    if args.compile:
        del graphs
        started = time.perf_counter()
        compiled_runtime = TorchRuntime(checkpoint, "cuda", held.dtype, compile=True, quantized=held.quantized)
        compiled = Synthesizer(compiled_runtime, checkpoint.processor,
                               EngineSettings(max_streams=max(args.streams), max_context=args.max_context))
        timed_synthesis(compiled, request)
        report["compile_ready_s"] = time.perf_counter() - started
        audio, seconds = timed_synthesis(compiled, request)
        row = {**speed(seconds, args.frames), **quality(audio, reference),
               "first_frames_vs_eager": frame_errors(audio, eager_audio)}
        rows[f"{ours} cuda graphs + compile"] = row
        show(f"{ours} cuda graphs + compile", row)
        print(f"ready after compilation and captures: {report['compile_ready_s']:.1f} s", flush=True)
        report["compiled_sweep"] = [run_bench(compiled, frames=args.frames, streams=s, cached_voice=True).as_dict()
                                    for s in args.streams for _ in range(2)][1::2]
        print_sweep(report["compiled_sweep"])
    baseline = rows.get("transformers bf16", rows["engine fp32 eager"])["ms_per_frame"]
    for row in rows.values():
        row["speedup"] = baseline / row["ms_per_frame"]
    print("speed-up over " + ("transformers bf16" if "transformers bf16" in rows else "fp32 eager") + ": " +
          ", ".join(f"{name} {row['speedup']:.1f}x" for name, row in rows.items()))

    print(f"first audio, latents cached: {report['first_audio_cached_ms']:.0f} ms; ready in {report['ready_s']:.1f} s "
          f"(build {report['build_s']:.1f} s, {report['graphs_captured']} graphs in {report['warm_up_s']:.1f} s); "
          f"peak GPU memory {report['peak_memory_gib']:.1f} GiB")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)


if __name__ == "__main__":
    main()
