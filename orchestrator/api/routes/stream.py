"""/ws/v2/stream: one generation over a WebSocket. The client sends one JSON GenerateRequest; the server answers
with JSON events (started, progress, done, error) and the audio as binary PCM16 chunks (24 kHz mono, little-endian)
in between. A {"action": "cancel"} message, or closing the socket, stops the generation and stores nothing."""
from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from engine.errors import InvalidRequest
from orchestrator.api.deps import PrincipalDep, ServicesDep
from orchestrator.core import metrics
from orchestrator.models.clip import ClipPublic
from orchestrator.models.generation import GenerateRequest
from orchestrator.services import codecs, generation
from orchestrator.services.triton import TritonFailed, TritonUnavailable

router = APIRouter(tags=["generation"])
PROGRESS_EVERY_S = 0.25


@router.websocket("/ws/v2/stream")
async def stream(websocket: WebSocket, services: ServicesDep, principal: PrincipalDep):
    await websocket.accept()
    try:
        message = await websocket.receive_json()
        request = GenerateRequest.model_validate({**message, "format": "pcm", "stream": True})
        with Session(services.engine, expire_on_commit=False) as session:
            plan = await generation.plan(session, request, services.settings, services.triton, services.store,
                                         "websocket")
            await websocket.send_json({"event": "started", "clip_id": plan.clip_id, "seed": plan.seed,
                                       "sample_rate": 24000, "encoding": "pcm_s16le", "pieces": len(plan.pieces)})
        clip = await _run(websocket, plan, services)
        if clip is not None:
            await websocket.send_json({"event": "done", "clip": ClipPublic.of(clip).model_dump(mode="json")})
            await websocket.close()
    except WebSocketDisconnect:
        return
    except (ValidationError, ValueError) as exc:
        await _fail(websocket, 422, str(exc))
    except InvalidRequest as exc:
        await _fail(websocket, 422, str(exc))
    except TritonUnavailable as exc:
        await _fail(websocket, 503, str(exc), retry_after_s=services.settings.retry_after_s)
    except TritonFailed as exc:
        await _fail(websocket, 502, str(exc))


async def _run(websocket: WebSocket, plan, services):
    """Send the audio as it comes while listening for a cancel; the clip, or None when cancelled."""
    cancelled = asyncio.create_task(_wait_for_cancel(websocket))
    parts, started, reason, last_progress = [], time.perf_counter(), "", 0.0
    metrics.ACTIVE_STREAMS.inc()
    try:
        async for samples, progress, reason in generation.stream_audio(plan, services.settings, services.triton):
            if cancelled.done():
                break
            parts.append(samples)
            if samples.size:
                await websocket.send_bytes(codecs.pcm16(samples).astype("<i2").tobytes())
            if time.perf_counter() - last_progress >= PROGRESS_EVERY_S:
                last_progress = time.perf_counter()
                await websocket.send_json({"event": "progress", "frames": progress.frames,
                                           "audio_seconds": round(progress.audio_seconds, 3),
                                           "rtf": round(progress.rtf, 4)})
        else:
            clip = await run_in_threadpool(generation.save_clip, services.engine, services.store, plan,
                                           generation.joined(parts), time.perf_counter() - started, reason)
            metrics.GENERATIONS.labels("websocket", "done").inc()
            return clip
        metrics.GENERATIONS.labels("websocket", "cancelled").inc()
        if cancelled.result() == "cancel":
            await websocket.send_json({"event": "cancelled"})
            await websocket.close()
        return None
    finally:
        metrics.ACTIVE_STREAMS.dec()
        cancelled.cancel()


async def _wait_for_cancel(websocket: WebSocket) -> str:
    """'cancel' when the client asks, 'closed' when it goes away."""
    while True:
        try:
            message = await websocket.receive_json()
        except (WebSocketDisconnect, RuntimeError):
            return "closed"
        except ValueError:  # not JSON: nothing the server acts on mid-stream
            continue
        if isinstance(message, dict) and message.get("action") == "cancel":
            return "cancel"


async def _fail(websocket: WebSocket, status: int, detail: str, retry_after_s: int | None = None) -> None:
    event = {"event": "error", "status": status, "detail": detail}
    if retry_after_s is not None:
        event["retry_after_s"] = retry_after_s
    try:
        await websocket.send_json(event)
        await websocket.close(code=1011 if status >= 500 else 1008)
    except (WebSocketDisconnect, RuntimeError):
        pass
