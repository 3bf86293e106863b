"""The orchestrator's Triton client: voice latents from `acoustic_encoder` and streamed generation from the
`vibevoice` ensemble, over gRPC (tritonclient's asyncio client). Tensor names: model_repository/README.md."""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from engine.contract import ENSEMBLE, pad_rows, unpad_rows

ACOUSTIC_ENCODER = "acoustic_encoder"
# gRPC codes that mean "Triton is not there (now)", as opposed to a request it refused.
UNREACHABLE = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED"}


class TritonUnavailable(Exception):
    """Triton cannot be reached or has not loaded the models: try again later (HTTP 503)."""


class TritonFailed(Exception):
    """Triton answered with an error for this request (HTTP 502): the message says what."""


@dataclass(frozen=True)
class StreamedAudio:
    audio: np.ndarray  # float32 samples at 24 kHz (may be empty)
    seed: int
    finish_reason: str  # empty until the last response


@dataclass(frozen=True)
class GenerationOptions:
    cfg_scale: float
    diffusion_steps: int
    seed: int
    max_frames: int | None = None
    exact_frames: int | None = None


def _tensor(name: str, value: np.ndarray, dtype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(value.shape), dtype)
    tensor.set_data_from_numpy(value)
    return tensor


def _failure(exc: Exception, doing: str) -> Exception:
    status = exc.status() if isinstance(exc, InferenceServerException) else None
    if isinstance(exc, grpc.RpcError):
        status = str(exc.code())
    message = exc.message() if isinstance(exc, InferenceServerException) else str(exc)
    if status in UNREACHABLE or (message and "failed to connect" in message.lower()):
        return TritonUnavailable(f"Triton is unreachable while {doing}: {message}")
    return TritonFailed(f"Triton refused {doing}: {message}")


class TritonClient:
    def __init__(self, url: str, stream_timeout_s: float):
        self.url = url
        self.stream_timeout_s = stream_timeout_s
        self._client: grpcclient.InferenceServerClient | None = None
        self._model_id: str | None = None

    @property
    def client(self) -> grpcclient.InferenceServerClient:
        if self._client is None:  # created on first use, inside the serving event loop
            self._client = grpcclient.InferenceServerClient(self.url)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def ready(self) -> bool:
        try:
            return bool(await self.client.is_model_ready(ENSEMBLE, client_timeout=2.0))
        except (InferenceServerException, grpc.RpcError, OSError):
            return False

    async def model_id(self) -> str:
        """The served checkpoint's fingerprint (acoustic_encoder's `model_id` parameter): cached latents are keyed
        by it. Read again after a failure, since a restarted Triton may serve another model."""
        if self._model_id is None:
            try:
                config = await self.client.get_model_config(ACOUSTIC_ENCODER, as_json=True, client_timeout=5.0)
            except (InferenceServerException, grpc.RpcError) as exc:
                raise _failure(exc, "reading the model's id") from None
            self._model_id = config["config"].get("parameters", {}).get("model_id", {}).get("string_value", "")
            if not self._model_id:
                raise TritonFailed("acoustic_encoder has no model_id parameter: export the repository again with "
                                   "this version of `djz export`")
        return self._model_id

    async def encode_voices(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """Mean latents [frames, D] of 24 kHz mono voice clips."""
        audio, lengths = pad_rows(clips)
        try:
            result = await self.client.infer(ACOUSTIC_ENCODER, [_tensor("VOICE_AUDIO", audio, "FP32"),
                                                                _tensor("VOICE_LENGTHS", lengths, "INT32")],
                                             client_timeout=120.0)
        except (InferenceServerException, grpc.RpcError) as exc:
            self._model_id = None
            raise _failure(exc, "encoding a voice") from None
        return unpad_rows(result.as_numpy("VOICE_LATENTS"), result.as_numpy("VOICE_FRAMES"))

    async def generate(self, text: str, latents: list[np.ndarray], options: GenerationOptions
                       ) -> AsyncIterator[StreamedAudio]:
        """Stream one script's audio. `latents`: one row per script speaker, in ascending speaker id. Closing the
        iterator early cancels the request on the server (its slot is freed before the next step)."""
        padded, frames = pad_rows(latents)
        inputs = [_tensor("TEXT", np.array([text.encode()], dtype=object), "BYTES"),
                  _tensor("VOICE_LATENTS", padded, "FP32"), _tensor("VOICE_FRAMES", frames, "INT32"),
                  _tensor("CFG_SCALE", np.array([options.cfg_scale], dtype=np.float32), "FP32"),
                  _tensor("DIFFUSION_STEPS", np.array([options.diffusion_steps], dtype=np.int32), "INT32"),
                  _tensor("SEED", np.array([options.seed], dtype=np.int64), "INT64")]
        for name, value in (("MAX_FRAMES", options.max_frames), ("EXACT_FRAMES", options.exact_frames)):
            if value:
                inputs.append(_tensor(name, np.array([value], dtype=np.int32), "INT32"))
        finished = asyncio.Event()

        async def request_stream():
            yield {"model_name": ENSEMBLE, "inputs": inputs, "request_id": uuid.uuid4().hex}
            await finished.wait()  # keep the stream open until the last response (closing it would cancel)

        responses = self.client.stream_infer(request_stream(), stream_timeout=self.stream_timeout_s)
        completed = False
        try:
            async for result, error in responses:
                if error is not None:
                    raise _failure(error, "the generation")
                reason = result.as_numpy("FINISH_REASON")
                reason = reason.reshape(-1)[0].decode() if reason is not None and reason.size else ""
                audio = result.as_numpy("AUDIO")
                completed = bool(reason)
                yield StreamedAudio(audio if audio is not None else np.zeros(0, np.float32),
                                    int(result.as_numpy("USED_SEED").reshape(-1)[0]), reason)
                if completed:
                    return
            raise TritonUnavailable("Triton closed the generation stream before its last response")
        except (InferenceServerException, grpc.RpcError) as exc:
            self._model_id = None
            raise _failure(exc, "the generation") from None
        finally:
            finished.set()
            if completed:  # end the call as the client that it is: a cancel here would leave Triton 2.51's
                async for _ in responses:  # ensemble holding on until its unload timeout at shutdown
                    pass
            else:
                responses.cancel()
