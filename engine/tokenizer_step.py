"""One streaming chunk through a tokenizer half (the acoustic decoder, the semantic encoder), written for few kernels.

The same function as engine.network.StreamingConvStep over transformers' modules, with the same caches in and out,
but computed channels-last ([batch, time, channels]), the layout in which the ConvNeXt blocks' norms and linears
need no transposes:
  - a block is ten kernels (fused RMSNorm, cache concatenation, depthwise convolution, residuals as addcmul) where
    the modules' channels-first code launches about thirty;
  - dense and strided convolutions are one product (the weights reshaped once), over the input's windows, or first,
    where the output is narrow, with a shifted sum after it;
  - a transposed convolution whose kernel is twice its stride is one product and one overlap-add: each output
    sample then depends on two input frames, so of its cache only the last frame is read.
A captured frame is bound by its kernel count, and at many streams by the transposes this layout removes.

Caches keep the modules' shape [batch, channels, width]; the ones returned are views of channels-last tensors
(transposed), so a caller that stores them channels-last copies nothing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import GELUActivation

from engine.network import conv_cache_specs, kernels_for, linear_block
from engine.quantize import QuantizedLinear, linear_params

# An 8-bit precision stores the FFN weights of the blocks at least this wide in 8 bits: the 1024- and 2048-channel
# stages hold ~95% of a tokenizer half's weight bytes (the 2048 stage's eight FFNs 268M parameters) and run as
# few-row products bound by those bytes; narrower blocks are bound by latency, and the narrowest run as fused
# kernels that read float weights.
QUANTIZED_MIN_CHANNELS = 1024


class TokenizerStep(nn.Module):
    """forward(x, *caches) -> (y, *new_caches), as StreamingConvStep: the decoder maps latents [B, 64, 1] to audio
    [B, 1, 3200]; an encoder maps audio [B, 1, 3200] to latents [B, 1, D]. `triton` says whether the blocks run
    engine.triton_kernels: None (the default) on CUDA tensors, where Triton imports."""

    def __init__(self, module: nn.Module, triton: bool | None = None):
        super().__init__()
        self.module = module  # transformers' modules, whose weights the ops read
        self.specs = conv_cache_specs(module)
        self.decoder = hasattr(module.conv_layers[0], "convtr")
        self.ops = nn.ModuleList()
        for stage in [module.stem, *module.conv_layers]:  # each stage: a (re)sampling convolution, then blocks
            sampler = getattr(stage, "convtr", None) or stage.conv
            self.ops.append(_TransposedConv(sampler) if hasattr(sampler, "convtr") else _Conv(sampler))
            self.ops.extend(_Block(block, triton) for block in stage.stage)
        self.ops.append(_Conv(module.head))
        if [op.cache_key for op in self.ops if op.width] != [spec.key for spec in self.specs]:
            raise ValueError("the tokenizer's convolutions are not in the order of its caches")

    def forward(self, x, *caches):
        hidden = x.transpose(1, 2)  # [B, T, C]
        new_caches = []
        pending = iter(caches)
        for op in self.ops:
            cache = next(pending).transpose(1, 2) if op.width else None
            hidden, new = op(hidden, cache)
            if op.width:
                new_caches.append(new.transpose(1, 2))
        output = hidden.transpose(1, 2) if self.decoder else hidden  # audio [B, 1, T]; latents [B, T, D]
        return (output, *new_caches)


def wide_block_ffns(module: nn.Module) -> list[nn.Module]:
    """The FFNs of a tokenizer half's ConvNeXt blocks at least QUANTIZED_MIN_CHANNELS wide."""
    return [block.ffn for stage in [module.stem, *module.conv_layers] for block in stage.stage
            if block.ffn.linear1.weight.shape[1] >= QUANTIZED_MIN_CHANNELS]


def _with_past(cache: torch.Tensor | None, x: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x [B, T, C] behind its cached left context [B, width, C]: (padded input, the new cache: its last `width`)."""
    if not width:
        return x, None
    padded = torch.cat([cache, x], dim=1)
    return padded, padded[:, padded.shape[1] - width:]


class _Conv(nn.Module):
    """A causal convolution (any stride, no groups) as one product. Where each input row feeds fewer values than it
    holds (kernel x out channels <= in channels: the decoder's 32-to-1 head) the product comes first, z = input @ W
    (each row's terms for the `kernel` outputs it feeds), then out[t] = sum_k z[t * stride + k, k]: a small
    reduction over a strided view of z. Otherwise the product runs over the input's windows, each `kernel`
    consecutive rows, which lie contiguous in memory (the copy that gathers them moves whole rows)."""

    def __init__(self, causal: nn.Module):
        super().__init__()
        conv = causal.conv
        if conv.groups != 1 or conv.dilation != (1,):
            raise ValueError("dense causal convolutions without dilation only")
        self.cache_key, self.width = causal.cache_key, causal.left_pad
        self.kernel, self.stride = conv.kernel_size[0], conv.stride[0]
        self.out_channels, in_channels = conv.out_channels, conv.in_channels
        self.product_first = self.out_channels * self.kernel <= in_channels
        weight, bias = conv.weight.detach(), conv.bias.detach()  # [C_out, C_in, kernel]
        if self.product_first:  # [C_in, (kernel, C_out)]; the bias once per output: with tap 0's terms
            weight = weight.permute(1, 2, 0).reshape(in_channels, -1)
            bias = torch.cat([bias, bias.new_zeros((self.kernel - 1) * self.out_channels)])
        else:  # [(kernel, C_in), C_out]: a window's rows in order
            weight = weight.permute(2, 1, 0).reshape(-1, self.out_channels)
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x, cache):
        padded, new = _with_past(cache, x, self.width)
        batch, rows, channels = padded.shape
        frames = (rows - self.kernel) // self.stride + 1
        if self.product_first:
            z = torch.addmm(self.bias, padded.reshape(batch * rows, channels), self.weight)
            terms = self.kernel * self.out_channels
            taps = z.as_strided((batch, frames, self.kernel, self.out_channels),
                                (rows * terms, self.stride * terms, terms + self.out_channels, 1))
            return taps.sum(2), new
        windows = padded.reshape(batch, rows * channels).unfold(1, self.kernel * channels, self.stride * channels)
        out = torch.addmm(self.bias, windows.reshape(batch * frames, -1), self.weight)
        return out.view(batch, frames, -1), new


class _TransposedConv(nn.Module):
    """A causal transposed convolution with kernel = 2 x stride: out[t*s + r] = z[t, r] + z[t-1, s + r] + bias for
    z = input @ W (each input frame's 2s output samples), so one product and one overlap-add; of the cache only its
    last frame is read."""

    def __init__(self, causal: nn.Module):
        super().__init__()
        convtr = causal.convtr
        self.cache_key, self.width = causal.cache_key, causal.left_pad
        self.stride = convtr.stride[0]
        kernel = convtr.kernel_size[0]
        if kernel != 2 * self.stride or convtr.padding != (0,) or causal.padding_total != self.stride:
            raise ValueError("causal transposed convolutions with kernel = 2 x stride only")
        in_channels, out_channels, _ = convtr.weight.shape
        # [C_in, C_out, 2s] -> [C_in, (2s, C_out)]: each input frame's output samples, channels-last
        self.register_buffer("weight", convtr.weight.detach().permute(0, 2, 1).reshape(in_channels, -1),
                             persistent=False)
        # the bias is added once per output sample: on the first half of each frame's samples only
        bias = torch.cat([convtr.bias.detach().repeat(self.stride), torch.zeros_like(convtr.bias).repeat(self.stride)])
        self.register_buffer("bias", bias, persistent=False)
        self.out_channels = out_channels

    def forward(self, x, cache):
        batch, frames, channels = x.shape
        inputs = torch.cat([cache[:, -1:], x], dim=1)  # the current frames and the one before them, contiguous
        z = torch.addmm(self.bias, inputs.view(batch * (frames + 1), channels), self.weight)
        z = z.view(batch, frames + 1, 2, self.stride, self.out_channels)
        out = z[:, 1:, 0] + z[:, :-1, 1]  # [B, T, s, C_out]
        # the new cache: the last `width` rows of [cache, x], a view of x once x has that many
        new = x[:, frames - self.width:] if frames >= self.width else torch.cat([cache[:, frames:], x], dim=1)
        return out.reshape(batch, frames * self.stride, self.out_channels), new


class _Block(nn.Module):
    """A ConvNeXt block: x + gamma * dwconv(norm(x)), then x + ffn_gamma * ffn(ffn_norm(x)). On CUDA it runs as
    Triton kernels (engine.triton_kernels; block_kernels picks them by width and rows): narrow blocks whole
    (`convnext_block`) or in two halves (`convnext_mixer`, `convnext_ffn`), wider ones up to the FFN's input
    (`convnext_mixer`), then engine.network.linear_block's products (few_rows_linear at few rows, else cuBLAS, or
    scaled_linear for 8-bit weights, which only wide blocks have: wide_block_ffns); otherwise as torch ops
    (`convnext_mixer` here, then the FFN's modules)."""

    def __init__(self, block: nn.Module, triton: bool | None):
        super().__init__()
        self.block, self.triton = block, triton
        mixer = block.mixer
        if mixer.conv.dilation != (1,) or mixer.conv.stride != (1,):
            raise ValueError("ConvNeXt mixers without dilation or stride only")
        self.exact_gelu = isinstance(block.ffn.activation, GELUActivation)  # the FFN kernels' activation
        # 8-bit FFN weights (wide_block_ffns) run as products only: the narrow blocks' fused kernels read float ones
        self.quantized = isinstance(block.ffn.linear1, QuantizedLinear)
        self.cache_key, self.width = mixer.cache_key, mixer.left_pad

    def forward(self, x, cache):
        block, ffn = self.block, self.block.ffn
        kernels = kernels_for(x, self.triton)
        norm, ffn_norm, conv = block.norm, block.ffn_norm, block.mixer.conv
        mixer_args = (x, cache, norm.weight, norm.variance_epsilon, conv.weight, conv.bias, block.gamma,
                      ffn_norm.weight, ffn_norm.variance_epsilon)
        ffn_args = (ffn.linear1.weight, ffn.linear1.bias, ffn.linear2.weight, ffn.linear2.bias, block.ffn_gamma)
        path = "mixer"
        if kernels and self.exact_gelu and not self.quantized:
            path = kernels.block_kernels(x.shape[-1], x.shape[0] * x.shape[1])
        if path == "block":
            return kernels.convnext_block(*mixer_args, *ffn_args)
        x, ffn_in, new = (kernels.convnext_mixer if kernels else convnext_mixer)(*mixer_args)
        if path == "mixer+ffn":
            return kernels.convnext_ffn(x, ffn_in, *ffn_args), new
        if kernels and self.exact_gelu:  # at few rows (wide blocks, few streams) one kernel per product
            flat, channels = x.reshape(-1, x.shape[-1]), x.shape[-1]
            hidden = linear_block(ffn_in.reshape(-1, channels), linear_params(ffn.linear1), kernels, activation="gelu")
            out = linear_block(hidden, linear_params(ffn.linear2), kernels, residual=flat, layer_scale=block.ffn_gamma)
            return out.view_as(x), new
        return torch.addcmul(x, ffn.linear2(ffn.activation(ffn.linear1(ffn_in))), block.ffn_gamma), new


def convnext_mixer(x, cache, norm_weight, eps, conv_weight, conv_bias, gamma, ffn_norm_weight, ffn_eps):
    """A ConvNeXt block's first half in torch ops: x [B, T, C], cache [B, W, C] -> (x + gamma * dwconv(norm(x)),
    ffn_norm of that, the new cache). engine.triton_kernels.convnext_mixer computes the same in one kernel."""
    width = (x.shape[-1],)
    padded, new = _with_past(cache, F.rms_norm(x, width, norm_weight, eps), cache.shape[1])
    mixed = F.conv1d(padded.transpose(1, 2), conv_weight, conv_bias, groups=x.shape[-1])  # [B, C, T]
    x = torch.addcmul(x, mixed.transpose(1, 2), gamma)
    return x, F.rms_norm(x, width, ffn_norm_weight, ffn_eps), new
