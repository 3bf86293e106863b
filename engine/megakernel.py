"""The cached LM step for one or two streams as one persistent CUDA kernel (engine/megakernel.cu) on Hopper GPUs.

A frame's LM step at a few rows is ~200 kernels that each wait for the one before, then for their first weights:
half its time goes to those waits. The persistent kernel runs every decoder layer in one launch, one program per
multiprocessor: a producer warp streams the program's share of every weight into shared memory ahead of use while
the consumer warps compute phase after phase between grid barriers (see the .cu file). CachedLanguageModelStep
calls it where it applies (`LanguageModelMegakernel.runs`) and runs its Triton and torch paths elsewhere: the
same function, rounded the same way, summed in another order.

It needs CuPy (NVRTC compiles the source at first use) and bf16 or fp8 weights (engine.quantize: fp8 activations
too) in a bf16 model; one instance serves one caller at a time (its work buffers are its own).

Status (perf/RESULTS.md, 2026-12-07, an H100): it computes the step (against the Triton kernels: 2.7e-2 relative
on the 1.5B's hidden states; graph replays equal eager runs) in 1.96 ms against their 1.47 (7B fp8: 4.71 against
2.97), so it is not the runtime's default. Its products stream at ~3.2 TB/s; the rest of its time is waiting:
perf/trace_megakernel.py shows ~30 of a layer's 70 us at grid barriers, 18 of them for the few programs that attend.
"""
from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np
import torch

SOURCE = Path(__file__).with_suffix(".cu")
ROWS = (2, 4)               # instantiated row counts: one and two streams' positive and negative rows
WARPS = 8                   # the .cu file's constants
THREADS = (WARPS + 1) * 32
SLOT_BYTES = 4096           # one bulk copy of weights: the default ring slot
STEP = 256
HEAD_DIM = 128
ATT_SPAN = WARPS * 32
MAX_TOKENS = 4
ACTIVATION_GROUP = 128
KINDS = ("qkv", "o", "gate_up", "down")  # the products, in the kernel's Kind order
# a layer's row of the kernel's `layers` table (its Field enum): each product's weight, then its fp8 scales (0 for
# bf16), the qkv bias, the two norms' weights
LAYER_FIELDS = 11
MIN_SLOTS = 2               # ring slots per consumer warp, at least
BARRIER_BYTES = 8
TRACE_PROGRAMS, TRACE_LAYERS, MARKS = 256, 64, 16  # the TRACE build's tables
# what a layer's consumers do between its marks (the .cu's MARK(0) ... MARK(15)): the products' intervals include
# finishing their rows' sums, a barrier's is the wait for the slowest program
TRACE_PHASES = ("norm", "qkv", "barrier", "attention", "barrier", "load", "o", "barrier", "norm", "gate", "up+act",
                "barrier", "load", "down", "barrier")
STATIC_SHARED = 1024        # kept for the kernel's static shared memory (its flag: a few bytes)


class Params(ctypes.Structure):
    """The kernel's `Params`, field for field."""
    _fields_ = [(name, ctypes.c_void_p) for name in (
        "layers", "ranges", "hidden", "qkv", "attn", "act", "parts", "counters", "inv_freq", "final_norm",
        "token_weight")] + [(name, ctypes.c_float) for name in ("rope_scaling", "attn_scale", "eps")] + [
        (name, ctypes.c_int) for name in ("layers_n", "H", "F", "heads", "kv_heads", "tokens", "slots", "x_offset",
                                          "scales_offset", "parts_offset", "barrier_offset")]


def program_ranges(outputs: int, programs: int) -> np.ndarray:
    """Each of `programs` programs' contiguous output rows [begin, end) of a product with `outputs` rows: as even as
    whole rows allow (sizes differ by at most one). The program's consumer warps split its rows' steps evenly."""
    bounds = np.arange(programs + 1, dtype=np.int64) * outputs // programs
    return np.stack([bounds[:-1], bounds[1:]], axis=1).astype(np.int32)


def shared_layout(rows: int, hidden: int, intermediate: int, heads: int, kv_heads: int, program_rows: int,
                  limit: int, slot_bytes: int = SLOT_BYTES) -> tuple[int, int, int, int, int, int]:
    """(ring slots per warp, the offsets of x's values, of x's fp8 scales, of the row sums' parts and of the
    mbarriers, bytes in all) of the kernel's shared memory within `limit` bytes: x holds the widest phase input
    [rows, K] in bf16 (or the attention's scratch, whichever is larger) and a float32 scale per ACTIVATION_GROUP of
    them; the parts two float32 sums per row, output row of the program (at most `program_rows`) and product (gate
    and up at once); the ring the rest."""
    group = heads // kv_heads
    widest = max(hidden, intermediate, heads * HEAD_DIM)
    scratch = ((group + 2) * HEAD_DIM + WARPS * group * (HEAD_DIM + 2)) * 4
    values = -(-max(rows * widest * 2, scratch) // 128) * 128
    scales = -(-rows * (widest // ACTIVATION_GROUP) * 4 // 128) * 128
    parts = -(-2 * program_rows * 2 * rows * 4 // 128) * 128
    per_slot = WARPS * (slot_bytes + 2 * BARRIER_BYTES)
    slots = (limit - values - scales - parts) // per_slot
    x_offset = WARPS * slots * slot_bytes
    parts_offset = x_offset + values + scales
    barrier_offset = parts_offset + parts
    return (slots, x_offset, x_offset + values, parts_offset, barrier_offset,
            barrier_offset + WARPS * slots * 2 * BARRIER_BYTES)


@functools.cache
def _cupy():
    """The cupy module where it imports and sees a GPU, else None."""
    try:
        import cupy
        cupy.cuda.runtime.getDeviceCount()
    except Exception:  # not installed, or no driver: the other paths run
        return None
    return cupy


@functools.cache
def _kernel(rows: int, group: int, fp8: bool, slot_bytes: int, trace: bool, device_index: int, shared_limit: int):
    """(the module, the kernel) for `rows` rows, `group` query heads per kv head, bf16 or fp8 weights and ring slots
    of `slot_bytes` (with `trace`: its TRACE build), compiled for the device (sm_90a), allowed `shared_limit` bytes
    of shared memory with its static ones (set here, once: not while a CUDA graph is being captured)."""
    cupy = _cupy()
    name = f"lm_step<{rows}, {group}, {str(fp8).lower()}>"
    with cupy.cuda.Device(device_index):
        module = cupy.RawModule(code=SOURCE.read_text(),
                                options=("-std=c++17", "-arch=sm_90a", f"-DSLOT_BYTES={slot_bytes}",
                                         *(["-DTRACE"] if trace else [])),
                                name_expressions=[name])
        kernel = module.get_function(name)
        kernel.max_dynamic_shared_size_bytes = shared_limit - kernel.attributes["shared_size_bytes"]
        return module, kernel


class LanguageModelMegakernel:
    """The LM step of CachedLanguageModelStep (embeds [R, H], positions [R], the KV caches, context -> hidden
    [R, H] after the final norm, logits [R, V']) as engine/megakernel.cu, for R in ROWS."""

    def __init__(self, step, layer_weights: list[dict], slot_bytes: int = SLOT_BYTES, trace: bool = False):
        """`step`: the LanguageModelStep whose modules hold the weights (on one CUDA device); `layer_weights`:
        CachedLanguageModelStep's per-layer tensors (fused qkv and gate-up); `slot_bytes`: each bulk copy of
        weights (a multiple of 512); `trace`: the kernel's TRACE build, whose marks `trace()` reads
        (perf/trace_megakernel.py)."""
        if slot_bytes % 512:
            raise ValueError(f"slot_bytes must be a multiple of 512 (a warp step of bf16), got {slot_bytes}")
        self.slot_bytes, self.traced = slot_bytes, trace
        lm, device = step.lm, step.token_weight.device
        cfg = lm.config
        self.device = device
        self.heads, self.kv_heads, self.hidden_size = step.heads, step.kv_heads, cfg.hidden_size
        self.intermediate = cfg.intermediate_size
        self.tokens = step.token_weight.shape[0]
        properties = torch.cuda.get_device_properties(device)
        self.programs = properties.multi_processor_count
        self._smem_limit = properties.shared_memory_per_block_optin
        self.fp8 = layer_weights[0]["qkv"][0].dtype == torch.float8_e4m3fn
        table = []
        for w in layer_weights:
            weights = [w[name][0].data_ptr() for name in KINDS]
            scales = [w[name][2].data_ptr() if self.fp8 else 0 for name in KINDS]
            table.append(weights + scales + [w["qkv"][1].data_ptr(), w["norm1"][0].data_ptr(),
                                             w["norm2"][0].data_ptr()])
        self._layers = torch.tensor(table, dtype=torch.int64, device=device)
        if trace and (self.programs > TRACE_PROGRAMS or len(table) > TRACE_LAYERS):
            raise ValueError(f"the TRACE build records {TRACE_PROGRAMS} programs and {TRACE_LAYERS} layers at most")
        qkv_width = (self.heads + 2 * self.kv_heads) * HEAD_DIM
        outputs = {"qkv": qkv_width, "o": self.hidden_size, "gate_up": self.intermediate, "down": self.hidden_size}
        ranges = np.stack([program_ranges(outputs[kind], self.programs) for kind in KINDS])
        sizes = ranges[:, :, 1] - ranges[:, :, 0]
        self.program_rows, self.fewest_rows = int(sizes.max()), int(sizes.min())
        self._ranges = torch.from_numpy(ranges).to(device)
        rows = max(ROWS)
        spans = -(-cfg.max_position_embeddings // ATT_SPAN)
        group = self.heads // self.kv_heads
        bf16 = dict(dtype=torch.bfloat16, device=device)
        self._hidden = torch.empty(rows, self.hidden_size, **bf16)
        self._qkv = torch.empty(rows, qkv_width, **bf16)
        self._attn = torch.empty(rows, self.heads * HEAD_DIM, **bf16)
        self._act = torch.empty(rows, self.intermediate, **bf16)
        self._parts = torch.empty(rows * self.kv_heads * spans, group * (HEAD_DIM + 2), dtype=torch.float32,
                                  device=device)
        self._counters = torch.zeros(2 + rows * self.kv_heads, dtype=torch.int32, device=device)
        rotary = lm.rotary_emb
        self._inv_freq = rotary.inv_freq.to(device, torch.float32).contiguous()
        self._final_norm, self._token_weight = lm.norm.weight, step.token_weight.contiguous()
        attn = lm.layers[0].self_attn
        self._static = dict(
            layers=self._layers.data_ptr(), ranges=self._ranges.data_ptr(), hidden=self._hidden.data_ptr(),
            qkv=self._qkv.data_ptr(), attn=self._attn.data_ptr(), act=self._act.data_ptr(),
            parts=self._parts.data_ptr(), counters=self._counters.data_ptr(), inv_freq=self._inv_freq.data_ptr(),
            final_norm=self._final_norm.data_ptr(), token_weight=self._token_weight.data_ptr(),
            rope_scaling=float(rotary.attention_scaling), attn_scale=float(attn.scaling),
            eps=float(lm.norm.variance_epsilon), layers_n=len(layer_weights), H=self.hidden_size,
            F=self.intermediate, heads=self.heads, kv_heads=self.kv_heads, tokens=self.tokens)
        self._params = {}  # per row count: (the Params buffer on the device, shared-memory bytes)

    @staticmethod
    def suits(step, layer_weights: list[dict]) -> str | None:
        """Why the kernel cannot run this model's step (None: it can): a bf16 model with bf16 or fp8 weights on a
        Hopper GPU, the shapes it was written for, static rotary tables, CuPy."""
        device = step.token_weight.device
        cfg = step.lm.config
        if device.type != "cuda":
            return "not on a CUDA device"
        if torch.cuda.get_device_properties(device).major != 9:
            return "not a Hopper GPU (sm_90)"
        kinds = {w[name][0].dtype for w in layer_weights for name in KINDS}
        if step.token_weight.dtype != torch.bfloat16 or len(kinds) > 1 or kinds - {torch.bfloat16,
                                                                                     torch.float8_e4m3fn}:
            return "not a bf16 model with bf16 or fp8 weights"
        if step.head_dim != HEAD_DIM or step.heads % step.kv_heads or step.heads // step.kv_heads > WARPS:
            return f"head_dim {step.head_dim}, {step.heads} heads over {step.kv_heads} kv heads"
        if any(width % STEP for width in (cfg.hidden_size, cfg.intermediate_size)):
            return f"widths not multiples of {STEP}"
        if step.token_weight.shape[0] > MAX_TOKENS or any(
                w["qkv"][1] is None or any(w[name][1] is not None for name in ("o", "gate_up", "down"))
                for w in layer_weights):
            return "other scored tokens or biases than Qwen2's"
        if "dynamic" in step.lm.rotary_emb.rope_type:
            return "rotary tables that change with the length"
        if _cupy() is None:
            return "CuPy not installed"
        return None

    def runs(self, rows: int) -> bool:
        """Whether the kernel takes a step of `rows` rows."""
        # a row's steps span at most two warps where every program has at least WARPS rows (the kernel's parts)
        return rows in ROWS and self._layout(rows)[0] >= MIN_SLOTS and self.fewest_rows >= WARPS

    def _layout(self, rows: int) -> tuple[int, int, int, int, int, int]:
        return shared_layout(rows, self.hidden_size, self.intermediate, self.heads, self.kv_heads, self.program_rows,
                             self._smem_limit - STATIC_SHARED, self.slot_bytes)

    def _params_for(self, rows: int) -> tuple[torch.Tensor, int]:
        if rows not in self._params:
            slots, x_offset, scales_offset, parts_offset, barrier_offset, total = self._layout(rows)
            params = Params(**self._static, slots=slots, x_offset=x_offset, scales_offset=scales_offset,
                            parts_offset=parts_offset, barrier_offset=barrier_offset)
            raw = torch.frombuffer(bytearray(bytes(params)), dtype=torch.uint8).to(self.device)
            self._params[rows] = raw, total
        return self._params[rows]

    def _compiled(self, rows: int):
        return _kernel(rows, self.heads // self.kv_heads, self.fp8, self.slot_bytes, self.traced,
                       self.device.index or 0, self._smem_limit)

    def trace(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """The TRACE build's record of its last step of `rows` rows: [programs, layers, MARKS] clock cycles at which
        each program's consumers passed each mark, [programs, WARPS] cycles each consumer warp waited for weights."""
        if not self.traced:
            raise RuntimeError("the kernel was not built to trace (LanguageModelMegakernel(..., trace=True))")
        module, _ = self._compiled(rows)
        cupy = _cupy()

        def read(name: str, columns: int) -> np.ndarray:
            table = cupy.ndarray((TRACE_PROGRAMS, columns), dtype=cupy.int64, memptr=module.get_global(name))
            return table.get()[:self.programs]
        layers = self._layers.shape[0]
        marks = read("trace_marks", TRACE_LAYERS * MARKS)[:, :layers * MARKS].reshape(self.programs, layers, MARKS)
        return marks, read("trace_waits", WARPS)

    def __call__(self, embeds, positions, keys, values, context: int):
        rows = embeds.shape[0]
        params, shared = self._params_for(rows)
        _, kernel = self._compiled(rows)
        embeds, positions = embeds.contiguous(), positions.to(torch.int64).contiguous()
        if keys.stride(-1) != 1 or keys.stride(-2) != HEAD_DIM or keys.stride() != values.stride():
            raise ValueError("the KV caches must be [layers, rows, kv heads, positions, 128] with contiguous positions")
        hidden = torch.empty(rows, self.hidden_size, dtype=torch.bfloat16, device=self.device)
        logits = torch.empty(rows, self.tokens, dtype=torch.bfloat16, device=self.device)
        pointer = np.uint64
        arguments = (pointer(params.data_ptr()), pointer(embeds.data_ptr()), pointer(positions.data_ptr()),
                     pointer(keys.data_ptr()), pointer(values.data_ptr()), *map(np.int64, keys.stride()[:3]),
                     np.int32(context), pointer(hidden.data_ptr()), pointer(logits.data_ptr()))
        cupy = _cupy()
        with cupy.cuda.ExternalStream(torch.cuda.current_stream(self.device).cuda_stream):
            kernel((self.programs,), (THREADS,), arguments, shared_mem=shared)
        return hidden, logits
