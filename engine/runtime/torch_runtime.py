"""The torch runtime: transformers' VibeVoice modules, called through the explicit-state functions of engine.network."""
from __future__ import annotations

import torch

from engine.checkpoint import Checkpoint
from engine.network import (CachedLanguageModelStep, ConnectorStep, DiffusionHeadStep, DiffusionSolver,
                            LanguageModelStep, VoiceEncoder)
from engine.quantize import quantize_linears
from engine.runtime.base import ModelSpec, Runtime
from engine.tokenizer_step import TokenizerStep, wide_block_ffns


class TorchRuntime(Runtime):
    name = "torch"

    def __init__(self, checkpoint: Checkpoint, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 voice_encoder_only: bool = False, compile: bool = False, quantized: str | None = None,
                 megakernel: bool = False):
        """`voice_encoder_only` moves just the acoustic encoder to `device`; only `encode_voice` may be called.
        `compile` runs the frame's pieces (LM layers, diffusion solve, streaming decoder and semantic encoder)
        through torch.compile, with dynamic shapes so that one compilation serves every batch size.
        `quantized` ("fp8" or "int8") stores the LM decoder layers' linear weights, the diffusion head layers' FFN
        weights and the FFN weights of the tokenizers' wide blocks (engine.tokenizer_step.wide_block_ffns) in 8 bits
        (engine/quantize.py; fp8 quantizes the activations too, int8 is weight-only): the products a frame streams
        most bytes of. Embeddings, the scored lm_head rows, the head's modulation and projections, the tokenizers'
        convolutions and narrower blocks, and the voice encoder stay in `dtype`. The checkpoint's model is converted
        in place.
        `megakernel`: the LM step of one or two streams as one persistent kernel where it runs (bf16 or fp8 weights
        on Hopper, with CuPy: engine.megakernel; measured slower than the separate kernels so far, so not the
        default); `describe` says whether it does."""
        self.device = torch.device(device)
        self.dtype = dtype
        self.quantized = None if voice_encoder_only else quantized
        model = checkpoint.model.eval()
        self.spec = ModelSpec.from_model(model)
        inner = model.model
        if voice_encoder_only:
            self._voice_encoder = VoiceEncoder(inner.audio_tower.encoder.to(self.device, dtype))
            return
        model.to(self.device, dtype)
        if quantized:  # after the cast: the 8-bit weights and their float32 scales must not be cast again
            quantize_linears(inner.language_model.layers, quantized)
            tokenizers = inner.audio_tower.decoder, inner.semantic_tokenizer_encoder
            for ffn in [*(layer.ffn for layer in inner.diffusion_head.layers),
                        *(ffn for half in tokenizers for ffn in wide_block_ffns(half))]:
                quantize_linears(ffn, quantized)
        if self.device.type == "cuda":
            if self.device.index is not None:  # streams and graph captures follow the current device
                torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True  # the streaming convolutions' shapes are fixed: pick per shape
        self._embed = inner.language_model.embed_tokens
        self._lm = LanguageModelStep(inner.language_model, model.lm_head, list(self.spec.token_ids))
        self._lm_cached = CachedLanguageModelStep(self._lm, compile=compile, megakernel=megakernel)
        self._head = DiffusionHeadStep(inner.diffusion_head)
        self._solver = DiffusionSolver(inner.diffusion_head)
        self._acoustic_connector = ConnectorStep(inner.multi_modal_projector)
        self._semantic_connector = ConnectorStep(inner.semantic_connector)
        self._decoder = TokenizerStep(inner.audio_tower.decoder)
        self._semantic = TokenizerStep(inner.semantic_tokenizer_encoder)
        self._voice_encoder = VoiceEncoder(inner.audio_tower.encoder)
        if compile:
            self._solver, self._decoder, self._semantic = (torch.compile(module, dynamic=True)
                                                           for module in (self._solver, self._decoder, self._semantic))

    def describe(self) -> str:
        held = str(self.dtype).removeprefix("torch.")
        if self.quantized:
            how = "Triton kernels" if self.device.type == "cuda" else "float32 products"
            held += f", {self.quantized} LM, diffusion-head FFN and wide tokenizer-block FFN weights ({how})"
        if self._lm_cached.megakernel is not None:
            held += ", LM step of 1-2 streams as one persistent kernel"
        return f"{self.name} on {self.device} ({held})"

    @property
    def cached_lm_step(self) -> CachedLanguageModelStep:
        """The module behind `lm_cached` (engine.network), for measurements of its paths."""
        return self._lm_cached

    @torch.no_grad()
    def embed(self, ids):
        return self._embed(ids)

    @torch.no_grad()
    def lm(self, embeds, positions, past_k, past_v, past_valid):
        return self._lm(embeds, positions, past_k, past_v, past_valid)

    @torch.no_grad()
    def prefill(self, embeds):
        return self._lm_cached.prefill(embeds)

    @torch.no_grad()
    def lm_cached(self, embeds, positions, keys, values, context):
        return self._lm_cached(embeds, positions, keys, values, context)

    @torch.no_grad()
    def diffusion_head(self, noisy, timesteps, condition):
        return self._head(noisy, timesteps, condition)

    @torch.no_grad()
    def solve(self, noise, cond_pos, cond_neg, cfg, table):
        return self._solver(noise, cond_pos, cond_neg, cfg, table)

    @torch.no_grad()
    def acoustic_connector(self, latents):
        return self._acoustic_connector(latents)

    @torch.no_grad()
    def semantic_connector(self, semantic):
        return self._semantic_connector(semantic)

    @torch.no_grad()
    def decode(self, latents, *caches):
        return self._decoder(latents, *caches)

    @torch.no_grad()
    def semantic(self, audio, *caches):
        return self._semantic(audio, *caches)

    @torch.no_grad()
    def encode_voice(self, audio):
        return self._voice_encoder(audio)
