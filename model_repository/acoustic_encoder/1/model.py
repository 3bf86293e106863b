"""Triton `acoustic_encoder`: voice audio rows -> mean latents, through the repository's runtime."""
from pathlib import Path

import triton_python_backend_utils as pb_utils

from engine.audio import prepare_voice
from engine.config import SAMPLE_RATE
from engine.contract import pad_rows, rows
from engine.errors import EngineError
from engine.prompt import encode_voices
from engine.runtime import load_runtime


class TritonPythonModel:
    def initialize(self, args):
        root = Path(args["model_repository"]).parent
        device = f"cuda:{args['model_instance_device_id']}" if args["model_instance_kind"] == "GPU" else "cpu"
        self.runtime, _ = load_runtime(root, device=device, voice_encoder_only=True)

    def execute(self, requests):
        return [self._encode(request) for request in requests]

    def _encode(self, request):
        try:
            audio = pb_utils.get_input_tensor_by_name(request, "VOICE_AUDIO").as_numpy()
            lengths = pb_utils.get_input_tensor_by_name(request, "VOICE_LENGTHS").as_numpy()
            clips = [prepare_voice(clip, SAMPLE_RATE, name=f"VOICE_AUDIO[{row}]")
                     for row, clip in enumerate(rows(audio, lengths, "VOICE_AUDIO", "VOICE_LENGTHS"))]
            latents, frames = pad_rows(encode_voices(self.runtime, clips))
            return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("VOICE_LATENTS", latents),
                                                              pb_utils.Tensor("VOICE_FRAMES", frames)])
        except EngineError as exc:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
