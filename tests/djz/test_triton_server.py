"""A real Triton server on a toy repository: readiness, inference, metrics, clean stops, clear errors, `djz serve`."""
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from djz.triton_server import TritonServer, find_tritonserver
from engine.errors import EngineError

DOUBLE_CONFIG = """
name: "double"
backend: "python"
max_batch_size: 0
input [ { name: "INPUT", data_type: TYPE_FP32, dims: [ -1 ] } ]
output [ { name: "OUTPUT", data_type: TYPE_FP32, dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
"""

DOUBLE_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", x * 2)]))
        return responses
"""


def write_model(repository: Path, name: str, config: str, model: str) -> None:
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(config.replace('"double"', f'"{name}"'))
    (repository / name / "1" / "model.py").write_text(model)


@pytest.fixture(scope="module")
def toy_repository(tmp_path_factory):
    """One Python-backend model, `double`: FP32 [-1] in, twice that out."""
    repository = tmp_path_factory.mktemp("triton") / "repository"
    write_model(repository, "double", DOUBLE_CONFIG, DOUBLE_MODEL)
    return repository


@pytest.fixture(scope="module")
def server(toy_repository):
    with TritonServer().start(toy_repository, http_port=0, grpc_port=0, metrics_port=0,
                              log_path=toy_repository.parent / "server.log") as server:
        yield server


def process_group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_server_binary_comes_with_a_stub_for_this_python():
    install = find_tritonserver()
    assert install.binary.is_file()
    assert (install.backend_dir / "python" / "triton_python_backend_stub").is_file()
    assert install.environment({"PATH": "/usr/bin"})["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


def test_started_server_is_ready_and_lists_its_models(server):
    with urllib.request.urlopen(f"{server.http_url}/v2/health/ready", timeout=5) as response:
        assert response.status == 200
    assert server.ready_models() == [("double", "1")]
    assert server.returncode is None and server.pid is not None


def test_python_model_answers_an_http_inference(server):
    client = httpclient.InferenceServerClient(f"{server.host}:{server.http_port}")
    x = np.array([1.5, -2.0, 0.25], dtype=np.float32)
    request = httpclient.InferInput("INPUT", list(x.shape), "FP32")
    request.set_data_from_numpy(x)
    result = client.infer("double", [request], outputs=[httpclient.InferRequestedOutput("OUTPUT")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT"), x * 2)


def test_metrics_endpoint_counts_inferences(server):
    test_python_model_answers_an_http_inference(server)
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
        text = response.read().decode()
    counts = re.findall(r'^nv_inference_request_success\{model="double",version="1"\} (\d+)', text, re.M)
    assert counts and int(counts[0]) >= 1


def test_server_log_is_captured_to_a_file(server):
    assert server.log_path.is_file()
    assert "successfully loaded 'double'" in server.log_path.read_text()


def test_stop_ends_the_server_and_its_stub_processes(toy_repository, tmp_path):
    server = TritonServer().start(toy_repository, http_port=0, grpc_port=0, metrics_port=0,
                                  log_path=tmp_path / "server.log")
    pid = server.pid
    assert process_group_exists(pid)
    assert server.stop() == 0
    assert not process_group_exists(pid)
    assert server.stop() == 0  # stopping twice is harmless


def test_a_port_in_use_is_named_in_the_error(toy_repository):
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(EngineError, match=f"gRPC port {port} is already in use"):
            TritonServer().start(toy_repository, http_port=0, grpc_port=port, metrics_port=0)


def test_a_model_that_fails_to_load_fails_the_start_with_the_log(tmp_path):
    write_model(tmp_path / "repository", "broken", DOUBLE_CONFIG, "raise ImportError('no such engine here')\n")
    server = TritonServer()
    with pytest.raises(EngineError, match="(?s)exited with status .*no such engine here"):
        server.start(tmp_path / "repository", http_port=0, grpc_port=0, metrics_port=0,
                     log_path=tmp_path / "server.log")
    assert not process_group_exists(server.pid)


def read_lines_until(process: subprocess.Popen, marker: str, timeout: float) -> list[str]:
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    seen, deadline = [], time.monotonic() + timeout
    while not seen or marker not in seen[-1]:
        try:
            seen.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
        except queue.Empty:
            process.kill()
            pytest.fail(f"no {marker!r} within {timeout} s; output so far:\n{''.join(seen)}")
    return seen


def test_djz_serve_prints_where_it_listens_and_exits_0_on_ctrl_c(toy_repository):
    process = subprocess.Popen(
        [sys.executable, "-m", "djz", "serve", "--model-repository", str(toy_repository), "--triton-only",
         "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output = "".join(read_lines_until(process, "Ctrl-C stops it", timeout=60))
        http_url = re.search(r"HTTP\s+(http://\S+)", output).group(1)
        assert re.search(r"gRPC\s+\S+:\d+", output) and re.search(r"metrics\s+http://\S+/metrics", output)
        assert re.search(r"models\s+double \(1\)", output)
        assert Path(re.search(r"log\s+(\S+)", output).group(1)).is_file()
        with urllib.request.urlopen(f"{http_url}/v2/health/ready", timeout=5) as response:
            assert response.status == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{http_url}/v2/health/ready", timeout=5)
