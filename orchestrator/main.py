"""The orchestrator's FastAPI app: `create_app(settings)`; served by `djz serve` (or `uvicorn orchestrator.main:app`
with the settings from the environment)."""
from __future__ import annotations

import gc
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from sqlmodel import Session, select

from orchestrator.api.deps import Services
from orchestrator.api.routes import batch, gallery, generate, openai, ops, playlists, stream, voices
from orchestrator.core.config import Settings
from orchestrator.core.db import make_engine, migrate
from orchestrator.core.errors import install_error_handlers
from orchestrator.core.metrics import MetricsMiddleware
from orchestrator.models.clip import Clip
from orchestrator.models.voice import Voice
from orchestrator.services.jobs import JobRunner
from orchestrator.services.storage import AudioStore
from orchestrator.services.voices import add_starter_voices
from orchestrator.services.triton import TritonClient

SWEEP_GRACE_S = 3600.0  # a file younger than this may belong to a request that is about to commit


def referenced_files(engine) -> set[str]:
    with Session(engine) as session:
        return set(session.exec(select(Clip.file_sha256)).all()) | set(session.exec(select(Voice.audio_sha256)).all())


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.resolved_database_url)
        migrate(engine)
        store = AudioStore(settings.audio_dir)
        store.sweep(referenced_files(engine), SWEEP_GRACE_S)
        if settings.starter_voices_dir is not None:
            with Session(engine) as session:
                add_starter_voices(session, store, settings.starter_voices_dir, settings)
        services = Services(settings, engine, store, TritonClient(settings.triton_grpc_url, settings.triton_timeout_s))
        app.state.services = services
        services.jobs = JobRunner(services)
        services.jobs.start()
        gc.freeze()  # what start-up made lives as long as the app: keep it out of every later full collection
        try:
            yield
        finally:
            await services.jobs.stop()
            await services.triton.close()
            engine.dispose()

    app = FastAPI(title="DJZ-VibeVoice", version="1.2.0", lifespan=lifespan,
                  description="Long-form, multi-speaker text to speech with VibeVoice, served by Triton.")
    app.add_middleware(MetricsMiddleware)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["X-Clip-Id", "X-Seed", "Retry-After"])
    install_error_handlers(app, settings.retry_after_s)
    openai.install_openai_errors(app)
    for module in (ops, voices, generate, stream, openai, gallery, playlists, batch):
        app.include_router(module.router)
    return app


def app() -> FastAPI:
    """For `uvicorn --factory orchestrator.main:app`: settings from the environment."""
    return create_app()
