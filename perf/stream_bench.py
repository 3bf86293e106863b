"""Streaming load on a served `vibevoice` ensemble: per-stream first-audio latency and real-time factor at several
concurrency levels, over Triton's HTTP generate_stream (server-sent events; Python's standard library only, so it
runs wherever the server does).

    python perf/stream_bench.py --url 127.0.0.1:8000 --concurrency 1 8 32 --frames 75 --voice-seconds 10

Every request carries one speaker's voice audio (encoded by the acoustic_encoder on each request) and asks for
exactly --frames frames (7.5 per second of audio). Each level starts its streams together and waits for all of them.
"""
from __future__ import annotations

import argparse
import http.client
import json
import statistics
import threading
import time

import numpy as np

SAMPLE_RATE, HOP = 24000, 3200
SCRIPT = ("Speaker 0: Welcome back to the show. Today we talk about how speech synthesis got fast enough to hold a "
          "conversation, and what it costs to serve it to many listeners at once.")


def voice(seconds: float) -> list[float]:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 140 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32).tolist()


def one_stream(host: str, port: int, body: bytes) -> dict:
    """Send one request; time its first audio and its end. Raises on an error event."""
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
            first = time.perf_counter() - started
    seconds = time.perf_counter() - started
    connection.close()
    audio_seconds = samples / SAMPLE_RATE
    return {"first_audio_s": first, "seconds": seconds, "audio_seconds": audio_seconds,
            "rtf": seconds / audio_seconds if audio_seconds else float("inf")}


def level(host: str, port: int, body: bytes, concurrency: int) -> dict:
    results, errors = [], []

    def run():
        try:
            results.append(one_stream(host, port, body))
        except Exception as exc:  # reported with the level's figures
            errors.append(str(exc))

    started = time.perf_counter()
    threads = [threading.Thread(target=run) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} of {concurrency} streams failed: {errors[0]}")
    firsts = sorted(r["first_audio_s"] for r in results)
    return {
        "concurrency": concurrency,
        "first_audio_ms_p50": 1000 * statistics.median(firsts),
        "first_audio_ms_max": 1000 * firsts[-1],
        "rtf_per_stream_mean": statistics.mean(r["rtf"] for r in results),
        "rtf_per_stream_max": max(r["rtf"] for r in results),
        "aggregate_audio_per_second": sum(r["audio_seconds"] for r in results) / wall,
        "wall_seconds": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8000", help="Triton's HTTP host:port")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--frames", type=int, default=75, help="frames per stream (75 = 10 s of audio)")
    parser.add_argument("--voice-seconds", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=10, help="diffusion steps")
    parser.add_argument("--cfg", type=float, default=1.3)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    host, port = args.url.rsplit(":", 1)
    samples = voice(args.voice_seconds)
    body = json.dumps({"TEXT": SCRIPT, "VOICE_AUDIO": samples, "VOICE_LENGTHS": [len(samples)], "SEED": 1,
                       "EXACT_FRAMES": args.frames, "DIFFUSION_STEPS": args.steps, "CFG_SCALE": args.cfg}).encode()
    warm = json.loads(body)
    warm["EXACT_FRAMES"] = 2
    one_stream(host, int(port), json.dumps(warm).encode())  # first calls allocate and compile
    rows = [level(host, int(port), body, c) for c in args.concurrency]
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
