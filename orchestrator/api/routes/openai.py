"""OpenAI-compatible speech: POST /v1/audio/speech and GET /v1/audio/voices (plus GET /v1/models), so that an
OpenAI client library pointed at this server works unchanged. Errors use OpenAI's error body."""
from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlmodel import select
from starlette.concurrency import run_in_threadpool

from engine.errors import InvalidRequest
from orchestrator.api.deps import PrincipalDep, ServicesDep, SessionDep
from orchestrator.core import metrics
from orchestrator.models.generation import GenerateRequest
from orchestrator.models.voice import Voice
from orchestrator.services import generation
from orchestrator.services.speed import change_speed
from orchestrator.services.triton import TritonFailed, TritonUnavailable

router = APIRouter(prefix="/v1", tags=["openai"])
MODELS = ("vibevoice", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")  # OpenAI's names are accepted as aliases
# OpenAI's response_format -> ours; "aac" has no encoder here and is refused by name.
RESPONSE_FORMATS = {"mp3": "mp3", "opus": "opus", "flac": "flac", "wav": "wav", "pcm": "pcm", "aac": "aac"}


class SpeechRequest(BaseModel):
    model: str
    input: str = Field(min_length=1)
    voice: str | dict
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    instructions: str | None = None  # accepted for compatibility; VibeVoice takes its style from the voice


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict | None = None):
        self.status, self.message, self.param, self.kind, self.headers = status, message, param, kind, headers


def _error_body(message: str, kind: str, param: str | None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def install_openai_errors(app: FastAPI) -> None:
    """Under /v1, errors take OpenAI's shape (the client libraries read error.message)."""

    @app.exception_handler(OpenAIError)
    async def _openai_error(_request: Request, exc: OpenAIError):
        return JSONResponse(_error_body(exc.message, exc.kind, exc.param), status_code=exc.status,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(request: Request, exc: RequestValidationError):
        if not request.url.path.startswith(router.prefix + "/"):
            return await request_validation_exception_handler(request, exc)
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"][1:]) or None
        return JSONResponse(_error_body(f"{param}: {first['msg']}", "invalid_request_error", param), status_code=400)


@router.post("/audio/speech", response_class=Response,
             responses={200: {"content": {"audio/mpeg": {}, "audio/wav": {}, "audio/flac": {}, "audio/ogg": {},
                                          "audio/pcm": {}}}})
async def speech(body: SpeechRequest, services: ServicesDep, session: SessionDep, principal: PrincipalDep):
    if body.model not in MODELS:
        raise OpenAIError(404, f"model {body.model!r} does not exist here; use one of {', '.join(MODELS)}", "model")
    voice_key = body.voice.get("id", "") if isinstance(body.voice, dict) else body.voice
    if generation.find_voice(session, voice_key) is None:
        names = ", ".join(session.exec(select(Voice.name).order_by(Voice.name).limit(20)).all()) or "none yet"
        raise OpenAIError(400, f"voice {voice_key!r} does not exist; create it with POST /api/v2/voices (voices "
                               f"here: {names})", "voice")
    request = GenerateRequest(script=body.input, voices={0: voice_key}, format=RESPONSE_FORMATS[body.response_format])
    try:
        if len(generation.check_request(request, services.settings)[0].speakers) != 1:
            raise InvalidRequest("input labels several speakers; /v1/audio/speech speaks in one voice (use "
                                 "/api/v2/generate for dialogue)")
        plan = await generation.plan(session, request, services.settings, services.triton, services.store, "openai")
        started = time.perf_counter()
        with metrics.ACTIVE_STREAMS.track_inprogress():
            parts = [s async for s, _, _ in generation.stream_audio(plan, services.settings, services.triton)]
        audio = change_speed(generation.joined(parts), body.speed)
        clip = await run_in_threadpool(generation.save_clip, services.engine, services.store, plan, audio,
                                       time.perf_counter() - started, "")
    except InvalidRequest as exc:
        raise OpenAIError(400, str(exc), "input") from None
    except TritonUnavailable as exc:
        raise OpenAIError(503, str(exc), kind="server_error",
                          headers={"Retry-After": str(services.settings.retry_after_s)}) from None
    except TritonFailed as exc:
        raise OpenAIError(502, str(exc), kind="server_error") from None
    metrics.GENERATIONS.labels("openai", "done").inc()
    return Response(services.store.read(clip.file_sha256), media_type=plan.fmt.media_type,
                    headers={"X-Clip-Id": clip.id})


@router.get("/audio/voices")
def voices(session: SessionDep, principal: PrincipalDep):
    rows = session.exec(select(Voice).order_by(Voice.name)).all()
    return {"object": "list", "voices": [{"id": v.id, "name": v.name, "description": v.description} for v in rows]}


@router.get("/models")
def models(principal: PrincipalDep):
    return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "djz-vibevoice"}
                                       for m in MODELS]}
