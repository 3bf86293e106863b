"""fp8 and int8 weights for the heaviest linear layers: quantized once at load.

Both store a linear's weight [out, in] as 8-bit values (float8_e4m3fn or int8) with one float32 scale per output
channel (symmetric). int8 is weight-only (W8A16): x times the 8-bit values, summed in float32, then the scale. fp8
multiplies fp8 activations (W8A8, Hopper's fp8 tensor cores): each row of x is quantized per ACTIVATION_GROUP
consecutive values with a float32 scale of its own, each group's products summed in float32 and scaled, then the
groups summed (fine-grained scales keep an outlier from flattening a whole row, and the float32 sums per group keep
the tensor cores' reduced-precision accumulation short). On CUDA a quantized linear is one Triton kernel
(engine.triton_kernels: few_rows_linear with what surrounds the product, or scaled_linear), which reads each 8-bit
weight once: half the bytes of bf16, what a frame's few-row products are bound by. Elsewhere (CPU, while
torch.compile traces) the same values are multiplied in float32: the same function. Every step stays on the device
(no host synchronisation), so quantized layers run inside CUDA graphs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import RuntimeUnavailable

QUANTIZED_WEIGHTS = ("fp8", "int8")
INT8_MAX = 127.0
E4M3_MAX = torch.finfo(torch.float8_e4m3fn).max
SMALLEST_SCALE = 1e-12  # an all-zero row keeps a finite scale and quantizes to zeros
ACTIVATION_GROUP = 128  # fp8 activations: one scale per this many consecutive values of a row


def quantize_rows(x: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x [rows, n] -> (8-bit values [rows, n], float32 scales [rows, 1]) with x ~ values * scales, per row."""
    dtype = torch.float8_e4m3fn if kind == "fp8" else torch.int8
    top = E4M3_MAX if kind == "fp8" else INT8_MAX
    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=SMALLEST_SCALE) / top
    values = x / scale
    if kind == "int8":
        values = values.round()
    return values.clamp(-top, top).to(dtype), scale


def quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """x [rows, K] -> the fp8 activations' values as float32 (each value times its group's scale), rows split into
    groups of ACTIVATION_GROUP (the last one zero-padded) with scale max |group| / E4M3_MAX: the values the fp8
    kernels multiply, the scales applied before the sum here (one float32 rounding each)."""
    rows, width = x.shape
    groups = -(-width // ACTIVATION_GROUP)
    grouped = F.pad(x.float(), (0, groups * ACTIVATION_GROUP - width)).view(rows, groups, ACTIVATION_GROUP)
    top = grouped.abs().amax(dim=-1, keepdim=True).clamp(min=SMALLEST_SCALE)
    values = (grouped * (E4M3_MAX / top)).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return (values.float() * (top * (1.0 / E4M3_MAX))).view(rows, -1)[:, :width]


class QuantizedLinear(nn.Module):
    """An nn.Linear whose weight is stored quantized (fp8 or int8) with one float32 scale per output channel."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("weight", weight)  # [out, in], 8-bit
        self.register_buffer("scale", scale)    # [out], float32
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, kind: str) -> "QuantizedLinear":
        weight, scale = quantize_rows(linear.weight.detach(), kind)
        return cls(weight, scale[:, 0], None if linear.bias is None else linear.bias.detach())

    def forward(self, x):
        return linear(x, *linear_params(self))

    def extra_repr(self) -> str:
        out, width = self.weight.shape
        return f"in_features={width}, out_features={out}, weight={self.weight.dtype}"


def linear_params(module: nn.Module) -> tuple:
    """What `linear` takes after x for an nn.Linear or a QuantizedLinear: tensors, no module, so one compiled
    function can serve every layer."""
    if isinstance(module, QuantizedLinear):
        return module.weight, module.bias, module.scale
    return module.weight, module.bias


def fuse_linears(modules: list[nn.Module]) -> tuple:
    """`linear_params` of one linear that computes several sharing an input (q, k and v; gate and up): weights,
    biases and scales concatenated along the output dimension. Each module's tensors become views of the fused ones,
    so the modules still work and no memory is added."""
    weight = torch.cat([m.weight for m in modules])
    biases = [m.bias for m in modules if m.bias is not None]
    bias = None
    if biases:  # a module without one gets zeros in the fused bias
        bias = torch.cat([biases[0].new_zeros(m.weight.shape[0]) if m.bias is None else m.bias for m in modules])
    quantized = isinstance(modules[0], QuantizedLinear)
    scale = torch.cat([m.scale for m in modules]) if quantized else None
    start = 0
    for module in modules:
        end = start + module.weight.shape[0]
        if quantized:
            module.weight, module.scale = weight[start:end], scale[start:end]
            if module.bias is not None:
                module.bias = bias[start:end]
        else:
            module.weight = nn.Parameter(weight[start:end], requires_grad=False)
            if module.bias is not None:
                module.bias = nn.Parameter(bias[start:end], requires_grad=False)
        start = end
    if quantized:
        return weight, bias, scale
    return weight, bias


def linear_residual(x, residual, weight, bias=None, scale=None):
    """residual + linear(x, ...): one addmm for a float weight without bias, one kernel for a quantized one on CUDA
    (x and residual [rows, in/out])."""
    if scale is None and bias is None:
        return torch.addmm(residual, x, weight.t())
    if scale is not None and (kernels := _kernels(x)):
        return kernels.scaled_linear(x, weight, scale, bias, residual)
    return residual + linear(x, weight, bias, scale)


def linear(x, weight, bias=None, scale=None):
    """F.linear, or the quantized product when the weight comes with its per-output-channel `scale`; the result is in
    x's dtype."""
    if scale is None:
        return F.linear(x, weight, bias)
    if kernels := _kernels(x):
        return kernels.scaled_linear(x, weight, scale, bias)
    # the kernels' arithmetic: the 8-bit values' products summed in float32, the scale, one rounding
    activations = x.float()
    if weight.dtype == torch.float8_e4m3fn:
        activations = quantize_activations(activations.reshape(-1, x.shape[-1])).view(activations.shape)
    out = (F.linear(activations, weight.float()) * scale).to(x.dtype)
    return out if bias is None else out + bias


def _kernels(x: torch.Tensor):
    from engine.network import kernels_for  # engine.network builds on this module
    return kernels_for(x, None)


def quantize_linears(module: nn.Module, kind: str) -> int:
    """Replace every nn.Linear under `module` by a QuantizedLinear, in place and one at a time, so that each
    full-precision weight is released as soon as its quantized copy exists. Returns how many were replaced."""
    if kind not in QUANTIZED_WEIGHTS:
        raise RuntimeUnavailable(f"unknown weight quantization {kind!r}; choose one of {', '.join(QUANTIZED_WEIGHTS)}")
    # (parent, name) pairs only: a list holding the nn.Linear modules would keep every old weight alive to the end
    targets = [(parent, name) for parent in module.modules() for name, child in parent.named_children()
               if isinstance(child, nn.Linear)]
    for parent, name in targets:
        setattr(parent, name, QuantizedLinear.from_linear(getattr(parent, name), kind))
    return len(targets)
