"""`djz serve`: Triton and the orchestrator together, ready for requests, both stopped by one Ctrl-C."""
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from djz.triton_server import free_port


def read_until(process, marker: str, timeout: float) -> str:
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        lines.append(line)
        if marker in line:
            return "".join(lines)
    raise AssertionError(f"{marker!r} never came; output:\n{''.join(lines)}")


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, json.loads(response.read())


def test_djz_serve_runs_both_and_stops_both_on_ctrl_c(tiny_repository, tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "djz", "serve", "--model-repository", str(tiny_repository[0]), "--http-port", "0",
         "--grpc-port", "0", "--metrics-port", "0", "--port", str(port), "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output = read_until(process, "Ctrl-C stops both", timeout=180)
        grpc_url = re.search(r"gRPC\s+(\S+:\d+)", output).group(1)
        assert f"http://127.0.0.1:{port}" in output
        deadline = time.monotonic() + 60
        while True:
            try:
                status, body = get(f"http://127.0.0.1:{port}/readyz")
                break
            except OSError:
                assert time.monotonic() < deadline, "the orchestrator never answered"
                time.sleep(0.2)
        assert status == 200 and body["checks"] == {"database": True, "triton": True}
        assert (tmp_path / "data" / "djz.db").is_file()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    for address in (f"127.0.0.1:{port}", grpc_url):  # nothing listens any more: orchestrator and Triton are gone
        host, listened = address.rsplit(":", 1)
        with pytest.raises(OSError):
            socket.create_connection((host, int(listened)), timeout=5).close()
