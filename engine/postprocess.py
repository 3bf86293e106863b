"""Streaming audio postprocessing: DC removal, loudness levelling and a soft peak limiter, one chunk at a time.

One StreamPostprocessor per stream (24 kHz float32 mono); chunks of any length, 0 included (an empty result, state
unchanged). The NumPy and CuPy (CUDA) backends share the scalar math and agree to ~1e-7. Per chunk x of n samples,
with R = crossfade_samples, t = 10**(limit_dbfs/20) and the stream's state (dc_prev, gain_prev, level):

1. m = mean(x) (float64). dc_new = m on the first chunk (which also sets dc_prev = m: no DC ramp), else
   dc_new = s*dc_prev + (1-s)*m with s = dc_smoothing.
2. w[i] = 0.5 - 0.5*cos(pi*(i+1)/R) for i < R, else 1.
3. d[i] = dc_prev + (dc_new - dc_prev)*w[i]; c = x - d.
4. rms = sqrt(mean((x - dc_new)**2)) (float64). If rms >= 10**(gate_dbfs/20): level = rms on the first such chunk,
   else s_l*level + (1-s_l)*rms with s_l = level_smoothing, and gain_new = 10**(target_dbfs/20)/level clamped to
   [10**(min_gain_db/20), 10**(max_gain_db/20)]. Below the gate gain_new = gain_prev, or 1.0 while no chunk of the
   stream has passed the gate.
5. g[i] = gain_prev + (gain_new - gain_prev)*w[i]. A stream starts at gain_prev = 0, so its first R samples fade in;
   later gain and DC changes are crossfaded over R samples from each join, so nothing steps between chunks.
6. y = c*g; where |y| > t, y = sign(y)*(t + (1-t)*tanh((|y|-t)/(1-t))); the float32 result is clipped to the largest
   float32 below 1, so |output| < 1 always.

The state carried forward is the value reached at the chunk's last sample: dc_prev = d[n-1], gain_prev = g[n-1]
(equal to dc_new and gain_new unless the chunk is shorter than R, when the next chunk ramps on from there).
"""
from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

import numpy as np

from engine.errors import InvalidRequest, RuntimeUnavailable

BACKENDS = ("auto", "numpy", "cupy")
CEILING = 1 - 2**-24  # the largest float32 below 1
BLOCK = 256           # CUDA threads per block
# field: (lowest allowed, highest allowed, whether the highest itself is allowed)
SETTING_RANGES = {
    "target_dbfs": (-60.0, 0.0, True), "max_gain_db": (0.0, 40.0, True), "min_gain_db": (-40.0, 0.0, True),
    "gate_dbfs": (-120.0, 0.0, True), "level_smoothing": (0.0, 1.0, False), "dc_smoothing": (0.0, 1.0, False),
    "crossfade_samples": (1, 24000, True), "limit_dbfs": (-20.0, 0.0, False),
}


@dataclass(frozen=True)
class PostprocessSettings:
    """How a stream is levelled and limited (see the module docstring for the exact definition)."""

    target_dbfs: float = -20.0     # RMS loudness target
    max_gain_db: float = 12.0
    min_gain_db: float = -12.0
    gate_dbfs: float = -50.0       # quieter chunks (RMS after DC removal) leave the gain unchanged
    level_smoothing: float = 0.8   # per-chunk exponential smoothing of the measured RMS
    dc_smoothing: float = 0.9      # per-chunk exponential smoothing of the DC estimate
    crossfade_samples: int = 240   # 10 ms at 24 kHz: gain and DC changes ramp over this many samples
    limit_dbfs: float = -1.0       # soft peak limiter threshold

    def __post_init__(self):
        for name, (low, high, high_allowed) in SETTING_RANGES.items():
            value, whole = getattr(self, name), name == "crossfade_samples"
            allowed = (isinstance(value, numbers.Integral if whole else numbers.Real) and not isinstance(value, bool)
                       and (low <= value <= high if high_allowed else low <= value < high))
            if not allowed:
                raise InvalidRequest(f"postprocess setting {name}={value!r} is not allowed; use "
                                     f"{'an integer with ' if whole else ''}{low:g} <= {name} "
                                     f"{'<=' if high_allowed else '<'} {high:g}")


@dataclass(frozen=True)
class StreamState:
    """What a stream carries from one chunk to the next."""

    dc: float | None = None     # DC estimate at the last sample; None before the first chunk
    gain: float = 0.0           # gain at the last sample; 0 so that the stream fades in
    level: float | None = None  # smoothed RMS; None until a chunk passes the gate


@dataclass(frozen=True)
class ChunkRamps:
    """The DC and gain a chunk ramps between (steps 3 and 5)."""

    dc_prev: float
    dc_new: float
    gain_prev: float
    gain_new: float


def _ramp_weight(i: int, ramp: int) -> float:
    """w[i] of step 2."""
    return 0.5 - 0.5 * math.cos(math.pi * (i + 1) / ramp) if i < ramp else 1.0


def plan_chunk(settings: PostprocessSettings, state: StreamState, n: int, total: float,
               total_squares: float) -> tuple[ChunkRamps, StreamState]:
    """The ramps of a chunk of n > 0 samples with sum `total` and sum of squares `total_squares`, and the state after
    it: steps 1 and 4, the scalar math that both backends share."""
    mean = total / n
    if state.dc is None:
        dc_prev = dc_new = mean
    else:
        dc_prev, dc_new = state.dc, settings.dc_smoothing * state.dc + (1 - settings.dc_smoothing) * mean
    # mean((x - dc_new)**2) from the two sums: the variance plus the squared offset of dc_new from the mean
    rms = math.sqrt(max(total_squares / n - mean * mean, 0.0) + (mean - dc_new) ** 2)
    level, gain_new = state.level, (1.0 if state.level is None else state.gain)
    if rms >= 10 ** (settings.gate_dbfs / 20):
        smoothing = settings.level_smoothing
        level = rms if level is None else smoothing * level + (1 - smoothing) * rms
        gain_new = min(max(10 ** (settings.target_dbfs / 20) / level, 10 ** (settings.min_gain_db / 20)),
                       10 ** (settings.max_gain_db / 20))
    w_last = _ramp_weight(n - 1, settings.crossfade_samples)
    after = StreamState(dc=dc_prev + (dc_new - dc_prev) * w_last,
                        gain=state.gain + (gain_new - state.gain) * w_last, level=level)
    return ChunkRamps(dc_prev, dc_new, state.gain, gain_new), after


def _apply_numpy(x64: np.ndarray, ramps: ChunkRamps, settings: PostprocessSettings) -> np.ndarray:
    """Steps 2, 3, 5 and 6 on the CPU, in float64, for the chunk as float64. Past the first R samples w = 1, so the
    ramps are constants there (the same float64 operations, done once), and the limiter's tanh runs only where
    |y| > t: the same samples, bit for bit, in less than half the time of evaluating every step on every sample."""
    n, ramp = x64.shape[0], settings.crossfade_samples
    head = min(n, ramp)
    w = 0.5 - 0.5 * np.cos(np.pi * np.arange(1, head + 1, dtype=np.float64) / ramp)
    y = np.empty(n)
    y[:head] = ((x64[:head] - (ramps.dc_prev + (ramps.dc_new - ramps.dc_prev) * w))
                * (ramps.gain_prev + (ramps.gain_new - ramps.gain_prev) * w))
    y[head:] = ((x64[head:] - (ramps.dc_prev + (ramps.dc_new - ramps.dc_prev)))
                * (ramps.gain_prev + (ramps.gain_new - ramps.gain_prev)))
    t = 10 ** (settings.limit_dbfs / 20)
    loud = np.flatnonzero(np.abs(y) > t)
    if loud.size:
        y[loud] = np.copysign(t + (1 - t) * np.tanh((np.abs(y[loud]) - t) / (1 - t)), y[loud])
    return np.clip(y, -CEILING, CEILING, out=y).astype(np.float32)


CUDA_SOURCE = r"""
extern "C" __global__ void postprocess_chunk(const float* x, float* y, const int n, const int ramp,
                                             const double dc_prev, const double dc_new, const double gain_prev,
                                             const double gain_new, const double t, const double ceiling) {
    const int i = blockDim.x * blockIdx.x + threadIdx.x;
    if (i >= n) return;
    const double w = i < ramp ? 0.5 - 0.5 * cospi((i + 1.0) / ramp) : 1.0;
    double v = (x[i] - (dc_prev + (dc_new - dc_prev) * w)) * (gain_prev + (gain_new - gain_prev) * w);
    const double magnitude = fabs(v);
    if (magnitude > t) v = copysign(t + (1.0 - t) * tanh((magnitude - t) / (1.0 - t)), v);
    y[i] = (float)fmin(fmax(v, -ceiling), ceiling);
}
"""


@functools.cache
def _cuda_kernel():
    """The per-sample kernel of the CuPy backend, built once per process."""
    import cupy

    return cupy.RawKernel(CUDA_SOURCE, "postprocess_chunk")


def _apply_cuda(x, ramps: ChunkRamps, settings: PostprocessSettings):
    """Steps 2, 3, 5 and 6 on the GPU: one thread per sample, in float64, for a float32 cupy array x."""
    import cupy

    x = cupy.ascontiguousarray(x)  # the kernel reads x[i] as plain memory, without strides
    y = cupy.empty_like(x)
    n = x.shape[0]
    _cuda_kernel()(((n + BLOCK - 1) // BLOCK,), (BLOCK,),
                  (x, y, np.int32(n), np.int32(settings.crossfade_samples), np.float64(ramps.dc_prev),
                   np.float64(ramps.dc_new), np.float64(ramps.gain_prev), np.float64(ramps.gain_new),
                   np.float64(10 ** (settings.limit_dbfs / 20)), np.float64(CEILING)))
    return y


def _load_cupy():
    """The cupy module, when it is installed and sees a CUDA device."""
    try:
        import cupy
    except ImportError as error:
        raise RuntimeUnavailable(f"the cupy postprocessing backend needs CuPy, which cannot be imported ({error}); "
                                 "install djz-vibevoice[gpu] or use backend 'numpy'") from error
    try:
        devices = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as error:
        raise RuntimeUnavailable(f"the cupy postprocessing backend needs a CUDA device; CUDA reports {error}; "
                                 "use backend 'numpy'") from error
    if devices == 0:
        raise RuntimeUnavailable("the cupy postprocessing backend needs a CUDA device and none is visible; "
                                 "use backend 'numpy'")
    return cupy


class StreamPostprocessor:
    """Postprocesses one stream chunk by chunk; `.backend` names the backend in use ('numpy' or 'cupy')."""

    def __init__(self, settings: PostprocessSettings = PostprocessSettings(), backend: str = "auto"):
        if backend not in BACKENDS:
            raise RuntimeUnavailable(f"unknown postprocessing backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.settings, self.state, self._cupy = settings, StreamState(), None
        if backend != "numpy":
            try:
                self._cupy = _load_cupy()
            except RuntimeUnavailable:
                if backend == "cupy":
                    raise
        self.backend = "numpy" if self._cupy is None else "cupy"

    def process(self, chunk):
        """The chunk postprocessed: float32, the same length, the same kind of array (numpy or cupy) as given."""
        on_gpu = self._cupy is not None and isinstance(chunk, self._cupy.ndarray)
        x = _checked_samples(chunk if on_gpu else np.asarray(chunk), self._cupy if on_gpu else np)
        if x.shape[0] == 0:
            return x
        if self._cupy is not None:
            x = self._cupy.asarray(x)
        x64 = x.astype(np.float64)
        ramps, self.state = plan_chunk(self.settings, self.state, x.shape[0], float(x64.sum()),
                                       float((x64 * x64).sum()))
        if self._cupy is None:
            return _apply_numpy(x64, ramps, self.settings)
        y = _apply_cuda(x, ramps, self.settings)
        return y if on_gpu else self._cupy.asnumpy(y)


def _checked_samples(samples, xp):
    """`samples` (a numpy or cupy array, `xp` its module) as float32, refused unless 1-D, float and finite."""
    if samples.ndim != 1:
        raise InvalidRequest(f"audio chunk of shape {tuple(samples.shape)} is not 1-D; give mono samples [n]")
    if samples.dtype.kind != "f":
        raise InvalidRequest(f"audio chunk samples are {samples.dtype}; give float samples in [-1, 1]")
    if not bool(xp.isfinite(samples).all()):
        raise InvalidRequest("audio chunk contains NaN or infinite samples; give finite samples in [-1, 1]")
    return samples.astype(np.float32, copy=False)


def postprocess(audio, settings: PostprocessSettings = PostprocessSettings(), chunk: int = 3200) -> np.ndarray:
    """A whole clip through one NumPy StreamPostprocessor in chunks of `chunk` samples, as a stream would be."""
    if not isinstance(chunk, int) or chunk <= 0:
        raise InvalidRequest(f"chunk={chunk!r} is not a positive number of samples; use e.g. 3200 (one frame)")
    audio = _checked_samples(np.asarray(audio), np)
    stream = StreamPostprocessor(settings, backend="numpy")
    pieces = [stream.process(audio[start:start + chunk]) for start in range(0, audio.shape[0], chunk)]
    return np.concatenate(pieces) if pieces else audio
