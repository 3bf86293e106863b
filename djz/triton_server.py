"""Run a real NVIDIA Triton Inference Server on a model repository: find the binary, start it, wait, stop it."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from engine.errors import EngineError, RuntimeUnavailable

SYSTEM_ROOT = Path("/opt/tritonserver")  # where NVIDIA's containers install Triton
LOCALHOST = "127.0.0.1"  # Triton listens on 0.0.0.0 (IPv4); "localhost" may resolve to ::1 first


@dataclass(frozen=True)
class TritonInstall:
    """One tritonserver binary with the backend directory and shared libraries it runs with."""

    binary: Path
    backend_dir: Path
    library_dirs: tuple[Path, ...]
    cache_dir: Path | None  # response-cache implementations (`caches/local`); None: the binary's default
    source: str  # "system" or "nvidia-pytriton wheel"

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment to run the server in: this interpreter first on PATH (Python-backend stubs run the
        first `python3` there) and the install's libraries plus this interpreter's libpython on LD_LIBRARY_PATH
        (pyenv Pythons need it, or a stub silently binds the system's libpython of the same version)."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]).rstrip(os.pathsep)
        libdirs = [str(d) for d in self.library_dirs]
        python_libdir = sysconfig.get_config_var("LIBDIR")
        if python_libdir:
            libdirs.append(python_libdir)
        if env.get("LD_LIBRARY_PATH"):
            libdirs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libdirs)
        return env


def find_tritonserver(cache_root: Path | None = None) -> TritonInstall:
    """A system tritonserver when there is one (on PATH, or NVIDIA's /opt/tritonserver), else the one bundled in
    the `nvidia-pytriton` wheel, with a private backend directory that holds the stub for this Python."""
    on_path = shutil.which("tritonserver")
    if on_path:
        return _system_install(Path(on_path))
    if (SYSTEM_ROOT / "bin" / "tritonserver").is_file():
        return _system_install(SYSTEM_ROOT / "bin" / "tritonserver")
    spec = importlib.util.find_spec("pytriton")
    package_dir = Path(spec.origin).parent if spec is not None and spec.origin else None
    if package_dir is None or not (package_dir / "tritonserver" / "bin" / "tritonserver").is_file():
        raise RuntimeUnavailable(
            "no tritonserver found: none on PATH, none in /opt/tritonserver, and the nvidia-pytriton wheel is not "
            "installed; `pip install nvidia-pytriton==0.7.0` (bundles Triton 2.51 with the Python backend) or run "
            "in NVIDIA's tritonserver container")
    return _wheel_install(package_dir, cache_root or _default_cache_root())


def _system_install(binary: Path) -> TritonInstall:
    root = binary.resolve().parent.parent
    backend_dir = root / "backends" if (root / "backends").is_dir() else SYSTEM_ROOT / "backends"
    library_dirs = tuple(d for d in (root / "lib",) if d.is_dir())
    return TritonInstall(binary, backend_dir, library_dirs, None, "system")


def _default_cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "djz" / "triton-backends"


def _wheel_install(package_dir: Path, cache_root: Path) -> TritonInstall:
    """The wheel's server. Its Python backend only looks for `<backend-dir>/python/triton_python_backend_stub`,
    and the wheel ships one stub per CPython version elsewhere, so a private backend directory is built once
    (keyed by the wheel and this Python) with links to the backend and a copy of the right stub."""
    server_dir = package_dir / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server_dir / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        available = sorted(p.name for p in (server_dir / "python_backend_stubs").glob("*") if p.is_dir())
        raise RuntimeUnavailable(f"the nvidia-pytriton wheel in {package_dir} has no Python-backend stub for "
                                 f"Python {version} (it has {', '.join(available) or 'none'}); use one of those")
    python_backend = server_dir / "backends" / "python"
    stat = stub.stat()
    key = hashlib.sha256(f"{server_dir.resolve()}|{version}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    backend_dir = cache_root / key[:16]
    if not (backend_dir / "python" / "triton_python_backend_stub").is_file():
        _build_backend_dir(backend_dir, python_backend, stub)
    # The wheel's binaries find their libraries through RPATH $ORIGIN/..; the copied stub and the linked backend
    # are elsewhere now, so the library folder goes on LD_LIBRARY_PATH.
    libs = package_dir.parent / "nvidia_pytriton.libs"
    return TritonInstall(server_dir / "bin" / "tritonserver", backend_dir, tuple(d for d in (libs,) if d.is_dir()),
                         server_dir / "caches", "nvidia-pytriton wheel")


def _build_backend_dir(backend_dir: Path, python_backend: Path, stub: Path) -> None:
    """Build in a temporary sibling and rename into place, so concurrent starts never see half a folder."""
    backend_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=backend_dir.name + ".", dir=backend_dir.parent))
    (staging / "python").mkdir()
    for item in python_backend.iterdir():
        if item.name != "__pycache__":
            (staging / "python" / item.name).symlink_to(item.resolve())
    shutil.copy2(stub, staging / "python" / "triton_python_backend_stub")
    try:
        staging.rename(backend_dir)
    except OSError:  # another process built it first
        shutil.rmtree(staging, ignore_errors=True)


def free_port() -> int:
    """A TCP port that nothing listens on right now."""
    return _free_ports(1)[0]


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _check_port_free(port: int, role: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers do not count as in use
        try:
            s.bind(("", port))
        except OSError as exc:
            raise EngineError(f"{role} port {port} is already in use ({exc.strerror}); stop what listens there or "
                              f"choose another port") from exc


def _has_gpu() -> bool:
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


class TritonServer:
    """One tritonserver process: start(), wait until ready, stop(). Also a context manager that stops on exit.

    Model load errors fail loudly by default: the server exits and start() raises with the log's tail;
    `exit_on_error=False` keeps it up with the models that did load."""

    def __init__(self, install: TritonInstall | None = None):
        self.install = install or find_tritonserver()
        self.host = LOCALHOST
        self.http_port = self.grpc_port = self.metrics_port = 0
        self.log_path: Path | None = None
        self._process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """host:port, as gRPC clients (tritonclient.grpc) take it."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def returncode(self) -> int | None:
        """None while the server runs (or was never started); its exit status after."""
        return self._process.poll() if self._process else None

    def start(self, model_repository: str | Path, http_port: int = 8000, grpc_port: int = 8001,
              metrics_port: int = 8002, log_verbose: int = 0, extra_args: tuple[str, ...] = (),
              exit_on_error: bool = True, log_path: str | Path | None = None,
              ready_timeout: float = 300.0) -> "TritonServer":
        """Launch tritonserver on the repository and return once /v2/health/ready answers 200. A port of 0 picks
        a free one. Raises EngineError naming the port in use, or with the log's tail when the server exits or
        is not ready within `ready_timeout` seconds."""
        if self.returncode is None and self._process is not None:
            raise EngineError(f"this TritonServer is already running (pid {self._process.pid})")
        repository = Path(model_repository).resolve()
        if not repository.is_dir():
            raise EngineError(f"model repository {model_repository} is not a folder")
        ports = {"HTTP": http_port, "gRPC": grpc_port, "metrics": metrics_port}
        for role, port in ports.items():
            if port:
                _check_port_free(port, role)
        spare = iter(p for p in _free_ports(6) if p not in ports.values())
        self.http_port, self.grpc_port, self.metrics_port = (port or next(spare) for port in ports.values())

        args = [str(self.install.binary), f"--model-repository={repository}",
                f"--backend-directory={self.install.backend_dir}",
                f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}", f"--metrics-port={self.metrics_port}",
                f"--exit-on-error={str(exit_on_error).lower()}",
                # Configs in the repository are complete; auto-complete would start one extra stub per Python model.
                "--disable-auto-complete-config",
                "--metrics-config=summary_latencies=true", f"--log-verbose={log_verbose}"]
        if self.install.cache_dir is not None:
            args.append(f"--cache-directory={self.install.cache_dir}")
        if not _has_gpu():
            args += ["--pinned-memory-pool-byte-size=0", "--allow-gpu-metrics=false"]
        args += list(extra_args)

        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix=f"tritonserver-{self.http_port}-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            # A session of its own: a terminal's Ctrl-C reaches the caller, which stops the server in order, and
            # the server's stub processes share its process group so stop() can make sure none is left.
            self._process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             env=self.install.environment(), start_new_session=True)
        try:
            self._wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            code = self._process.poll()
            if code is not None:
                raise EngineError(f"tritonserver exited with status {code} before it was ready; the end of its "
                                  f"log ({self.log_path}):\n{self.log_tail()}")
            if self._is_ready():
                return
            if time.monotonic() > deadline:
                raise EngineError(f"tritonserver was not ready after {timeout:.0f} s; the end of its log "
                                  f"({self.log_path}):\n{self.log_tail()}")
            time.sleep(0.1)

    def _is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def ready_models(self) -> list[tuple[str, str]]:
        """(name, version) of every model the server reports READY, from /v2/repository/index."""
        request = urllib.request.Request(f"{self.http_url}/v2/repository/index", data=b"{}", method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            index = json.load(response)
        return [(m["name"], m.get("version", "")) for m in index if m.get("state") == "READY"]

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the server exits (its status) or `timeout` seconds pass (None)."""
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 64 * 1024))
            text = log.read().decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 30.0) -> int | None:
        """Ask the server to finish (SIGINT: in-flight requests complete, models unload), kill it after `grace`
        seconds, and kill whatever of its process group is left (Python-backend stubs). Returns its exit status."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return process.returncode

    def __enter__(self) -> "TritonServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
