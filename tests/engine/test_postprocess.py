"""engine.postprocess: streaming DC removal, loudness levelling and peak limiting, checked against its definition."""
import itertools
import math

import numpy as np
import pytest

from engine.config import HOP_SAMPLES, SAMPLE_RATE
from engine.errors import InvalidRequest, RuntimeUnavailable
from engine.postprocess import PostprocessSettings, StreamPostprocessor, postprocess

SETTINGS = PostprocessSettings()
RAMP = SETTINGS.crossfade_samples
LIMIT = 10 ** (SETTINGS.limit_dbfs / 20)
ODD_SIZES = (100, 3200, 1, 0, 5000, 239, 241, 7)


def reference(chunks, s=SETTINGS):
    """The module docstring's definition, written out sample by sample in plain Python floats."""
    dc_prev, gain_prev, level, started, out = 0.0, 0.0, None, False, []
    t = 10 ** (s.limit_dbfs / 20)
    for chunk in chunks:
        x = [float(v) for v in np.asarray(chunk, dtype=np.float32)]
        if not x:
            out.append(np.zeros(0, np.float32))
            continue
        m = math.fsum(x) / len(x)
        dc_new = s.dc_smoothing * dc_prev + (1 - s.dc_smoothing) * m if started else m
        dc_prev = dc_prev if started else dc_new
        rms = math.sqrt(math.fsum((v - dc_new) ** 2 for v in x) / len(x))
        if rms >= 10 ** (s.gate_dbfs / 20):
            level = rms if level is None else s.level_smoothing * level + (1 - s.level_smoothing) * rms
            gain_new = min(max(10 ** (s.target_dbfs / 20) / level, 10 ** (s.min_gain_db / 20)),
                           10 ** (s.max_gain_db / 20))
        else:
            gain_new = 1.0 if level is None else gain_prev
        y = []
        for i, v in enumerate(x):
            w = 0.5 - 0.5 * math.cos(math.pi * (i + 1) / s.crossfade_samples) if i < s.crossfade_samples else 1.0
            d, g = dc_prev + (dc_new - dc_prev) * w, gain_prev + (gain_new - gain_prev) * w
            sample = (v - d) * g
            if abs(sample) > t:
                sample = math.copysign(t + (1 - t) * math.tanh((abs(sample) - t) / (1 - t)), sample)
            y.append(sample)
        dc_prev, gain_prev, started = d, g, True
        out.append(np.array(y, dtype=np.float32))
    return out


def speech_like(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """Two partials plus noise on a DC offset: quiet, then loud (the limiter engages), near-silent, then medium."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    tone = np.sin(2 * np.pi * 140 * t) + 0.4 * np.sin(2 * np.pi * 310 * t + 1) + 0.05 * rng.standard_normal(t.size)
    loudness = np.select([t < 0.5, t < 1.0, t < 1.3], [0.05, 0.6, 1e-5], 0.15)
    return (loudness * tone + 0.03 + 0.01 * np.sin(2 * np.pi * 0.5 * t)).astype(np.float32)


def tone(hz: float, rms: float, seconds: float, offset: float = 0.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (rms * math.sqrt(2) * np.cos(2 * np.pi * hz * t) + offset).astype(np.float32)


def split(signal: np.ndarray, sizes=(HOP_SAMPLES,)) -> list[np.ndarray]:
    """`signal` cut into consecutive chunks of the given sizes, repeated until it is used up."""
    chunks, start = [], 0
    for size in itertools.cycle(sizes):
        if start >= signal.size:
            return chunks
        chunks.append(signal[start:start + size])
        start += size


def stream(chunks, **kwargs) -> list[np.ndarray]:
    processor = StreamPostprocessor(**kwargs)
    return [processor.process(chunk) for chunk in chunks]


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


@pytest.mark.parametrize("sizes", [(HOP_SAMPLES,), ODD_SIZES], ids=["frames", "odd-sizes"])
def test_stream_follows_the_definition_sample_by_sample(sizes):
    chunks = split(speech_like(), sizes)
    expected, got = reference(chunks), stream(chunks, backend="numpy")
    assert np.abs(np.concatenate(expected)).max() > LIMIT  # the limiter is part of what is compared
    for want, have in zip(expected, got, strict=True):
        assert have.dtype == np.float32 and have.shape == want.shape
        np.testing.assert_allclose(have, want, atol=1e-6)


@pytest.mark.parametrize("settings", [PostprocessSettings(crossfade_samples=1),
                                      PostprocessSettings(crossfade_samples=4000, limit_dbfs=-6.0)],
                         ids=["one-sample-ramp", "ramp-longer-than-a-frame"])
def test_other_settings_follow_the_definition(settings):
    """Ramps that end at once, or run on past a whole chunk (the state carries a ramp half done), and a limiter
    that engages often."""
    chunks = split(speech_like(), ODD_SIZES)
    expected, got = reference(chunks, settings), stream(chunks, settings=settings, backend="numpy")
    assert np.abs(np.concatenate(expected)).max() > 10 ** (settings.limit_dbfs / 20)
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_allclose(have, want, atol=1e-6)


def test_first_chunk_fades_in_then_passes_a_signal_already_at_the_target():
    x = tone(300, 10 ** (SETTINGS.target_dbfs / 20), HOP_SAMPLES / SAMPLE_RATE)  # 40 whole periods: gain 1, no DC
    y = StreamPostprocessor(backend="numpy").process(x)
    w = 0.5 - 0.5 * np.cos(np.pi * np.arange(1, RAMP + 1) / RAMP)
    assert abs(y[0]) < 1e-4 < abs(x[0])
    np.testing.assert_allclose(y[:RAMP], x[:RAMP] * w, atol=1e-5)
    np.testing.assert_allclose(y[RAMP:], x[RAMP:], atol=1e-5)


def test_constant_dc_offset_is_removed():
    x = tone(440, 0.05, 2.0, offset=0.25)
    y = np.concatenate(stream(split(x)))
    assert abs(x.mean()) > 0.2 and abs(y.mean()) < 1e-3


@pytest.mark.parametrize("input_rms, output_rms", [(0.05, 0.1), (0.3, 0.1), (0.01, 0.01 * 10 ** (12 / 20))],
                         ids=["raised", "lowered", "max-gain"])
def test_steady_tone_converges_to_the_target_within_the_gain_limits(input_rms, output_rms):
    y = np.concatenate(stream(split(tone(220, input_rms, 3.0))))
    assert rms(y[-SAMPLE_RATE:]) == pytest.approx(output_rms, rel=0.01)


def test_loud_input_is_limited_below_full_scale():
    x = np.random.default_rng(1).uniform(-3, 3, 4 * HOP_SAMPLES).astype(np.float32)
    x[::500] = np.float32(3e38) * np.sign(x[::500])
    for y in stream(split(x, (HOP_SAMPLES, 17))):
        assert y.dtype == np.float32 and np.abs(y).max() < 1


def test_quiet_start_keeps_unity_gain_and_later_quiet_chunks_keep_the_gain_reached():
    quiet = (1e-4 * np.random.default_rng(2).standard_normal(3 * HOP_SAMPLES)).astype(np.float32)
    y = stream(split(quiet))
    first = quiet[:HOP_SAMPLES]
    np.testing.assert_allclose(y[0][RAMP:], first[RAMP:] - first.mean(dtype=np.float64), atol=1e-9)
    assert rms(y[2]) / rms(quiet[-HOP_SAMPLES:]) == pytest.approx(1, abs=1e-3)

    level = tone(300, 0.05, HOP_SAMPLES / SAMPLE_RATE)  # gain 0.1 / 0.05 = 2 after this chunk
    y = stream([level, quiet[:HOP_SAMPLES], quiet[HOP_SAMPLES:2 * HOP_SAMPLES]])
    assert rms(y[2]) / rms(quiet[HOP_SAMPLES:2 * HOP_SAMPLES]) == pytest.approx(2, rel=1e-3)


def test_gain_changes_between_chunks_do_not_step_at_the_joins():
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    x = ((0.02 + 0.3 * (0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t))) * np.sin(2 * np.pi * 100 * t)
         + 0.05 * np.sin(2 * np.pi * 0.3 * t)).astype(np.float32)
    processor, pieces, gains = StreamPostprocessor(backend="numpy"), [], []
    for chunk in split(x):
        pieces.append(processor.process(chunk))
        gains.append(processor.state.gain)
    jumps = np.abs(np.diff(np.concatenate(pieces)))
    at_joins = np.zeros(jumps.size, bool)
    at_joins[HOP_SAMPLES - 1::HOP_SAMPLES] = True
    assert np.abs(np.diff(np.log(gains[1:]))).max() > 0.1  # the gain really changes from chunk to chunk
    assert jumps[at_joins].max() <= jumps[~at_joins].max()


def test_empty_chunk_gives_an_empty_result_and_leaves_the_stream_as_it_was():
    x = speech_like(0.5)
    processor = StreamPostprocessor(backend="numpy")
    first = processor.process(x[:HOP_SAMPLES])
    state = processor.state
    empty = processor.process(np.zeros(0, np.float32))
    assert empty.shape == (0,) and empty.dtype == np.float32 and processor.state == state
    rest = processor.process(x[HOP_SAMPLES:])
    np.testing.assert_array_equal(np.concatenate([first, rest]), np.concatenate(stream(split(x, (HOP_SAMPLES, 10**6)))))


def test_streams_are_independent():
    a, b = split(speech_like(1.0, seed=3)), split(tone(200, 0.02, 1.0, offset=-0.1))
    first, second = StreamPostprocessor(backend="numpy"), StreamPostprocessor(backend="numpy")
    interleaved = [(first.process(x), second.process(y)) for x, y in zip(a, b, strict=True)]
    for got, alone in zip(zip(*interleaved), (stream(a), stream(b))):
        np.testing.assert_array_equal(np.concatenate(got), np.concatenate(alone))


@pytest.mark.parametrize("chunk, message", [
    (np.zeros((2, 100), np.float32), r"shape \(2, 100\) is not 1-D"),
    (np.array([0.1, np.nan], np.float32), "NaN or infinite"),
    ([0.0, -np.inf], "NaN or infinite"),
    (np.arange(10), "int64; give float samples"),
])
def test_bad_chunks_are_refused_naming_the_problem(chunk, message):
    with pytest.raises(InvalidRequest, match=message):
        StreamPostprocessor(backend="numpy").process(chunk)
    with pytest.raises(InvalidRequest, match=message):
        postprocess(chunk)


@pytest.mark.parametrize("field, value", [
    ("target_dbfs", 3.0), ("max_gain_db", -1.0), ("min_gain_db", 6.0), ("gate_dbfs", float("nan")),
    ("level_smoothing", 1.0), ("dc_smoothing", -0.1), ("crossfade_samples", 0), ("crossfade_samples", 2.5),
    ("limit_dbfs", 0.0), ("target_dbfs", "loud"),
])
def test_bad_settings_are_refused_naming_the_field(field, value):
    with pytest.raises(InvalidRequest, match=f"{field}={value!r}"):
        PostprocessSettings(**{field: value})


def test_postprocess_is_the_stream_chunk_by_chunk():
    x = speech_like(1.0)
    np.testing.assert_array_equal(postprocess(x), np.concatenate(stream(split(x), backend="numpy")))
    np.testing.assert_array_equal(postprocess(x, chunk=777), np.concatenate(stream(split(x, (777,)))))
    assert postprocess(np.zeros(0, np.float32)).shape == (0,)
    with pytest.raises(InvalidRequest, match="chunk=0 is not a positive number of samples"):
        postprocess(x, chunk=0)


def cuda_cupy():
    """CuPy when it imports and sees a CUDA device, else None."""
    try:
        import cupy

        return cupy if cupy.cuda.runtime.getDeviceCount() > 0 else None
    except Exception:  # ImportError, or CUDA reporting no driver or device
        return None


def test_unknown_or_unavailable_backends_are_refused():
    with pytest.raises(RuntimeUnavailable, match="unknown postprocessing backend 'torch'"):
        StreamPostprocessor(backend="torch")
    if cuda_cupy() is None:
        assert StreamPostprocessor().backend == "numpy"
        with pytest.raises(RuntimeUnavailable, match="cupy postprocessing backend needs"):
            StreamPostprocessor(backend="cupy")


def test_cupy_backend_matches_numpy():
    pytest.importorskip("cupy")
    cupy = cuda_cupy()
    if cupy is None:
        pytest.skip("CuPy is installed but sees no CUDA device")
    assert StreamPostprocessor().backend == "cupy"
    chunks = split(speech_like(), ODD_SIZES)
    expected = stream(chunks, backend="numpy")
    from_host = stream(chunks, backend="cupy")
    on_device = stream([cupy.asarray(np.repeat(chunk, 2))[::2] for chunk in chunks], backend="cupy")  # strided
    for want, host, device in zip(expected, from_host, on_device, strict=True):
        assert isinstance(host, np.ndarray) and isinstance(device, cupy.ndarray)
        assert host.dtype == device.dtype == np.float32 and host.shape == device.shape == want.shape
        np.testing.assert_allclose(host, want, atol=1e-5)
        np.testing.assert_allclose(cupy.asnumpy(device), want, atol=1e-5)
    with pytest.raises(InvalidRequest, match="NaN or infinite"):
        StreamPostprocessor(backend="cupy").process(cupy.asarray([0.0, cupy.nan], dtype=cupy.float32))
