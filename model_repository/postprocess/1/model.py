"""Triton `postprocess`: finishes each stream's audio frame by frame (engine.postprocess: CuPy kernels on a GPU,
NumPy on CPU; a response of several frames is split), keeping every stream's state between its chunks; RAW requests
pass through untouched."""
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from engine.cancel_board import CancelBoard
from engine.config import HOP_SAMPLES
from engine.postprocess import StreamPostprocessor

# A stream that sends nothing for this long was cancelled upstream: its state is dropped.
IDLE_SECONDS = 300.0


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.backend = config["parameters"]["backend"]["string_value"]
        self.streams: dict[int, tuple[StreamPostprocessor, float]] = {}
        self.cancelled = CancelBoard()
        probe = StreamPostprocessor(backend=self.backend)
        pb_utils.Logger.log_info(f"postprocess: {probe.backend} backend")

    def execute(self, requests):
        now = time.monotonic()
        for stream_id in [s for s, (_, seen) in self.streams.items() if now - seen > IDLE_SECONDS]:
            del self.streams[stream_id]
        self.cancelled.sweep()
        return [self._finish(request, now) for request in requests]

    def _finish(self, request, now):
        # one pass over the inputs: pb_utils.get_input_tensor_by_name lists them all again for every name
        tensors = {tensor.name(): tensor for tensor in request.inputs()}

        def tensor(name):
            return tensors[name].as_numpy()

        audio, stream_id = tensor("AUDIO"), int(tensor("STREAM_ID")[0])
        if request.is_cancelled():  # the client cancelled the ensemble: tell the generator to stop this stream
            self.streams.pop(stream_id, None)
            self.cancelled.post(stream_id)
            # An empty answer rather than an error: Triton 2.51 counts an ensemble whose step failed as in flight
            # for good, while the generator's final response ends it cleanly.
            audio = np.zeros(0, dtype=np.float32)
        elif not tensor("RAW")[0]:
            processor, _ = self.streams.get(stream_id) or (StreamPostprocessor(backend=self.backend), now)
            # a chunk of several frames is finished frame by frame: the same samples as one request per frame
            pieces = np.split(audio, range(HOP_SAMPLES, len(audio), HOP_SAMPLES))
            audio = np.concatenate([processor.process(piece) for piece in pieces])
            self.streams[stream_id] = (processor, now)
        if tensor("FINAL")[0]:
            self.streams.pop(stream_id, None)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("PROCESSED_AUDIO", np.ascontiguousarray(audio, dtype=np.float32)),
            pb_utils.Tensor("USED_SEED", tensor("SEED")), pb_utils.Tensor("FINISH_REASON", tensor("REASON"))])
