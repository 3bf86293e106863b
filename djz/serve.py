"""`djz serve`: Triton on a model repository and the orchestrator in front of it (or Triton alone), say where
everything listens, and stop both cleanly on Ctrl-C."""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from engine.errors import EngineError

DEFAULT_REPOSITORY = ".demo/repository"


def add_parser(commands) -> None:
    p = commands.add_parser("serve", help="serve a model repository with Triton and the orchestrator (API v2, "
                                          "OpenAI-compatible speech, gallery)")
    p.add_argument("--model-repository", default=DEFAULT_REPOSITORY,
                   help=f"Triton model repository (default {DEFAULT_REPOSITORY}, written by `make demo`)")
    p.add_argument("--http-port", type=int, default=8000, help="Triton's HTTP port; 0 picks a free port")
    p.add_argument("--grpc-port", type=int, default=8001, help="Triton's gRPC port; 0 picks a free port")
    p.add_argument("--metrics-port", type=int, default=8002, help="Triton's metrics port; 0 picks a free port")
    p.add_argument("--triton-only", action="store_true", help="serve Triton without the orchestrator")
    p.add_argument("--host", default="127.0.0.1", help="the orchestrator's address (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8080, help="the orchestrator's port")
    p.add_argument("--data-dir", help="the orchestrator's data folder (default: DJZ_DATA_DIR, else ./data)")
    p.add_argument("--log-verbose", type=int, default=0, metavar="N", help="Triton's log verbosity")
    p.set_defaults(run=run)


class _Stop(Exception):
    """Ctrl-C or SIGTERM, turned into an exception so that the servers are stopped in order. SIGINT gets this
    handler too because a shell starts background jobs with SIGINT ignored."""


def _raise_stop(signum, frame):
    raise _Stop()


def run(args) -> None:
    from djz.triton_server import TritonServer

    if not Path(args.model_repository).is_dir():
        raise EngineError(f"--model-repository {args.model_repository}: no such folder; build one with `make demo` "
                          f"or point to a Triton model repository")
    server = TritonServer()
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in previous:
        signal.signal(signum, _raise_stop)
    try:
        server.start(args.model_repository, http_port=args.http_port, grpc_port=args.grpc_port,
                     metrics_port=args.metrics_port, log_verbose=args.log_verbose)
        models = ", ".join(f"{name} ({version})" if version else name for name, version in server.ready_models())
        print(f"Triton ready ({server.install.source}: {server.install.binary})\n"
              f"  HTTP     {server.http_url}\n"
              f"  gRPC     {server.grpc_url}\n"
              f"  metrics  {server.metrics_url}\n"
              f"  models   {models or 'none'}\n"
              f"  log      {server.log_path}", flush=True)
        if args.triton_only:
            print("Ctrl-C stops it.", flush=True)
            code = server.wait()
        else:
            code = _serve_orchestrator(args, server)
        if code is not None:
            print(server.log_tail(), file=sys.stderr)
            raise EngineError(f"tritonserver exited with status {code}; its log: {server.log_path}")
    except _Stop:
        print("stopping", flush=True)
    finally:
        for signum in previous:  # a second Ctrl-C must not leave the server orphaned half-way through stopping
            signal.signal(signum, signal.SIG_IGN)
        server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _serve_orchestrator(args, triton) -> int | None:
    """Run the orchestrator in this thread until Ctrl-C (uvicorn hands the signal back as _Stop once it has shut
    down) or until Triton exits (its status is returned)."""
    import uvicorn

    from orchestrator.core.config import Settings
    from orchestrator.main import create_app

    overrides = {"triton_grpc_url": triton.grpc_url}
    if args.data_dir:
        overrides["data_dir"] = Path(args.data_dir)
    settings = Settings(**overrides)
    app = create_app(settings)
    orchestrator = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="info"))
    exit_code: list[int] = []

    def watch_triton():
        code = triton.wait()
        exit_code.append(code)
        orchestrator.should_exit = True

    threading.Thread(target=watch_triton, daemon=True, name="triton-watch").start()
    print(f"Orchestrator on http://{args.host}:{args.port} (API docs /docs, data {settings.data_dir.resolve()}, "
          f"database {settings.resolved_database_url.split('@')[-1]})\nCtrl-C stops both.", flush=True)
    orchestrator.run()
    if exit_code:
        return exit_code[0]
    if not orchestrator.started:
        raise EngineError(f"the orchestrator did not start on {args.host}:{args.port} (see the log above)")
    return None
