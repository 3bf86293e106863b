"""transformers' own VibeVoice generate(), the reference our engine must reproduce (frames forced, seeded)."""
import numpy as np
import torch

from engine.checkpoint import load_checkpoint
from engine.prompt import conversation
from engine.request import SynthesisRequest


def reference_audio(checkpoint_path, request: SynthesisRequest, voice_audio: dict[int, np.ndarray]) -> np.ndarray:
    """Audio from transformers' generate() for `request` (exact_frames and seed must be set)."""
    options = request.options
    checkpoint = load_checkpoint(checkpoint_path)
    model, processor = checkpoint.model, checkpoint.processor
    messages, voice_order = conversation(request)
    text = processor.apply_chat_template(messages, tokenize=False)
    inputs = processor(text=text, audio=[voice_audio[s] for s in voice_order], sampling_rate=24000,
                       return_tensors="pt")
    cfg = model.config
    torch.manual_seed(options.seed)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=options.exact_frames, min_new_tokens=options.exact_frames,
                             suppress_tokens=[cfg.audio_bos_token_id, cfg.audio_eos_token_id], do_sample=False,
                             num_diffusion_steps=options.diffusion_steps, guidance_scale=options.cfg_scale,
                             return_dict_in_generate=True)
    return out.audio[0].reshape(-1).float().numpy()
