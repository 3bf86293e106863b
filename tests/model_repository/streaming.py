"""A test client for the `vibevoice` ensemble: request tensors as the contract defines them, and one request per
gRPC stream, collected or cancelled."""
from __future__ import annotations

import queue
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from engine.contract import ENSEMBLE


def tensor(name: str, value: np.ndarray) -> grpcclient.InferInput:
    value = np.asarray(value)
    dtype = "BYTES" if value.dtype == object else np_to_triton_dtype(value.dtype)
    t = grpcclient.InferInput(name, list(value.shape), dtype)
    t.set_data_from_numpy(value)
    return t


def request_tensors(text: str, audio: list[np.ndarray] | None = None, latents: list[np.ndarray] | None = None,
                    **options) -> list[grpcclient.InferInput]:
    """TEXT, the voices (rows zero-padded, in ascending speaker id) and options given as NAME=value."""
    inputs = [tensor("TEXT", np.array([text.encode()], dtype=object))]
    for rows, data_name, lengths_name in ((audio, "VOICE_AUDIO", "VOICE_LENGTHS"),
                                          (latents, "VOICE_LATENTS", "VOICE_FRAMES")):
        if rows is not None:
            lengths = np.array([len(r) for r in rows], dtype=np.int32)
            padded = np.zeros((len(rows), lengths.max(), *rows[0].shape[1:]), dtype=np.float32)
            for i, r in enumerate(rows):
                padded[i, :len(r)] = r
            inputs += [tensor(data_name, padded), tensor(lengths_name, lengths)]
    dtypes = {"CFG_SCALE": np.float32, "DIFFUSION_STEPS": np.int32, "SEED": np.int64, "MAX_FRAMES": np.int32,
              "EXACT_FRAMES": np.int32, "RAW": np.bool_}
    inputs += [tensor(name, np.array([value], dtype=dtypes[name])) for name, value in options.items()]
    return inputs


@dataclass
class Streamed:
    chunks: list[np.ndarray]
    seed: int
    reason: str

    @property
    def audio(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, dtype=np.float32)


class Stream:
    """One ensemble request on its own gRPC stream (so cancelling it touches no other request)."""

    def __init__(self, url: str, inputs: list[grpcclient.InferInput]):
        self.client = grpcclient.InferenceServerClient(url)
        self.responses: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.responses.put((result, error)))
        self.client.async_stream_infer(ENSEMBLE, inputs, enable_empty_final_response=True)
        self.chunks: list[np.ndarray] = []

    def next_chunk(self, timeout: float = 120.0) -> tuple[np.ndarray | None, int | None, str | None, bool]:
        """(audio, seed, reason, final) of the next response; raises the server's error."""
        result, error = self.responses.get(timeout=timeout)
        if error is not None:
            raise error
        final = result.get_response().parameters["triton_final_response"].bool_param
        audio = result.as_numpy("AUDIO")
        if audio is None:  # an empty final response
            return None, None, None, final
        self.chunks.append(audio)
        return audio, int(result.as_numpy("USED_SEED")[0]), result.as_numpy("FINISH_REASON")[0].decode(), final

    def collect(self, timeout: float = 120.0) -> Streamed:
        seed = reason = None
        try:
            while True:
                audio, chunk_seed, chunk_reason, final = self.next_chunk(timeout)
                if audio is not None:
                    seed, reason = chunk_seed, chunk_reason
                if final:
                    return Streamed(self.chunks, seed, reason)
        finally:
            self.client.stop_stream()
            self.client.close()

    def cancel(self) -> None:
        self.client.stop_stream(cancel_requests=True)
        self.client.close()


def stream(url: str, inputs) -> Streamed:
    return Stream(url, inputs).collect()


def error_of(url: str, inputs) -> str:
    """The error message the server answers a bad request with (fails the test if it answers with audio)."""
    try:
        stream(url, inputs)
    except InferenceServerException as exc:
        return exc.message()
    raise AssertionError("the server accepted a request it should have refused")
