"""Route dependencies: the services of the running app, a database session, and the caller (principal)."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.requests import HTTPConnection

from orchestrator.core.config import Settings
from orchestrator.core.db import sessions
from orchestrator.services.storage import AudioStore
from orchestrator.services.triton import TritonClient

if TYPE_CHECKING:  # jobs.py depends on this module
    from orchestrator.services.jobs import JobRunner


@dataclass
class Services:
    """What the app holds for its lifetime; built in orchestrator.main's lifespan."""

    settings: Settings
    engine: Engine
    store: AudioStore
    triton: TritonClient
    jobs: JobRunner | None = None  # the batch job runner, once started


@dataclass(frozen=True)
class Principal:
    """Who is calling. Local anonymous use is let through today; the security issue fills this from API keys."""

    id: str = "local"
    anonymous: bool = True


def get_services(connection: HTTPConnection) -> Services:
    return connection.app.state.services


def get_session(services: Annotated[Services, Depends(get_services)]) -> Iterator[Session]:
    yield from sessions(services.engine)


def get_principal() -> Principal:
    return Principal()


ServicesDep = Annotated[Services, Depends(get_services)]
SessionDep = Annotated[Session, Depends(get_session)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
