"""fp8 and int8 weights for the language model's linear layers: quantized once at load, computed in bf16.

Both store a linear's weight [out, in] as 8-bit values with one float32 scale per output channel (symmetric).
- fp8 (W8A8): the weight as float8_e4m3fn, and each activation row quantized to fp8 on the fly with its own scale.
  From compute capability 8.9 (Ada, Hopper) the product is one torch._scaled_mm on fp8 tensor cores; elsewhere
  (CPU, older GPUs) the same fp8 values are multiplied in float32: the same function, without the speed.
- int8 (W8A16): weight-only; x @ int8ᵀ in the compute dtype, then the scale. The form torch.compile fuses.
Every step stays on the device (no host synchronisation), so quantized layers run inside CUDA graphs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import RuntimeUnavailable

QUANTIZED_WEIGHTS = ("fp8", "int8")
INT8_MAX = 127.0
SMALLEST_SCALE = 1e-12  # an all-zero row keeps a finite scale and quantizes to zeros
SCALED_MM_MULTIPLE = 16  # torch._scaled_mm needs the inner and output widths to be multiples of 16 (rows are free)


def fp8_matmul_available(device: str | torch.device) -> bool:
    """Whether torch._scaled_mm multiplies fp8 on this device's tensor cores (CUDA compute capability >= 8.9)."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def quantize_rows(x: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x [rows, n] -> (8-bit values [rows, n], float32 scales [rows, 1]) with x ~ values * scales, per row."""
    dtype = torch.float8_e4m3fn if kind == "fp8" else torch.int8
    top = torch.finfo(dtype).max if kind == "fp8" else INT8_MAX
    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=SMALLEST_SCALE) / top
    values = x / scale
    if kind == "int8":
        values = values.round()
    return values.clamp(-top, top).to(dtype), scale


class QuantizedLinear(nn.Module):
    """An nn.Linear whose weight is stored quantized (fp8 or int8) with one float32 scale per output channel."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, scaled_mm: bool):
        super().__init__()
        self.register_buffer("weight", weight)  # [out, in], 8-bit
        self.register_buffer("scale", scale)    # [out], float32
        self.register_buffer("bias", bias)
        self.scaled_mm = scaled_mm  # fp8 through torch._scaled_mm (decided once, for the weight's device)

    @classmethod
    def from_linear(cls, linear: nn.Linear, kind: str) -> "QuantizedLinear":
        weight, scale = quantize_rows(linear.weight.detach(), kind)
        aligned = all(width % SCALED_MM_MULTIPLE == 0 for width in weight.shape)
        scaled_mm = kind == "fp8" and aligned and fp8_matmul_available(weight.device)
        return cls(weight, scale[:, 0], None if linear.bias is None else linear.bias.detach(), scaled_mm)

    def forward(self, x):
        return linear(x, *linear_params(self))

    def extra_repr(self) -> str:
        out, width = self.weight.shape
        return f"in_features={width}, out_features={out}, weight={self.weight.dtype}, scaled_mm={self.scaled_mm}"


def linear_params(module: nn.Module) -> tuple:
    """What `linear` takes after x for an nn.Linear or a QuantizedLinear: tensors and flags, no module, so one
    compiled function can serve every layer."""
    if isinstance(module, QuantizedLinear):
        return module.weight, module.bias, module.scale, module.scaled_mm
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
        return weight, bias, scale, all(m.scaled_mm for m in modules)
    return weight, bias


def linear_residual(x, residual, weight, bias=None, scale=None, scaled_mm: bool = False):
    """residual + linear(x, ...): one addmm for a float weight without bias (x and residual [rows, in/out])."""
    if scale is None and bias is None:
        return torch.addmm(residual, x, weight.t())
    return residual + linear(x, weight, bias, scale, scaled_mm)


def linear(x, weight, bias=None, scale=None, scaled_mm: bool = False):
    """F.linear, or the quantized product when the weight comes with its per-output-channel `scale`; the result is in
    x's dtype."""
    if scale is None:
        return F.linear(x, weight, bias)
    if weight.dtype == torch.int8:
        out = F.linear(x, weight.to(x.dtype)) * scale.to(x.dtype)
    else:
        out = _fp8_linear(x, weight, scale, scaled_mm)
    return out if bias is None else out + bias


def _fp8_linear(x, weight, scale, scaled_mm: bool):
    rows, row_scale = quantize_rows(x.reshape(-1, x.shape[-1]), "fp8")
    if scaled_mm:  # row-major activations times the column-major view of the [out, in] weight
        out = torch._scaled_mm(rows, weight.t(), scale_a=row_scale, scale_b=scale[None], out_dtype=x.dtype)
    else:  # _scaled_mm's arithmetic: the fp8 products summed in float32, both scales applied, one rounding
        out = (F.linear(rows.float(), weight.float()) * row_scale * scale).to(x.dtype)
    return out.reshape(*x.shape[:-1], weight.shape[0])


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
