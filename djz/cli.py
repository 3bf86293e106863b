"""`djz`: make checkpoints, export them, synthesise speech and measure speed from the command line."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from djz import serve
from engine.errors import EngineError


def _voice_bindings(values: list[str]) -> dict[int, str]:
    bindings = {}
    for value in values:
        speaker, sep, path = value.partition("=")
        if not sep or not speaker.strip().isdigit() or not path:
            raise EngineError(f"--voice {value!r}: expected SPEAKER=FILE, e.g. --voice 0=alice.wav")
        if int(speaker) in bindings:
            raise EngineError(f"--voice: speaker {int(speaker)} is given twice")
        bindings[int(speaker)] = path
    return bindings


def cmd_make_checkpoint(args) -> None:
    from engine.checkpoint import make_checkpoint

    out = make_checkpoint(args.size, args.out, seed=args.seed)
    print(f"wrote a random-weight {args.size} checkpoint to {out}")


def cmd_convert_checkpoint(args) -> None:
    from engine.convert_original import convert_original_checkpoint

    out = convert_original_checkpoint(args.src, args.out)
    print(f"converted {args.src} (Microsoft's original layout) to the -hf layout in {out}")


def cmd_export(args) -> None:
    from engine.config import EngineSettings
    from export.triton_repository import ServingConfig, export_repository

    serving = ServingConfig(target=args.target, compile=args.compile,
                            engine=EngineSettings(max_streams=args.max_streams, max_context=args.max_context))
    export_repository(args.checkpoint, args.out, runtime=args.runtime, precision=args.precision, serving=serving)


def cmd_synth(args) -> None:
    from tqdm import tqdm

    from engine.audio import prepare_voice, read_audio, write_audio
    from engine.postprocess import postprocess
    from engine.config import HOP_SAMPLES, SAMPLE_RATE
    from engine.request import SynthesisOptions, SynthesisRequest, Voice
    from engine.synthesizer import Synthesizer

    script = sys.stdin.read() if args.script == "-" else _read_text(args.script)
    voices = {}
    for speaker, path in _voice_bindings(args.voice).items():
        samples, rate = read_audio(path)
        voices[speaker] = Voice(audio=prepare_voice(samples, rate, name=path))
    options = SynthesisOptions(cfg_scale=args.cfg, diffusion_steps=args.steps, seed=args.seed,
                               max_frames=args.max_frames, exact_frames=args.frames)
    request = SynthesisRequest(script, voices, options)
    synth = Synthesizer.load(args.model, runtime=args.runtime, precision=args.precision)
    chunks, seed, reason = [], None, None
    started = time.perf_counter()
    with tqdm(total=args.frames or args.max_frames, unit="frame", file=sys.stderr, desc="synthesising") as bar:
        for _, seed, output in synth.run([request]):
            if output.audio is not None:
                chunks.append(output.audio)
                elapsed = time.perf_counter() - started
                bar.set_postfix(rtf=f"{elapsed / (len(chunks) * HOP_SAMPLES / SAMPLE_RATE):.3f}")
                bar.update(1)
            reason = output.reason or reason
    if not chunks:
        raise EngineError(f"the model produced no speech frames (it stopped: {reason}); try --frames N")
    import numpy as np

    audio = np.concatenate(chunks)
    if not args.raw:  # the same finishing, chunk by chunk, as Triton's postprocess model
        audio = postprocess(audio)
    write_audio(args.out, audio, raw=args.raw)
    seconds = len(audio) / SAMPLE_RATE
    print(f"wrote {args.out}: {seconds:.2f} s of audio, {len(chunks)} frames, seed {seed}, stopped by {reason}, "
          f"runtime {synth.runtime.describe()}")


def cmd_bench(args) -> None:
    from engine.benchmark import run_bench
    from engine.config import EngineSettings
    from engine.synthesizer import Synthesizer

    settings = EngineSettings(max_streams=args.batch, max_context=args.max_context,
                              cuda_graphs=False if args.no_cuda_graphs else None)
    synth = Synthesizer.load(args.model, runtime=args.runtime, settings=settings, precision=args.precision,
                             compile=args.compile)
    result = run_bench(synth, frames=args.frames, streams=args.batch, voice_seconds=args.voice_seconds,
                       steps=args.steps, cfg=args.cfg, cached_voice=args.cached_voice)
    row = result.as_dict()
    width = max(len(k) for k in row)
    for key, value in row.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(row))


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise EngineError(f"cannot read script {path}: {exc.strerror}") from exc


def build_parser() -> argparse.ArgumentParser:
    from engine.checkpoint import SIZES
    from engine.config import DEFAULT_CFG_SCALE, DEFAULT_DIFFUSION_STEPS, EngineSettings
    from engine.runtime import PRECISIONS, RUNTIMES, TORCH_PRECISIONS
    from export.triton_repository import EXPORT_RUNTIMES, TARGETS

    parser = argparse.ArgumentParser(prog="djz", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("make-checkpoint", help="build a random-weight checkpoint (tiny, 1.5B or 7B)")
    p.add_argument("--size", choices=SIZES, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_make_checkpoint)

    p = commands.add_parser("convert-checkpoint", help="convert Microsoft's original layout to the -hf layout")
    p.add_argument("--src", required=True, help="original-layout checkpoint folder")
    p.add_argument("--out", required=True)
    p.set_defaults(run=cmd_convert_checkpoint)

    p = commands.add_parser("export", help="export a checkpoint to a Triton model repository")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder or hub id")
    p.add_argument("--out", required=True)
    p.add_argument("--runtime", choices=EXPORT_RUNTIMES, default="onnxruntime",
                   help="onnxruntime: ONNX graphs for CPU serving; torch: the checkpoint, for GPU serving")
    p.add_argument("--precision", default="fp32",
                   help=f"onnxruntime: fp32; torch: {', '.join(TORCH_PRECISIONS)} (recorded in the manifest; "
                        "the generator loads the model at it)")
    p.add_argument("--target", choices=TARGETS, default="cpu", help="instance groups of the generated configs")
    p.add_argument("--max-streams", type=int, default=EngineSettings.max_streams,
                   help="streams the generator advances together")
    p.add_argument("--max-context", type=int, default=EngineSettings.max_context,
                   help="prompt tokens + generated frames per stream")
    p.add_argument("--compile", action="store_true",
                   help="torch runtime: the generator torch.compiles the frame's pieces at start (minutes)")
    p.set_defaults(run=cmd_export)

    def generation_options(p):
        p.add_argument("--runtime", choices=RUNTIMES, default="auto")
        p.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="torch runtime on a checkpoint: auto picks bf16 on CUDA, fp32 on CPU; fp8 and int8 store "
                            "the LM layers' weights in 8 bits (weight-only: bf16 activations; one Triton kernel per "
                            "product on CUDA)")
        p.add_argument("--cfg", type=float, default=DEFAULT_CFG_SCALE, help="classifier-free guidance scale")
        p.add_argument("--steps", type=int, default=DEFAULT_DIFFUSION_STEPS, help="diffusion steps per frame")

    p = commands.add_parser("synth", help="synthesise a script to an audio file")
    p.add_argument("--model", required=True, help="checkpoint folder, hub id or exported repository")
    p.add_argument("--script", required=True, help="script file, or - for standard input")
    p.add_argument("--voice", action="append", default=[], metavar="K=FILE", help="voice sample for speaker K")
    p.add_argument("--out", required=True, help="output .wav or .flac")
    generation_options(p)
    p.add_argument("--seed", type=int)
    p.add_argument("--frames", type=int, help="generate exactly N speech frames (7.5 per second)")
    p.add_argument("--max-frames", type=int, help="stop after N speech frames")
    p.add_argument("--raw", action="store_true",
                   help="write the engine's float32 samples, without postprocessing (DC, loudness, limiter)")
    p.set_defaults(run=cmd_synth)

    p = commands.add_parser("bench", help="measure ms per frame, real-time factor and first-audio latency")
    p.add_argument("--model", required=True)
    generation_options(p)
    p.add_argument("--frames", type=int, default=75, help="frames per stream (75 = 10 s of audio)")
    p.add_argument("--batch", type=int, default=1, help="concurrent streams")
    p.add_argument("--voice-seconds", type=float, default=10.0)
    p.add_argument("--max-context", type=int, default=2048, help="KV cache length per stream")
    p.add_argument("--no-cuda-graphs", action="store_true", help="launch every kernel eagerly (for comparison)")
    p.add_argument("--cached-voice", action="store_true", help="send the voice as latents encoded beforehand")
    p.add_argument("--compile", action="store_true", help="torch runtime: torch.compile the frame's pieces")
    p.set_defaults(run=cmd_bench)

    serve.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except EngineError as exc:
        print(f"djz: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
