"""Streaming load on a served `vibevoice` ensemble: per-stream first-audio latency and real-time factor at several
concurrency levels, over Triton's HTTP generate_stream or over gRPC streaming the way the orchestrator calls it.

    python perf/stream_bench.py --url 127.0.0.1:8000 --concurrency 1 8 32 --frames 75 --voice-seconds 10
    python perf/stream_bench.py --protocol grpc --voice latents --url 127.0.0.1:8001 --concurrency 1 8 32 64

--voice audio (HTTP): every request carries one speaker's voice audio, which the ensemble encodes on each request.
--voice latents (gRPC): the voice is encoded once by `acoustic_encoder`, and every request carries the cached
latents (VOICE_LATENTS, VOICE_FRAMES) on its own gRPC stream, through the orchestrator's client
(orchestrator/services/triton.py). Every request asks for exactly --frames frames (7.5 per second of audio). Each
level starts its streams together and waits for all of them.
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import statistics
import threading
import time

import numpy as np

SAMPLE_RATE = 24000
SCRIPT = ("Speaker 0: Welcome back to the show. Today we talk about how speech synthesis got fast enough to hold a "
          "conversation, and what it costs to serve it to many listeners at once.")
PROTOCOL_VOICES = {"http": "audio", "grpc": "latents"}
DEFAULT_PORTS = {"http": 8000, "grpc": 8001}


def voice(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 140 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def stream_figures(started: float, first: float | None, samples: int) -> dict:
    """One finished stream's figures; `first` is the time of its first audio (perf_counter)."""
    seconds = time.perf_counter() - started
    audio_seconds = samples / SAMPLE_RATE
    return {"first_audio_s": None if first is None else first - started, "seconds": seconds,
            "audio_seconds": audio_seconds, "rtf": seconds / audio_seconds if audio_seconds else float("inf")}


def level_figures(concurrency: int, outcomes: list, wall: float) -> dict:
    """A level's row from its streams' figures (or the exceptions they raised)."""
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    if errors:
        raise RuntimeError(f"{len(errors)} of {concurrency} streams failed: {errors[0]}")
    if any(o["first_audio_s"] is None for o in outcomes):
        raise RuntimeError(f"a stream at concurrency {concurrency} ended without audio")
    firsts = sorted(o["first_audio_s"] for o in outcomes)
    return {
        "concurrency": concurrency,
        "first_audio_ms_p50": 1000 * statistics.median(firsts),
        "first_audio_ms_max": 1000 * firsts[-1],
        "rtf_per_stream_mean": statistics.mean(o["rtf"] for o in outcomes),
        "rtf_per_stream_max": max(o["rtf"] for o in outcomes),
        "aggregate_audio_per_second": sum(o["audio_seconds"] for o in outcomes) / wall,
        "wall_seconds": wall,
    }


def http_stream(host: str, port: int, body: bytes) -> dict:
    """Send one request to generate_stream; time its first audio and its end. Raises on an error event."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection(host, port, timeout=600)
    connection.request("POST", "/v2/models/vibevoice/generate_stream", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    first, samples = None, 0
    for line in response:
        if not line.startswith(b"data: "):
            continue
        event = json.loads(line[6:])
        if "error" in event:
            raise RuntimeError(event["error"])
        samples += len(event["AUDIO"])
        if first is None and samples:
            first = time.perf_counter()
    figures = stream_figures(started, first, samples)
    connection.close()
    return figures


def http_level(host: str, port: int, body: bytes, concurrency: int) -> dict:
    outcomes = []

    def run():
        try:
            outcomes.append(http_stream(host, port, body))
        except Exception as exc:  # reported with the level's figures
            outcomes.append(exc)

    started = time.perf_counter()
    threads = [threading.Thread(target=run) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return level_figures(concurrency, outcomes, time.perf_counter() - started)


def http_sweep(args: argparse.Namespace, host: str, port: int) -> list[dict]:
    samples = voice(args.voice_seconds).tolist()
    request = {"TEXT": SCRIPT, "VOICE_AUDIO": samples, "VOICE_LENGTHS": [len(samples)], "SEED": 1,
               "DIFFUSION_STEPS": args.steps, "CFG_SCALE": args.cfg}
    http_stream(host, port, json.dumps({**request, "EXACT_FRAMES": 2}).encode())  # first calls allocate and compile
    body = json.dumps({**request, "EXACT_FRAMES": args.frames}).encode()
    return [http_level(host, port, body, c) for c in args.concurrency]


async def grpc_sweep(args: argparse.Namespace, host: str, port: int) -> list[dict]:
    """The orchestrator's client: the voice encoded once, then one gRPC stream per request over one channel."""
    from orchestrator.services.triton import GenerationOptions, TritonClient  # needs tritonclient[grpc]

    client = TritonClient(f"{host}:{port}", stream_timeout_s=600.0)
    try:
        encoding = time.perf_counter()
        latents = await client.encode_voices([voice(args.voice_seconds)])
        print(f"voice encoded once by acoustic_encoder: {latents[0].shape[0]} latent frames in "
              f"{1000 * (time.perf_counter() - encoding):.0f} ms")

        async def one(frames: int) -> dict:
            options = GenerationOptions(cfg_scale=args.cfg, diffusion_steps=args.steps, seed=1, exact_frames=frames)
            started, first, samples = time.perf_counter(), None, 0
            async for chunk in client.generate(SCRIPT, latents, options):
                samples += chunk.audio.size
                if first is None and samples:
                    first = time.perf_counter()
            return stream_figures(started, first, samples)

        await one(2)  # first calls allocate and compile
        rows = []
        for concurrency in args.concurrency:
            started = time.perf_counter()
            outcomes = await asyncio.gather(*(one(args.frames) for _ in range(concurrency)), return_exceptions=True)
            rows.append(level_figures(concurrency, outcomes, time.perf_counter() - started))
        return rows
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--voice", choices=("audio", "latents"),
                        help="how requests carry the voice: audio with --protocol http (the default there), cached "
                             "latents with --protocol grpc (the default there)")
    parser.add_argument("--url", help="Triton's host:port for the protocol (default 127.0.0.1:8000 for HTTP, "
                                      "127.0.0.1:8001 for gRPC)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--frames", type=int, default=75, help="frames per stream (75 = 10 s of audio)")
    parser.add_argument("--voice-seconds", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=10, help="diffusion steps")
    parser.add_argument("--cfg", type=float, default=1.3)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    args.voice = args.voice or PROTOCOL_VOICES[args.protocol]
    if args.voice != PROTOCOL_VOICES[args.protocol]:
        parser.error(f"--voice {args.voice} does not go with --protocol {args.protocol}: HTTP generate_stream takes "
                     "flat JSON arrays, which cannot carry [S, T, 64] latents, and the gRPC path is the "
                     "orchestrator's, which sends cached latents; use --protocol http --voice audio or "
                     "--protocol grpc --voice latents")
    host, port = (args.url or f"127.0.0.1:{DEFAULT_PORTS[args.protocol]}").rsplit(":", 1)
    if args.protocol == "http":
        rows = http_sweep(args, host, int(port))
    else:
        rows = asyncio.run(grpc_sweep(args, host, int(port)))
    rows = [{"protocol": args.protocol, "voice": args.voice, **r} for r in rows]
    print(f"{args.protocol}, voice as {args.voice}, {args.frames} frames per stream")
    print(f"{'streams':>7} {'first audio p50':>16} {'max':>8} {'RTF/stream':>11} {'max':>6} {'audio s/s':>10}")
    for r in rows:
        print(f"{r['concurrency']:>7} {r['first_audio_ms_p50']:>13.0f} ms {r['first_audio_ms_max']:>5.0f} ms "
              f"{r['rtf_per_stream_mean']:>11.3f} {r['rtf_per_stream_max']:>6.3f} "
              f"{r['aggregate_audio_per_second']:>10.2f}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)


if __name__ == "__main__":
    main()
