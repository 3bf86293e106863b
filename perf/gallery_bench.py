"""Gallery metadata endpoints on a full gallery: fills an empty database with --clips clip records (rows, and a
small distinct file per clip written through AudioStore), serves the orchestrator with uvicorn on a free port in
this process, and times list, get, filter, sort, search and facet requests over HTTP (one keep-alive connection,
each request's time from sending to the last byte of its JSON), p50 and p99 per endpoint. Target: p99 < 100 ms.

    PYTHONPATH=. python perf/gallery_bench.py [--clips 10000] [--requests 300] [--database-url URL] [--json out.json]

SQLite in a temporary folder by default; --database-url points at an empty PostgreSQL database
(postgresql+psycopg://...), vacuumed and analysed after the fill as autovacuum would. Triton is not needed: none of
these endpoints generates.
"""
from __future__ import annotations

import argparse
import http.client
import json
import random
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import uvicorn
from sqlalchemy import text
from sqlmodel import Session, func, select

from orchestrator.core.config import Settings
from orchestrator.core.db import make_engine, migrate
from orchestrator.main import create_app
from orchestrator.models.clip import Clip, search_text
from orchestrator.models.common import encode_tags, new_id
from orchestrator.services import codecs
from orchestrator.services.storage import AudioStore

VOICES = ["Alice", "Bob", "Carmen", "Dmitri", "Emeka", "Fatima", "Grace", "Hiro", "Ingrid", "Jamal", "Kaya", "Liam"]
TAGS = ["podcast", "audiobook", "ad", "draft", "final", "english", "spanish", "news", "intro", "outro", "music bed",
        "interview", "review", "kids", "meditation", "tutorial", "trailer", "chapter 1", "chapter 2", "promo"]
FOLDERS = ["", "", "podcasts", "podcasts/season 1", "podcasts/season 2", "audiobooks", "ads", "drafts", "archive"]
WORDS = ("the a of and to in is it that was for on are as with his they at be this from have or by one had not but "
         "what all were when we there can an your which their said if do will each about how up out them then she "
         "many some so these would other into has more her two like him see time could no make than first been its "
         "who now people my made over did down only way find use may water long little very after words called just "
         "where most know get through back much before go good new write our used me man too any day same right look "
         "think also around another came come work three word must because does part even place well such here take "
         "why things help put years different away again off went old number great tell men say small every found "
         "still between name should home big give air line set own under read last never us left end along while "
         "might next sound below saw something thought both few those always looked show large often together asked "
         "house world going want school important until form food keep children feet land side without boy once "
         "animals life enough took sometimes four head above kind began almost live page got earth need far hand "
         "high year mother light parts country father let night following picture being study second eyes soon "
         "times story boys since white days ever paper hard near sentence better best across during today others "
         "sure means knew its try told young miles sun ways thing whole hear example heard several change answer "
         "room sea against top turned learn point city play toward five using himself usually quantum saffron "
         "glacier xylophone harbour lantern orchard velvet compass meadow").split()
WORD_WEIGHTS = [1 / rank for rank in range(1, len(WORDS) + 1)]  # Zipf's law: a few words common, most rare
SAMPLE_RATE = 24000


def script_text(rng: random.Random, speakers: int) -> str:
    """A realistic script: 2 to 12 turns of 6 to 40 words, speakers taking turns."""
    turns = []
    for turn in range(rng.randint(2, 12)):
        words = rng.choices(WORDS, WORD_WEIGHTS, k=rng.randint(6, 40))
        turns.append(f"Speaker {turn % speakers}: {' '.join(words).capitalize()}.")
    return "\n".join(turns)


def fake_clip(rng: random.Random, store: AudioStore, now: datetime) -> Clip:
    """A clip with realistic metadata. Its file is a distinct 0.05 s of noise (the metadata endpoints never read
    files; 10,000 full-length files would take gigabytes), so duration and size are drawn for the row."""
    speakers = rng.choices([1, 2, 3, 4], weights=[6, 3, 1, 1])[0]
    voices = rng.sample(range(len(VOICES)), speakers)
    script = script_text(rng, speakers)
    title = " ".join(script.split(": ", 1)[1].split()[:8])
    duration = min(600.0, rng.lognormvariate(3.5, 0.9))
    rtf = rng.uniform(0.05, 0.6)
    fmt = rng.choices(["wav", "mp3", "flac", "ogg"], weights=[6, 2, 1, 1])[0]
    noise = np.random.default_rng(rng.getrandbits(32)).uniform(-0.3, 0.3, SAMPLE_RATE // 20)
    names = [VOICES[v] for v in voices]
    return Clip(id=new_id(), created_at=now - timedelta(seconds=rng.uniform(0, 365 * 86400)), title=title,
                script=script, search_text=search_text(title, script, names),
                voice_ids=encode_tags([f"voice{v:02d}" for v in voices]), voice_names=", ".join(names),
                speakers=speakers, duration_s=duration, generation_s=duration * rtf, rtf=rtf, format=fmt,
                file_sha256=store.write(codecs.encode(noise, codecs.FORMATS["wav"])),
                file_size=int(duration * {"wav": 48000, "flac": 30000, "mp3": 16000, "ogg": 12000}[fmt]),
                seed=rng.getrandbits(63), cfg_scale=1.3, diffusion_steps=rng.choice([5, 10, 20]), model_id="bench",
                finish_reason="eos", tags=encode_tags(rng.sample(TAGS, rng.randint(0, 4))), folder=rng.choice(FOLDERS),
                quality_score=rng.uniform(1, 5) if rng.random() < 0.7 else None,
                source=rng.choices(["api", "stream", "openai", "batch"], weights=[5, 2, 2, 3])[0])


def fill(settings: Settings, clips: int, seed: int) -> list[str]:
    """Write `clips` clips into the empty gallery of `settings`; returns their ids."""
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    store = AudioStore(settings.audio_dir)
    rng, now = random.Random(seed), datetime.now(timezone.utc)
    with Session(engine) as session:
        existing = session.exec(select(func.count()).select_from(Clip)).one()
        if existing:
            raise SystemExit(f"{settings.resolved_database_url} already holds {existing} clips; give an empty database")
        ids = []
        for batch in range(0, clips, 1000):
            rows = [fake_clip(rng, store, now) for _ in range(min(1000, clips - batch))]
            session.add_all(rows)
            session.commit()
            ids += [row.id for row in rows]
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE clip"))  # what autovacuum does soon after such a load
    engine.dispose()
    return ids


def serve(settings: Settings) -> tuple[uvicorn.Server, threading.Thread, int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread, listener.getsockname()[1]


def request_paths(rng: random.Random, ids: list[str]) -> dict[str, Callable[[], str]]:
    """Endpoint name -> a function giving the next request's path (parameters vary, as a user's would)."""
    def gallery(**params) -> str:
        return "/api/v2/gallery?" + urlencode(params, doseq=True)

    return {
        "list, first page": lambda: gallery(limit=50),
        "list, any page": lambda: gallery(limit=50, offset=rng.randrange(0, max(1, len(ids) - 50))),
        "get one": lambda: f"/api/v2/gallery/{rng.choice(ids)}",
        "filter: tag": lambda: gallery(tag=rng.choice(TAGS)),
        "filter: voice": lambda: gallery(voice=f"voice{rng.randrange(len(VOICES)):02d}"),
        "filter: folder + duration": lambda: gallery(folder=rng.choice(FOLDERS), min_duration_s=rng.uniform(5, 60),
                                                     max_duration_s=rng.uniform(60, 300)),
        "filter: date range + quality": lambda: gallery(created_from=f"2026-0{rng.randint(1, 6)}-01",
                                                        created_to=f"2026-{rng.randint(7, 12):02d}-28",
                                                        min_quality_score=rng.uniform(1, 4)),
        "sort: -duration_s": lambda: gallery(sort="-duration_s", offset=rng.randrange(0, 500)),
        "sort: title": lambda: gallery(sort="title", offset=rng.randrange(0, 500)),
        "sort: quality_score": lambda: gallery(sort="quality_score", offset=rng.randrange(0, 500)),
        "search: one word": lambda: gallery(q=rng.choice(WORDS)),
        "search: two words": lambda: gallery(q=" ".join(rng.sample(WORDS, 2))),
        "folders": lambda: "/api/v2/gallery/folders",
        "tags": lambda: "/api/v2/gallery/tags",
    }


def time_endpoint(connection: http.client.HTTPConnection, next_path, requests: int, warm_up: int = 5) -> dict:
    times = []
    for i in range(warm_up + requests):
        path = next_path()
        started = time.perf_counter()
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
        if i >= warm_up:
            times.append(elapsed)
    times.sort()
    return {"p50_ms": 1000 * statistics.median(times), "p99_ms": 1000 * times[min(len(times) - 1,
                                                                                   int(0.99 * len(times)))],
            "max_ms": 1000 * times[-1], "requests": requests}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=300, help="timed requests per endpoint")
    parser.add_argument("--database-url", help="an empty database; default: SQLite in a temporary folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gallery_bench_") as data_dir:
        settings = Settings(data_dir=Path(data_dir), database_url=args.database_url, _env_file=None)
        started = time.perf_counter()
        ids = fill(settings, args.clips, args.seed)
        fill_s = time.perf_counter() - started
        print(f"filled {args.clips} clips in {fill_s:.1f} s ({settings.resolved_database_url.split(':')[0]})")
        server, thread, port = serve(settings)
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            rows = {name: time_endpoint(connection, next_path, args.requests)
                    for name, next_path in request_paths(random.Random(args.seed + 1), ids).items()}
            connection.close()
        finally:
            server.should_exit = True
            thread.join()
    print(f"{'endpoint':<30} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, row in rows.items():
        flag = "" if row["p99_ms"] < 100 else "  over the 100 ms target"
        print(f"{name:<30} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} {row['max_ms']:>8.1f}{flag}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"database": settings.resolved_database_url.split(":")[0], "clips": args.clips,
                       "fill_seconds": fill_s, "endpoints": rows}, out, indent=2)


if __name__ == "__main__":
    main()
