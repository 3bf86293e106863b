"""POST /api/v2/generate: a script in one to four voices -> a clip in the gallery, or its audio streamed as made."""
from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from engine.errors import InvalidRequest
from orchestrator.api.deps import PrincipalDep, ServicesDep, SessionDep
from orchestrator.core import metrics
from orchestrator.models.clip import ClipPublic
from orchestrator.models.generation import GenerateRequest
from orchestrator.services import codecs, generation

router = APIRouter(prefix="/api/v2", tags=["generation"])
STREAM_FORMATS = ("wav", "pcm")


@router.post("/generate", status_code=201, response_model=ClipPublic,
             responses={200: {"content": {"audio/wav": {}, "audio/pcm": {}},
                              "description": "with stream=true: the audio as it is made; X-Clip-Id names the clip "
                                             "that the gallery holds once the stream ends"}})
async def generate(request: GenerateRequest, services: ServicesDep, session: SessionDep, principal: PrincipalDep):
    source = "stream" if request.stream else "api"
    if request.stream and request.format not in STREAM_FORMATS:
        raise InvalidRequest(f"format {request.format!r} cannot be streamed; stream 'wav' or 'pcm', or set "
                             "stream=false and download the finished clip in any format")
    plan = await generation.plan(session, request, services.settings, services.triton, services.store, source)
    if not request.stream:
        with metrics.ACTIVE_STREAMS.track_inprogress():
            clip = await generation.generate_clip(services.engine, plan, services.settings, services.triton,
                                                  services.store)
        metrics.GENERATIONS.labels(source, "done").inc()
        return ClipPublic.of(clip)
    return StreamingResponse(_stream(plan, services), media_type=plan.fmt.media_type,
                             headers={"X-Clip-Id": plan.clip_id, "X-Seed": str(plan.seed),
                                      "X-Sample-Rate": "24000"}, status_code=200)


async def _stream(plan, services):
    """The audio's bytes as they are made; the clip is stored only when the stream reaches its end."""
    if plan.fmt.name == "wav":
        yield codecs.streaming_wav_header()
    parts, started, reason, first = [], time.perf_counter(), "", True
    outcome = "cancelled"
    metrics.ACTIVE_STREAMS.inc()
    try:
        async for samples, _, reason in generation.stream_audio(plan, services.settings, services.triton):
            parts.append(samples)
            if samples.size:
                if first:
                    metrics.FIRST_AUDIO.observe(time.perf_counter() - started)
                    first = False
                yield codecs.pcm16(samples).astype("<i2").tobytes()
        audio = generation.joined(parts)
        await run_in_threadpool(generation.save_clip, services.engine, services.store, plan, audio,
                                time.perf_counter() - started, reason)
        outcome = "done"
    except Exception:
        outcome = "failed"
        raise
    finally:
        metrics.ACTIVE_STREAMS.dec()
        metrics.GENERATIONS.labels(plan.source, outcome).inc()

