"""Triton `preprocess`: the request's tensors -> prompt token ids, per-voice latents and resolved options.
Voice audio is encoded by the `acoustic_encoder` model through BLS; latents given by the client are used as they are."""
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from transformers import AutoProcessor

from engine.contract import OPTION_INPUTS, VOICE_INPUTS, encode_options, pad_rows, read_request, unpad_rows
from engine.errors import EngineError
from engine.prompt import prompt_inputs
from engine.runtime.base import ModelSpec
from engine.runtime.manifest import PROCESSOR_DIR, read_manifest

INPUTS = ("TEXT", *VOICE_INPUTS, *OPTION_INPUTS, "RAW")


class TritonPythonModel:
    def initialize(self, args):
        root = Path(args["model_repository"]).parent
        self.latent_dim = ModelSpec.from_json(read_manifest(root)["spec"]).latent_dim
        self.processor = AutoProcessor.from_pretrained(root / PROCESSOR_DIR)
        self.logger = pb_utils.Logger

    def execute(self, requests):
        return [self._prepare(request) for request in requests]

    def _prepare(self, request):
        try:
            tensors = {}
            for name in INPUTS:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    tensors[name] = tensor.as_numpy()
            contract = read_request(tensors, self.latent_dim)
            inputs = prompt_inputs(self.processor, contract.request, self.latent_dim, self._encode)
            latents, frames = pad_rows(inputs.voice_latents)
            return pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("INPUT_IDS", np.asarray(inputs.token_ids, dtype=np.int64)),
                pb_utils.Tensor("PROMPT_LATENTS", latents),
                pb_utils.Tensor("PROMPT_FRAMES", frames),
                pb_utils.Tensor("OPTIONS", np.array([encode_options(contract)], dtype=object)),
            ])
        except EngineError as exc:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
        except Exception as exc:  # a bug must fail this request only, and leave a trace in the server log
            self.logger.log_error(f"preprocess failed: {exc!r}")
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"preprocess failed: {exc}"))

    def _encode(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """Mean latents of prepared voice clips, from the acoustic_encoder model."""
        audio, lengths = pad_rows(clips)
        response = pb_utils.InferenceRequest(
            model_name="acoustic_encoder", requested_output_names=["VOICE_LATENTS", "VOICE_FRAMES"],
            inputs=[pb_utils.Tensor("VOICE_AUDIO", audio), pb_utils.Tensor("VOICE_LENGTHS", lengths)]).exec()
        if response.has_error():
            raise EngineError(f"acoustic_encoder: {response.error().message()}")
        latents = pb_utils.get_output_tensor_by_name(response, "VOICE_LATENTS").as_numpy()
        frames = pb_utils.get_output_tensor_by_name(response, "VOICE_FRAMES").as_numpy()
        return unpad_rows(latents, frames)

