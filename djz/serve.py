"""`djz serve`: run Triton on a model repository, say where everything listens, and stop cleanly on Ctrl-C."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

from engine.errors import EngineError

DEFAULT_REPOSITORY = ".demo/repository"


def add_parser(commands) -> None:
    p = commands.add_parser("serve", help="serve a model repository with Triton (the orchestrator is to come)")
    p.add_argument("--model-repository", default=DEFAULT_REPOSITORY,
                   help=f"Triton model repository (default {DEFAULT_REPOSITORY}, written by `make demo`)")
    p.add_argument("--http-port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--grpc-port", type=int, default=8001, help="0 picks a free port")
    p.add_argument("--metrics-port", type=int, default=8002, help="0 picks a free port")
    p.add_argument("--triton-only", action="store_true", help="serve Triton without the orchestrator")
    p.add_argument("--log-verbose", type=int, default=0, metavar="N", help="Triton's log verbosity")
    p.set_defaults(run=run)


class _Stop(Exception):
    """Ctrl-C or SIGTERM, turned into an exception so that the server is stopped in order. SIGINT gets this
    handler too because a shell starts background jobs with SIGINT ignored."""


def _raise_stop(signum, frame):
    raise _Stop()


def run(args) -> None:
    from djz.triton_server import TritonServer

    if not Path(args.model_repository).is_dir():
        raise EngineError(f"--model-repository {args.model_repository}: no such folder; build one with `make demo` "
                          f"or point to a Triton model repository")
    if not args.triton_only:
        print("note: the orchestrator is not part of this build yet; serving Triton only")
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
              f"  log      {server.log_path}\n"
              f"Ctrl-C stops it.", flush=True)
        code = server.wait()
        print(server.log_tail(), file=sys.stderr)
        raise EngineError(f"tritonserver exited with status {code}; its log: {server.log_path}")
    except _Stop:
        print("stopping Triton", flush=True)
    finally:
        for signum in previous:  # a second Ctrl-C must not leave the server orphaned half-way through stopping
            signal.signal(signum, signal.SIG_IGN)
        server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
