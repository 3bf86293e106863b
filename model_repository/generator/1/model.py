"""Triton `generator` (decoupled): owns the engine. Every request becomes a job of one continuously batched frame
loop running on its own thread; a stream's first frame is sent as soon as it exists, later ones in chunks of up to
MAX_FRAMES_PER_CHUNK frames while the listener holds enough audio ahead (engine/chunking.py)."""
import json
import secrets
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from engine.batch import BatchEngine
from engine.cancel_board import CancelBoard
from engine.chunking import FrameChunker
from engine.config import EngineSettings
from engine.contract import decode_options, unpad_rows
from engine.errors import Cancelled
from engine.prompt import PromptInputs, embed_prompt
from engine.runtime import load_runtime
from engine.scheduler import Job, SchedulerObserver, StreamScheduler

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonMetrics(SchedulerObserver):
    """The frame loop's figures as Triton metrics (served with Triton's own on the metrics port)."""

    def __init__(self, labels: dict):
        self.families = []  # a MetricFamily must outlive its Metric objects

        def family(name, kind, description, **metric):
            self.families.append(pb_utils.MetricFamily(name=name, description=description, kind=kind))
            return self.families[-1].Metric(labels=labels, **metric)

        gauge, counter, histogram = (pb_utils.MetricFamily.GAUGE, pb_utils.MetricFamily.COUNTER,
                                     pb_utils.MetricFamily.HISTOGRAM)
        self.active = family("vibevoice_active_streams", gauge, "Streams in the frame loop")
        self.queued = family("vibevoice_queued_requests", gauge, "Requests waiting for a stream slot")
        self.frames = family("vibevoice_frames_total", counter, "Speech frames generated (3200 samples each)")
        self.batch = family("vibevoice_batch_size", histogram, "Streams advanced by one step",
                            buckets=[1, 2, 4, 8, 16, 32, 64, 128])
        self.step = family("vibevoice_step_seconds", histogram, "Wall time of one batched step (a frame per stream)",
                           buckets=[0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0])
        self.first = family("vibevoice_first_audio_seconds", histogram, "Request arrival to its first audio frame",
                            buckets=[0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
        self.families.append(pb_utils.MetricFamily(name="vibevoice_loop_phase_seconds", kind=histogram,
                                                   description="Time per loop cycle outside the batched step"))
        self.phases = {name: self.families[-1].Metric(labels={**labels, "phase": name},
                                                      buckets=[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5])
                       for name in ("reap", "admit", "emit")}

    def queue_changed(self, active, queued):
        self.active.set(active)
        self.queued.set(queued)

    def stepped(self, batch_size, seconds, frames):
        self.batch.observe(batch_size)
        self.step.observe(seconds)
        self.frames.increment(frames)

    def first_audio(self, seconds):
        self.first.observe(seconds)

    def phase(self, name, seconds):
        self.phases[name].observe(seconds)

    def loop_failed(self, error):
        pb_utils.Logger.log_error(f"generator: frame loop error: {error!r}")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: int(value["string_value"]) for key, value in config["parameters"].items()}
        compile = bool(parameters.pop("compile"))
        settings = EngineSettings(**parameters)
        gpu = args["model_instance_kind"] == "GPU"
        device = f"cuda:{args['model_instance_device_id']}" if gpu else "cpu"
        self.runtime, _ = load_runtime(Path(args["model_repository"]).parent, device=device, compile=compile)
        metrics = TritonMetrics({"instance": args["model_instance_name"], "runtime": self.runtime.name})
        self.cancelled = CancelBoard()
        engine = BatchEngine(self.runtime, settings)
        started = time.perf_counter()
        # every CUDA graph is captured before the model reports ready: no request waits for a capture
        graphs = engine.warm_up()
        self.scheduler = StreamScheduler(engine, metrics)
        self.scheduler.start()
        pb_utils.Logger.log_info(f"generator: {self.runtime.describe()}, up to {settings.max_streams} streams"
                                 + (f", {graphs} CUDA graphs captured in {time.perf_counter() - started:.1f} s"
                                    if graphs else ""))

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                self.scheduler.submit(self._job(request, sender))
            except Exception as exc:  # inputs preprocess did not produce: only a direct caller can send them
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))), flags=FINAL)
        return None

    def _job(self, request, sender) -> Job:
        def tensor(name):
            return pb_utils.get_input_tensor_by_name(request, name).as_numpy()

        options, raw = decode_options(tensor("OPTIONS").reshape(-1)[0])
        inputs = PromptInputs(tensor("INPUT_IDS").reshape(-1).tolist(),
                              unpad_rows(tensor("PROMPT_LATENTS"), tensor("PROMPT_FRAMES")))
        # Postprocess keeps per-stream state under this id: random, so ids never repeat across restarts.
        stream_id = secrets.randbits(63)
        stream = np.array([stream_id], dtype=np.uint64)
        constant = [pb_utils.Tensor("STREAM_ID", stream), pb_utils.Tensor("RAW", np.array([raw])),
                    pb_utils.Tensor("SEED", np.array([options.seed], dtype=np.int64))]

        chunker = FrameChunker()

        def emit(output):
            audio = chunker.add(output.audio, output.finished)
            if audio is None:  # held for a longer chunk: the listener has enough audio ahead
                return
            sender.send(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("AUDIO", audio), pb_utils.Tensor("FINAL", np.array([output.finished])),
                pb_utils.Tensor("REASON", np.array([(output.reason or "").encode()], dtype=object)), *constant]),
                flags=FINAL if output.finished else 0)
            if output.finished:
                self.cancelled.clear(stream_id)

        def is_cancelled():  # by the client of a direct request, or (through postprocess) of the ensemble
            return sender.is_cancelled() or self.cancelled.is_posted(stream_id)

        def fail(exc):
            self.cancelled.clear(stream_id)
            # A cancelled stream ends with an ordinary last response: an error would leave Triton 2.51 counting
            # the ensemble request in flight for good (its shutdown then waits out the unload timeout).
            response = (pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("AUDIO", np.zeros(0, dtype=np.float32)), pb_utils.Tensor("FINAL", np.array([True])),
                pb_utils.Tensor("REASON", np.array([b"cancelled"], dtype=object)), *constant])
                if isinstance(exc, Cancelled) else pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
            try:
                sender.send(response, flags=FINAL)
            except Exception:  # the client is gone: nobody to tell
                pass

        return Job(prepare=lambda: embed_prompt(self.runtime, inputs, options.seed), options=options, emit=emit,
                   fail=fail, is_cancelled=is_cancelled)

    def finalize(self):
        self.scheduler.stop()
        self.cancelled.remove()
