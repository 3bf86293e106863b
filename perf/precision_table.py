"""Speed and quality cost of every torch precision, on the same inputs, in one run.

    python perf/precision_table.py --size 1.5B --frames 30 --json OUT.json
    python perf/precision_table.py --device cpu --size tiny --frames 3     # smoke test without a GPU

Builds the random-weight checkpoint once, directly on the device (fp32): the fp32 run uses it as it is, every other
precision a converted copy (a runtime converts its model in place). Each precision runs the engine (CUDA graphs on a
GPU, after a warm-up run that captures them) on one request: 10 s voice prompt, exactly --frames frames, 10
diffusion steps, cfg 1.3, seed 1. Per precision: ms/frame, RTF, the weights' size, the first frame's relative error
(max |diff| / max |fp32|) against fp32 and against bf16 (what the 8-bit LM weights add to bf16), the first frames'
errors, and the clip's SNR against fp32. With random weights the loop feeds each difference back, so whole-clip
figures drift at any precision (perf/RESULTS.md): the first frame is the comparable figure.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import itertools
import json

import numpy as np
import torch
from gpu_bench import frame_errors, quality, speed, timed_synthesis

from engine.benchmark import BENCH_SCRIPT, bench_voice
from engine.checkpoint import SIZES, random_checkpoint
from engine.config import EngineSettings
from engine.request import SynthesisOptions, SynthesisRequest, Voice
from engine.runtime import TORCH_PRECISIONS
from engine.runtime.torch_runtime import TorchRuntime
from engine.synthesizer import Synthesizer


def weights_gib(model: torch.nn.Module) -> float:
    tensors = itertools.chain(model.parameters(), model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 2**30


def run_precision(checkpoint, precision: str, device: str, request: SynthesisRequest,
                  settings: EngineSettings) -> tuple[np.ndarray, dict]:
    """(audio, figures) of one precision, on a copy of the fp32 checkpoint unless it is fp32 itself."""
    if precision != "fp32":
        checkpoint = dataclasses.replace(checkpoint, model=copy.deepcopy(checkpoint.model))
    held = TORCH_PRECISIONS[precision]
    runtime = TorchRuntime(checkpoint, device, held.dtype, quantized=held.quantized)
    synth = Synthesizer(runtime, checkpoint.processor, settings)
    timed_synthesis(synth, request)  # captures the graphs
    audio, seconds = timed_synthesis(synth, request)
    return audio, {"runtime": runtime.describe(), "weights_gib": weights_gib(checkpoint.model),
                   **speed(seconds, request.options.exact_frames)}


def print_table(rows: dict) -> None:
    print(f"{'precision':<10}{'ms/frame':>10}{'RTF':>8}{'weights GiB':>13}{'frame 1 vs fp32':>17}"
          f"{'frame 1 vs bf16':>17}{'SNR dB':>8}  first frames vs fp32")
    for precision, row in rows.items():
        if "error" in row:
            print(f"{precision:<10}failed: {row['error']}")
            continue
        versus_bf16 = row.get("first_frame_rel_error_vs_bf16", float("nan"))
        print(f"{precision:<10}{row['ms_per_frame']:>10.2f}{row['rtf']:>8.4f}{row['weights_gib']:>13.2f}"
              f"{row['first_frame_rel_error']:>17.2e}{versus_bf16:>17.2e}{row['snr_db']:>8.1f}  "
              + " ".join(f"{e:.1e}" for e in row["first_frames_vs_fp32"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="1.5B")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--precisions", nargs="+", choices=list(TORCH_PRECISIONS), default=list(TORCH_PRECISIONS))
    parser.add_argument("--max-context", type=int, default=2048)
    parser.add_argument("--json")
    args = parser.parse_args()
    if "fp32" not in args.precisions:
        parser.error("--precisions needs fp32: it is the reference every other precision is compared with")
    precisions = ["fp32", *(p for p in args.precisions if p != "fp32")]
    cuda = torch.device(args.device).type == "cuda"
    report: dict = {"size": args.size, "frames": args.frames, "torch": torch.__version__,
                    "device": torch.cuda.get_device_name(args.device) if cuda else args.device}

    checkpoint = random_checkpoint(args.size, seed=0, device=args.device)
    request = SynthesisRequest(BENCH_SCRIPT, {0: Voice(audio=bench_voice(10.0))},
                               SynthesisOptions(seed=1, exact_frames=args.frames))
    settings = EngineSettings(max_streams=1, max_context=args.max_context)
    print(f"{args.size} on {report['device']}, {'CUDA graphs' if cuda else 'eager'}, {args.frames} frames, "
          "10 s voice, 10 diffusion steps, cfg 1.3, seed 1", flush=True)

    rows, audio = {}, {}
    for precision in precisions:
        try:
            audio[precision], rows[precision] = run_precision(checkpoint, precision, args.device, request, settings)
        except RuntimeError as exc:  # one precision the hardware refuses must not cost the others' figures
            if precision == "fp32":
                raise
            rows[precision] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        print(f"{precision}: {rows[precision]}", flush=True)
    reference = audio["fp32"]
    for precision, samples in audio.items():
        rows[precision].update(quality(samples, reference),
                               first_frames_vs_fp32=frame_errors(samples, reference, min(5, args.frames)))
        if "bf16" in audio:
            rows[precision]["first_frame_rel_error_vs_bf16"] = quality(samples, audio["bf16"])["first_frame_rel_error"]
    report["precisions"] = rows
    print_table(rows)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)


if __name__ == "__main__":
    main()
