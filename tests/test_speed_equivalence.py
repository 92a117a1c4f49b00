"""The fast paths compute what the plain ones do.

The front end's FFT/mel/trim internals against librosa written out directly, the vectorised
network-input builder and tiler against the per-window functions, and the Tagger's CPU inference
copy (folded batch norms, channels-last) against the model itself.
"""

import copy

import librosa
import numpy as np
import pytest
import torch

from benchmarks.reference import reference_predict
from conftest import random_model
from freesound.audio import AudioConfig, mel_filterbank, power_to_db, to_log_mel, trim_to_min_length
from freesound.audio import trim as audio_trim
from freesound.audio.network_input import to_network_input, to_network_input_batch
from freesound.errors import FreesoundWarning
from freesound.predict import Tagger, make_tiles, tile_layout

SR = 44100
TOLERANCE_DB = 1e-3


def librosa_log_mel(y, config=AudioConfig()):
    mel = librosa.feature.melspectrogram(
        y=y, sr=config.sample_rate, n_fft=config.n_fft, hop_length=config.hop_length, n_mels=config.n_mels,
        fmin=config.fmin, fmax=config.fmax, center=True, pad_mode=config.pad_mode, htk=False, norm="slaney",
        power=2.0,
    )
    return librosa.power_to_db(mel, ref=config.ref, amin=config.amin, top_db=config.top_db)


def signals():
    rng = np.random.default_rng(0)
    t = np.arange(int(2.3 * SR)) / SR
    steep = np.cumsum(np.cumsum(rng.standard_normal(t.size)))
    burst = np.zeros(t.size)
    burst[SR:SR + 3000] = rng.standard_normal(3000)
    return {
        "noise": 0.3 * rng.standard_normal(t.size),
        "tone": 0.5 * np.sin(2 * np.pi * 440 * t),
        "chirp": 0.5 * np.sin(2 * np.pi * (100 + 3000 * t) * t),
        # A float32 FFT misses this one by ~0.1 dB: the FFT has to run in float64, as librosa's.
        "steep_spectrum": 0.5 * steep / np.abs(steep).max(),
        "burst_in_silence": burst,
        "silence": np.zeros(t.size),
        "near_silence": 1e-6 * rng.standard_normal(t.size),
        "odd_length": 0.2 * rng.standard_normal(2561),
    }


@pytest.mark.parametrize("name", list(signals()))
def test_to_log_mel_matches_librosa(name):
    y = signals()[name].astype(np.float32)
    ours = to_log_mel(y)
    expected = librosa_log_mel(y)
    assert ours.dtype == np.float32 and ours.shape == expected.shape
    assert np.abs(ours - expected).max() <= TOLERANCE_DB


@pytest.mark.parametrize("config", [
    AudioConfig(pad_mode="constant"),
    AudioConfig(n_fft=1024, hop_length=256, n_mels=64, fmin=50.0, fmax=8000.0),
    AudioConfig(n_mels=256),  # some filters are all zero: their rows stay at the floor
    AudioConfig(ref=2.0, top_db=60.0),
])
def test_to_log_mel_other_configs(config):
    y = signals()["noise"].astype(np.float32)
    np.testing.assert_allclose(to_log_mel(y, config), librosa_log_mel(y, config), atol=TOLERANCE_DB, rtol=0)


def test_to_log_mel_float64_and_short_inputs():
    y = signals()["chirp"]
    assert np.abs(to_log_mel(y) - librosa_log_mel(y.astype(np.float32))).max() <= TOLERANCE_DB
    short = y[:1000].astype(np.float32)  # shorter than one FFT frame: librosa's own path
    with pytest.warns(UserWarning):
        np.testing.assert_allclose(to_log_mel(short), librosa_log_mel(short), atol=TOLERANCE_DB, rtol=0)


def test_to_log_mel_rejects_non_finite_like_librosa():
    y = signals()["noise"].astype(np.float32)
    y[5000] = np.nan
    with pytest.raises(librosa.util.exceptions.ParameterError):
        to_log_mel(y)


def test_power_to_db_is_librosas_to_the_bit():
    rng = np.random.default_rng(1)
    power = (rng.random((128, 50)) ** 8).astype(np.float32)
    power[0, :5] = 0.0
    for config in (AudioConfig(), AudioConfig(ref=3.0), AudioConfig(amin=1e-6, top_db=40.0)):
        expected = librosa.power_to_db(power, ref=config.ref, amin=config.amin, top_db=config.top_db)
        np.testing.assert_array_equal(power_to_db(power, config), expected)
        np.testing.assert_array_equal(
            power_to_db(power.astype(np.float64), config),
            librosa.power_to_db(power.astype(np.float64), ref=config.ref, amin=config.amin,
                                top_db=config.top_db).astype(np.float32))


def test_mel_filterbank_is_a_fresh_copy():
    filters = mel_filterbank()
    np.testing.assert_array_equal(filters, librosa.filters.mel(sr=SR, n_fft=2560, n_mels=128, fmin=20, fmax=22050))
    filters[:] = 0  # callers may scribble on it
    assert mel_filterbank().any()


def trim_cases():
    rng = np.random.default_rng(2)
    cases = [np.zeros(SR, dtype=np.float32), np.ones(1000, dtype=np.float32), np.zeros(1, dtype=np.float32)]
    for _ in range(60):
        n = int(rng.integers(1, 40000))
        y = (rng.standard_normal(n) * 10 ** rng.uniform(-4, 0)).astype(np.float32)
        loud = slice(int(rng.integers(0, n)), None)
        y[loud][:int(rng.integers(1, 5000))] *= np.float32(10 ** rng.uniform(0, 4))
        if rng.random() < 0.3:
            y[:n // 3] = 0
        cases.append(y)
    # Quiet frames sitting right at the -60 dB threshold: decided in librosa's float32 arithmetic.
    for _ in range(40):
        loud = rng.standard_normal(2048).astype(np.float32)
        quiet = rng.standard_normal(20000).astype(np.float32)
        y = np.zeros(20000, dtype=np.float32)
        y[8192:8192 + 2048] = loud
        scale = np.sqrt(np.mean(loud.astype(np.float64) ** 2) * 1e-6 / np.mean(quiet.astype(np.float64) ** 2))
        scale *= 1 + rng.uniform(-3e-5, 3e-5)
        y[:4000], y[16000:] = quiet[:4000] * scale, quiet[16000:] * scale
        cases.append(y)
    return cases


def test_trim_indices_are_librosas_exactly():
    for y in trim_cases():
        _, (start, end) = librosa.effects.trim(y, top_db=60)
        assert audio_trim._trim_bounds(y, 60.0) == (int(start), int(end))
    y = trim_cases()[10]
    _, (start, end) = librosa.effects.trim(y, top_db=30)
    assert audio_trim._trim_bounds(y, 30.0) == (int(start), int(end))


def librosa_trim_to_min_length(y, min_samples=22050):
    trimmed, (start, end) = librosa.effects.trim(y, top_db=60)
    if len(trimmed) >= min_samples:
        return trimmed
    if len(y) >= min_samples:
        left = min(max(0, (start + end) // 2 - min_samples // 2), len(y) - min_samples)
        return y[left:left + min_samples]
    pad = min_samples - len(y)
    return np.pad(y, (pad // 2, pad - pad // 2))


def test_trim_to_min_length_equals_the_librosa_rule():
    for y in trim_cases():
        np.testing.assert_array_equal(trim_to_min_length(y), librosa_trim_to_min_length(y))


def stack_of_windows(width=900, dtype=np.float32):
    logmel = np.random.default_rng(3).uniform(-80, 0, (128, width)).astype(dtype)
    return np.lib.stride_tricks.sliding_window_view(logmel, 256, axis=1)[:, ::64].transpose(1, 0, 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_network_input_batch_equals_per_window(dtype):
    windows = stack_of_windows(dtype=dtype)
    batch = to_network_input_batch(windows)
    assert batch.shape == (len(windows), 3, 128, 256) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch, np.stack([to_network_input(w) for w in windows]))
    np.testing.assert_array_equal(to_network_input_batch(windows[:1])[0], to_network_input(windows[0]))


def test_network_input_batch_rejects_bad_shapes():
    with pytest.raises(ValueError):
        to_network_input_batch(np.zeros((128, 256), dtype=np.float32))
    with pytest.raises(ValueError):
        to_network_input_batch(np.zeros((2, 128, 5), dtype=np.float32))


@pytest.mark.parametrize("width", [1, 100, 255, 256, 257, 700, 1500])
def test_make_tiles_equals_per_tile_loop(width):
    logmel = np.random.default_rng(width).uniform(-80, 0, (128, width)).astype(np.float32)
    n_tiles, left, right = tile_layout(width)
    padded = np.pad(logmel, ((0, 0), (left, right)), constant_values=logmel.min())
    expected = np.stack([to_network_input(padded[:, i * 64:i * 64 + 256]) for i in range(n_tiles)])
    np.testing.assert_array_equal(make_tiles(logmel), expected)


def logmels():
    rng = np.random.default_rng(4)
    return [rng.uniform(-80, 0, (128, w)).astype(np.float32) for w in (30, 256, 257, 700, 1500, 90, 400)]


@pytest.mark.parametrize("batch_size", [1, 5, 16, 64])
def test_tagger_full_batches_match_reference(batch_size):
    model = random_model()
    tagger = Tagger([model], classes=list("abcde"), batch_size=batch_size)
    clips = logmels()
    ours = tagger.predict_spectrograms(clips)
    expected = np.stack([reference_predict([model], m) for m in clips])
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)
    per_tile = tagger.tile_probabilities(clips)
    assert [p.shape for p in per_tile] == [(1, tile_layout(m.shape[1])[0], 5) for m in clips]
    assert tagger.tile_probabilities([]) == []


def test_tagger_leaves_the_model_alone_and_follows_weight_changes():
    model = random_model()
    before = copy.deepcopy(model.state_dict())
    tagger = Tagger([model], classes=list("abcde"))
    clip = logmels()[3]
    first = tagger.predict_spectrograms([clip])
    # The model itself keeps its batch norms, layout and weights.
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
        if value.dim() == 4:
            assert value.is_contiguous()
    # Changing the weights in place (an optimizer step, load_state_dict) invalidates the copy.
    with torch.no_grad():
        model.conv1.conv1[0].weight.mul_(-1.5)
        model.fc[5].bias.add_(0.3)
    second = tagger.predict_spectrograms([clip])
    assert np.abs(second - first).max() > 1e-3
    np.testing.assert_allclose(second[0], reference_predict([model], clip), atol=1e-5, rtol=0)
    model.load_state_dict(before)
    np.testing.assert_allclose(tagger.predict_spectrograms([clip]), first, atol=1e-6, rtol=0)


class Untraceable(torch.nn.Module):
    """Data-dependent control flow: FX cannot trace it, so the Tagger runs it as it is."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, x):
        x = self.bn(self.conv(x))
        if x.mean() > 1e9:
            x = x * 0
        return (self.fc(x.mean((2, 3))),)


def test_tagger_runs_untraceable_models_unfused():
    torch.manual_seed(0)
    model = Untraceable().eval()
    clips = logmels()[:3]
    tagger = Tagger([model], classes=list("abcde"), batch_size=4)
    with pytest.warns(FreesoundWarning, match="Untraceable cannot be traced.*TraceError.*runs unfused") as caught:
        ours = tagger.predict_spectrograms(clips)
        tagger.predict_spectrograms(clips)
    assert len(caught) == 1  # once per model, not per batch
    np.testing.assert_allclose(ours, np.stack([reference_predict([model], m) for m in clips]), atol=1e-5, rtol=0)
