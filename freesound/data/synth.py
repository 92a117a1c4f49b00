"""A synthetic dataset in the FSDKaggle2019 layout, deterministic per seed.

Each class is a procedural sound (``ClassSignature``): tones or harmonic stacks at a class-specific
frequency, band-limited noise, click trains, attack/decay envelopes, tremolo and vibrato. A clip
mixes 1-3 classes at random levels over background noise; the noisy split has corrupted labels
(see ``corrupt_labels``) and a shifted recording condition (see ``recording_chain``)::

    DIR/train_curated.csv  DIR/train_noisy.csv  DIR/test_labels.csv   fname,labels
    DIR/sample_submission.csv                                         fname + one 0 column per class
    DIR/train_curated/  DIR/train_noisy/  DIR/test/                   44.1 kHz mono PCM_16 wav
    DIR/.synth.json                                                   the arguments (marks DIR as ours)

Randomness is keyed, never sequential: class ``i`` draws from the stream ``(seed, CLASS, i)`` and
clip ``j`` of a split from ``(seed, PLAN | AUDIO, split, j)``, so a clip does not depend on the
order in which clips are made or on the other splits' sizes, and class ``i`` sounds the same
whatever ``num_classes`` is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from scipy import fft

from freesound.data.dataset import FSD2019_CLASSES
from freesound.errors import FreesoundError
from freesound.progress import progress_bar

SAMPLE_RATE = 44100
MIN_DURATION_S = 0.3
MAX_DURATION_S = 12.0
#: P(a clip holds 1, 2, 3 classes).
NUM_LABELS_P = (0.72, 0.2, 0.08)
#: Class anchors (the frequency each class is built around) spread over this range, Hz.
ANCHOR_RANGE_HZ = (90.0, 9000.0)
MANIFEST = ".synth.json"
#: Bumped whenever the same arguments render different audio (2: twins glide in pitch), so an
#: older synth output can be told from a current one (``synth_manifest``).
GENERATOR_VERSION = 2

SPLITS = ("train_curated", "train_noisy", "test")
# Stream keys for np.random.SeedSequence(seed, spawn_key=...): one independent stream per purpose.
_CLASS, _PLAN, _AUDIO = range(3)
_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0


class SynthError(FreesoundError, ValueError):
    """Bad synth arguments, or an output directory that synth must not overwrite."""


@dataclass(frozen=True)
class ClassSignature:
    """The procedural recipe of one class. Frequencies in Hz, times in seconds, gains linear.

    A zero gain (or an empty ``partials_hz``) switches a component off; ``event_rate_hz == 0``
    means one sustained event over the whole segment, otherwise notes repeat at that rate.
    """

    partials_hz: tuple
    partial_gains: tuple
    vibrato_hz: float
    vibrato_depth: float  # fraction of frequency
    noise_band_hz: tuple  # (low, high)
    noise_gain: float
    click_rate_hz: float
    click_band_hz: tuple  # (low, high)
    click_decay_s: float
    click_gain: float
    tremolo_hz: float
    tremolo_depth: float  # 0..1
    event_rate_hz: float
    attack_s: float
    decay_s: float
    #: Pitch glide of the tones within each event: the frequency moves towards
    #: ``(1 + glide)`` times its start with the time constant ``decay_s`` (0: steady pitch).
    glide: float = 0.0
    #: Render backwards in time: the twin of a class, same spectrum, opposite time course.
    reversed: bool = False


@dataclass(frozen=True)
class ClipPlan:
    """What one clip is before it is rendered.

    ``labels`` are the true class indices, ``given`` the ones written to the CSV (they differ only
    for corrupted noisy clips); both are sorted tuples.
    """

    split: str
    index: int
    fname: str
    duration_s: float
    labels: tuple
    given: tuple


@dataclass(frozen=True)
class SynthSummary:
    """What ``synthesize_dataset`` wrote. ``corrupted`` counts noisy clips with wrong/missing labels."""

    root: Path
    classes: tuple
    num_curated: int
    num_noisy: int
    num_test: int
    corrupted: int
    seconds: float

    @property
    def test_labels(self) -> Path:
        return self.root / "test_labels.csv"

    def __str__(self) -> str:
        return (f"{self.num_curated} curated, {self.num_noisy} noisy ({self.corrupted} with corrupted labels) "
                f"and {self.num_test} test clips of {len(self.classes)} classes "
                f"({self.seconds / 60:.1f} min of audio) to {self.root}")


def _generator(seed: int, *key: int) -> np.random.Generator:
    """An independent stream for ``key`` (no global state, no dependence on draw order)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def synth_classes(num_classes: int) -> tuple:
    """The first ``num_classes`` FSDKaggle2019 class names."""
    if not 2 <= num_classes <= len(FSD2019_CLASSES):
        raise SynthError(f"synth needs between 2 and {len(FSD2019_CLASSES)} classes (the FSDKaggle2019 "
                         f"vocabulary), got {num_classes}")
    return FSD2019_CLASSES[:num_classes]


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def class_anchor_hz(class_index: int) -> float:
    """The frequency class ``class_index`` is built around, in Hz.

    A golden-ratio sequence over the log-frequency range keeps any first N anchors well apart
    (the classes stay separable for every N), and does not depend on N.
    """
    position = (0.5 + class_index * _GOLDEN) % 1.0
    low, high = ANCHOR_RANGE_HZ
    return float(low * (high / low) ** position)


def _band(centre_hz: float, rng: np.random.Generator) -> tuple:
    """A (low, high) band around ``centre_hz``, 0.3-1.4 octaves wide, below Nyquist."""
    half_width = 2.0 ** (rng.uniform(0.15, 0.7))
    return (centre_hz / half_width, min(centre_hz * half_width, 0.95 * SAMPLE_RATE / 2))


def class_signature(class_index: int, rng: np.random.Generator) -> ClassSignature:
    """Draw the recipe of one class: its first component sits at ``class_anchor_hz(class_index)``.

    Parameters
    ----------
    class_index : int, >= 0
    rng : the class's own generator (``synthesize_dataset`` keys it by seed and class index)
    """
    anchor = class_anchor_hz(class_index)
    # At least one of tones / noise band / clicks; the first present one carries the anchor.
    present = rng.random(3) < (0.65, 0.5, 0.35)
    if not present.any():
        present[rng.integers(3)] = True
    anchored = int(np.argmax(present))
    centres = [anchor if index == anchored else _log_uniform(rng, *ANCHOR_RANGE_HZ) for index in range(3)]

    partials, gains = (), ()
    if present[0]:
        if rng.random() < 0.6:  # harmonic stack
            ratios = np.arange(1, rng.integers(1, 9) + 1, dtype=float)
        else:  # inharmonic, bell-like
            ratios = np.concatenate([[1.0], np.sort(rng.uniform(1.2, 4.5, rng.integers(1, 5)))])
        freqs = centres[0] * ratios
        keep = freqs < 0.9 * SAMPLE_RATE / 2
        partials = tuple(float(f) for f in freqs[keep])
        gains = tuple(float(g) for g in ratios[keep] ** -rng.uniform(0.5, 2.0))

    sustained = rng.random() < 0.5
    vibrato = rng.random() < 0.3
    tremolo = rng.random() < 0.4
    return ClassSignature(
        partials_hz=partials,
        partial_gains=gains,
        vibrato_hz=rng.uniform(3.0, 8.0) if vibrato else 0.0,
        vibrato_depth=rng.uniform(0.005, 0.03) if vibrato else 0.0,
        noise_band_hz=_band(centres[1], rng),
        noise_gain=float(present[1]) * rng.uniform(0.5, 1.0),
        click_rate_hz=_log_uniform(rng, 2.0, 30.0),
        click_band_hz=_band(centres[2], rng),
        click_decay_s=_log_uniform(rng, 0.002, 0.02),
        click_gain=float(present[2]) * rng.uniform(0.5, 1.0),
        tremolo_hz=rng.uniform(2.0, 12.0) if tremolo else 0.0,
        tremolo_depth=rng.uniform(0.3, 0.9) if tremolo else 0.0,
        event_rate_hz=0.0 if sustained else _log_uniform(rng, 0.5, 6.0),
        attack_s=_log_uniform(rng, 0.005, 0.2) if sustained else _log_uniform(rng, 0.002, 0.03),
        decay_s=_log_uniform(rng, 0.03, 0.5),
    )


# --------------------------------------------------------------------------------------------------
# Rendering: every function returns float32 samples at SAMPLE_RATE.


def _time(n: int) -> np.ndarray:
    """(n,) float32 seconds."""
    return np.arange(n, dtype=np.float32) / np.float32(SAMPLE_RATE)


def _rms(x: np.ndarray) -> float:
    """Root mean square, floored so that silence does not divide by zero."""
    # einsum: one pass, no temporary, and no BLAS threads (unlike np.dot).
    return max(float(np.sqrt(np.einsum("i,i->", x, x) / max(x.size, 1))), 1e-12)


def _unit_rms(x: np.ndarray) -> np.ndarray:
    return x / np.float32(_rms(x))


def _bin_freqs(length: int) -> np.ndarray:
    """(length // 2 + 1,) float32, the frequencies of a real FFT's bins, Hz."""
    return np.arange(length // 2 + 1, dtype=np.float32) * np.float32(SAMPLE_RATE / length)


def _random_spectrum(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size,) complex64, real and imaginary parts uniform in [-1, 1].

    Uniform is cheaper to draw than normal, and every time sample sums many bins, so the noise
    it makes is Gaussian all the same.
    """
    parts = rng.random(2 * size, dtype=np.float32)
    parts *= 2.0
    parts -= 1.0
    return parts.view(np.complex64)


def band_noise(n: int, band_hz: tuple, rng: np.random.Generator) -> np.ndarray:
    """(n,) float32 Gaussian noise band-limited to ``band_hz`` = (low, high) Hz, unit RMS."""
    length = fft.next_fast_len(n, real=True)  # a prime n would be ~50x slower
    low, high = (min(int(np.ceil(f * length / SAMPLE_RATE)), length // 2) for f in band_hz)
    high = max(high, low + 1)  # a band narrower than one bin of a very short clip keeps one bin
    spectrum = np.zeros(length // 2 + 1, dtype=np.complex64)
    spectrum[low:high] = _random_spectrum(high - low, rng)
    return _unit_rms(fft.irfft(spectrum, length)[:n])


def coloured_spectrum(length: int, slope_db_per_octave: float, rng: np.random.Generator) -> np.ndarray:
    """(length // 2 + 1,) complex64 spectrum of Gaussian noise falling ``slope_db_per_octave`` dB per octave.

    Scaled so that its inverse real FFT of ``length`` samples has unit RMS (Parseval).
    """
    freqs = np.maximum(_bin_freqs(length), 20.0)
    exponent = np.float32(slope_db_per_octave / (20 * np.log10(2)))
    spectrum = _random_spectrum(freqs.size, rng) * np.power(freqs / np.float32(1000.0), exponent)
    spectrum[0] = 0  # no DC; and an even length's last bin (Nyquist) would lose its imaginary part
    if length % 2 == 0:
        spectrum[-1] = 0
    # Every other bin stands for itself and its negative-frequency twin.
    return spectrum * np.float32(length / np.sqrt(2 * np.sum(np.abs(spectrum) ** 2)))


def time_since_event(n: int, rate_hz: float, rng: np.random.Generator) -> np.ndarray:
    """(n,) float32 seconds since the latest of a jittered train of events at ``rate_hz``.

    Intervals vary ±15% (log-normal) so trains are not perfectly periodic; the first event falls
    at a random phase at or before the start, so every sample has a latest event.
    """
    period = 1.0 / rate_hz
    intervals = period * np.exp(rng.normal(0.0, 0.15, int(n / SAMPLE_RATE * rate_hz * 1.5) + 3))
    onsets = np.cumsum(intervals) - intervals[0] - rng.uniform(0.0, period)
    # Sample i follows onset k iff i >= ceil(onset_k * rate): mark each onset's first sample, then
    # a running maximum gives every sample its latest onset (much faster than a searchsorted).
    first = np.clip(np.ceil(onsets * SAMPLE_RATE).astype(np.int64), 0, n)
    marker = np.zeros(n + 1, dtype=np.int64)
    np.maximum.at(marker, first, np.arange(onsets.size))
    latest = np.maximum.accumulate(marker[:n])
    return _time(n) - onsets[latest].astype(np.float32)


def _envelope(since_s: np.ndarray, attack_s: float, decay_s: float) -> np.ndarray:
    """Linear attack then exponential decay, evaluated at ``since_s`` seconds after onset."""
    attack, decay = np.float32(attack_s), np.float32(decay_s)
    return np.minimum(since_s / attack, 1.0) * np.exp((attack - np.maximum(since_s, attack)) / decay)


def _tones(n: int, sig: ClassSignature, freq_scale: float, rng: np.random.Generator,
           since_s: np.ndarray | None = None) -> np.ndarray:
    """(n,) float32 sum of the signature's partials, with vibrato, glides and random phases.

    ``since_s`` (n,) seconds since the latest event onset (``time_since_event``) times the glides.
    """
    block = 1024
    blocks = -(-n // block)
    t = (np.arange(blocks * block) / SAMPLE_RATE).reshape(blocks, block)
    # Vibrato and glide as warps of time: the phase of f(1 + d sin(2 pi v t)), and of
    # f(1 + g (1 - exp(-s / decay))) with s restarting at every onset, in closed form.
    warped = t
    if sig.vibrato_hz:
        omega = 2 * np.pi * sig.vibrato_hz
        warped = t + sig.vibrato_depth * (1.0 - np.cos(omega * t)) / omega
    if sig.glide and since_s is not None:
        s = np.zeros(blocks * block)
        s[:n] = since_s
        s = s.reshape(blocks, block)
        # The phase jumps at an onset, where the event's envelope is zero.
        warped = warped + sig.glide * (s - sig.decay_s * -np.expm1(-s / sig.decay_s))
    freqs = np.asarray(sig.partials_hz) * freq_scale
    # Phase = 2 pi f warped(t), split so that float32 stays exact on long clips with no (P, n)
    # float64 pass: the phase at each block start, modulo 2 pi in float64 (few values), plus
    # 2 pi f (warped(t) - warped(block start)) in float32 (under ~3,500 rad: ~2e-4 rad error).
    start = warped[:, :1]
    offsets = rng.uniform(0.0, 1.0, (freqs.size, 1, 1))
    coarse = (2 * np.pi * np.mod(freqs[:, None, None] * start + offsets, 1.0)).astype(np.float32)
    phase = np.multiply((2 * np.pi * freqs).astype(np.float32)[:, None, None], (warped - start).astype(np.float32))
    phase += coarse
    np.sin(phase, out=phase)
    gains = np.asarray(sig.partial_gains) * np.exp(rng.normal(0.0, 0.2, freqs.size))
    # einsum, not @: a BLAS call would start threads that spin on a machine shared with training.
    return np.einsum("p,pn->n", gains.astype(np.float32), phase.reshape(freqs.size, -1))[:n]


def render_source(sig: ClassSignature, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) float32, one class's sound over ``n`` samples, unit RMS.

    Per clip, frequencies jitter by ~3% and rates by ~15% (log-normal), and component gains by
    ~2 dB, so that a class is a distribution, not a template.
    """
    freq_scale = float(np.exp(rng.normal(0.0, 0.03)))
    rate_scale = float(np.exp(rng.normal(0.0, 0.15)))
    since = time_since_event(n, sig.event_rate_hz * rate_scale, rng) if sig.event_rate_hz else None
    x = _tones(n, sig, freq_scale, rng, since) if sig.partials_hz else np.zeros(n, dtype=np.float32)
    if sig.noise_gain:
        x += np.float32(sig.noise_gain) * band_noise(n, tuple(f * freq_scale for f in sig.noise_band_hz), rng)
    if sig.click_gain:
        clicks = band_noise(n, tuple(f * freq_scale for f in sig.click_band_hz), rng)
        clicks *= np.exp(time_since_event(n, sig.click_rate_hz * rate_scale, rng) / np.float32(-sig.click_decay_s))
        x += np.float32(sig.click_gain) * _unit_rms(clicks)
    t = _time(n)
    if since is not None:
        x *= _envelope(since, sig.attack_s, sig.decay_s)
    else:  # one sustained event: attack at the start, a 50 ms release at the end
        x *= np.minimum(np.minimum(t / np.float32(sig.attack_s), (t[-1] - t) / np.float32(0.05)), 1.0)
    if sig.tremolo_hz:
        omega, phase = np.float32(2 * np.pi * sig.tremolo_hz * rate_scale), np.float32(rng.uniform(0.0, 2 * np.pi))
        x *= 1.0 - np.float32(sig.tremolo_depth / 2) * (1.0 + np.sin(omega * t + phase))
    return _unit_rms(np.ascontiguousarray(x[::-1]) if sig.reversed else x)


def twin_signatures(num_classes: int, seed: int) -> tuple:
    """Every class's signature, in twin pairs.

    Class 2m is a percussive sound (events with a sharp attack, a long decay and a pitch glide up
    or down); class 2m+1 is the same sound played backwards (a slow swell cut off sharply, gliding
    the other way). A pair has the same spectrum, and a clip's log-mel reversed in time has the
    same per-band statistics, so a bag-of-bands model cannot tell twins apart: only the time
    course can, which is what a spectrogram CNN should learn. The glide's direction is a local,
    oriented pattern (a first-order feature for a convolution); the envelope alone differs only
    in how fast a band rises and falls, which a linear filter averaged over time cannot see.
    """
    signatures = []
    for i in range(num_classes):
        if i % 2:
            signatures.append(dataclasses.replace(signatures[-1], reversed=True))
            continue
        rng = _generator(seed, _CLASS, i)
        base = class_signature(i, rng)
        partials, gains = base.partials_hz, base.partial_gains
        if not partials:  # every twin has tones to glide: a soft one at the class anchor
            partials, gains = (class_anchor_hz(i),), (0.5,)
        signatures.append(dataclasses.replace(
            base,
            partials_hz=partials,
            partial_gains=gains,
            event_rate_hz=_log_uniform(rng, 0.7, 3.0),
            attack_s=_log_uniform(rng, 0.002, 0.015),
            decay_s=_log_uniform(rng, 0.12, 0.5),
            glide=float(rng.choice((-1.0, 1.0)) * rng.uniform(0.3, 0.6)),
        ))
    return tuple(signatures)


def recording_chain(clip: np.ndarray, active: slice, rng: np.random.Generator, *, shifted: bool) -> np.ndarray:
    """Add a recording condition to a clip whose sources lie in ``clip[active]``.

    Curated/test: pinkish background noise 25-45 dB below the sources inside ``active`` and a
    noise floor 65-80 dB below them outside it (so a 60 dB trim removes the near-silence).
    Shifted (the noisy split): background only 12-30 dB below, over the whole clip; a low-pass
    (1.5-6 kHz) or high-pass (150-800 Hz) colouring of everything; and in 60% of clips mains hum
    (50 or 60 Hz and harmonics, 10-30 dB below) over the whole clip.

    Parameters
    ----------
    clip : (n,) float32, zero outside ``active``

    Returns
    -------
    (n,) float32
    """
    n = clip.size
    length = fft.next_fast_len(n, real=True)
    rms = _rms(clip[active])
    background = coloured_spectrum(length, rng.uniform(-4.0, -1.0), rng)
    if not shifted:
        gain = np.full(n, rms * 10 ** (-rng.uniform(65.0, 80.0) / 20), dtype=np.float32)
        gain[active] = rms * 10 ** (-rng.uniform(25.0, 45.0) / 20)
        return clip + gain * fft.irfft(background, length)[:n]
    # Background (through the near-silence too) and colouring in one pass of the spectrum.
    freqs = np.maximum(_bin_freqs(length), 1.0)
    order = 2 * int(rng.integers(1, 4))
    if rng.random() < 0.5:
        ratio = freqs / np.float32(_log_uniform(rng, 1500.0, 6000.0))  # low-pass
    else:
        ratio = np.float32(_log_uniform(rng, 150.0, 800.0)) / freqs  # high-pass
    spectrum = fft.rfft(clip, length)
    spectrum += np.float32(rms * 10 ** (-rng.uniform(12.0, 30.0) / 20)) * background
    spectrum *= 1.0 / np.sqrt(1.0 + ratio ** order)  # a Butterworth magnitude of that order
    clip = fft.irfft(spectrum, length)[:n]
    if rng.random() < 0.6:
        harmonics = np.arange(1, rng.integers(2, 6) + 1)
        mains = 50.0 if rng.random() < 0.5 else 60.0
        # 2 pi f t in float32 is exact enough here: 300 Hz * 12 s is 3,600 cycles.
        phase = np.multiply((2 * np.pi * mains * harmonics).astype(np.float32)[:, None], _time(n))
        phase += rng.uniform(0.0, 2 * np.pi, (harmonics.size, 1)).astype(np.float32)
        hum = np.einsum("h,hn->n", (1.0 / harmonics).astype(np.float32), np.sin(phase, out=phase))
        clip += np.float32(rms * 10 ** (-rng.uniform(10.0, 30.0) / 20) / _rms(hum)) * hum
    return clip


def render_clip(signatures, duration_s: float, rng: np.random.Generator, *, shifted: bool = False) -> np.ndarray:
    """Mix the classes of one clip into ``duration_s`` seconds of audio.

    The first signature spans the active region at full level; each further one covers a random
    50-100% of it, 0-15 dB lower. In 25% of clips each, a leading and a trailing 5-30% of the
    clip hold no source, only the noise floor (see ``recording_chain``).

    Parameters
    ----------
    signatures : sequence of ClassSignature, 1-3 of them; the first is the loudest
    duration_s : float, seconds
    rng : the clip's own generator
    shifted : the noisy split's recording condition (``recording_chain``)

    Returns
    -------
    (round(duration_s * 44100),) float32, peak at -12..-1 dBFS (shifted: -30..-3 dBFS)
    """
    n = max(int(round(duration_s * SAMPLE_RATE)), 1)
    lead, trail = (int(n * rng.uniform(0.05, 0.3)) if rng.random() < 0.25 else 0 for _ in range(2))
    active = slice(lead, n - trail)
    clip = np.zeros(n, dtype=np.float32)
    mix = clip[active]  # a view: sources are added in place
    for position, sig in enumerate(signatures):
        length = mix.size if position == 0 else int(mix.size * rng.uniform(0.5, 1.0))
        start = rng.integers(0, mix.size - length + 1)
        # Secondary classes sit 0-15 dB below the first, so mixtures range from balanced to faint.
        level = 1.0 if position == 0 else 10 ** (-rng.uniform(0.0, 15.0) / 20)
        mix[start:start + length] += np.float32(level) * render_source(sig, length, rng)
    clip = recording_chain(clip, active, rng, shifted=shifted)
    peak_db = rng.uniform(-30.0, -3.0) if shifted else rng.uniform(-12.0, -1.0)
    return clip * np.float32(10 ** (peak_db / 20) / max(float(np.abs(clip).max()), 1e-12))


def to_pcm16(x: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1] to int16 (rounded, clipped): done here so the bytes never depend on libsndfile."""
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)


def wav_bytes(x: np.ndarray) -> bytes:
    """A 44.1 kHz mono PCM_16 wav file of float32 ``x``, in memory.

    Writing to memory then to disk skips the fsync that ``soundfile.write`` does per file.
    """
    buffer = io.BytesIO()
    sf.write(buffer, to_pcm16(x), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------
# Planning: names, durations and labels, cheap (no audio), so label statistics are testable fast.


def sample_duration(rng: np.random.Generator) -> float:
    """Seconds, log-uniform in [MIN_DURATION_S, MAX_DURATION_S] (about 14% under 0.5 s, 5% over 10 s)."""
    return _log_uniform(rng, MIN_DURATION_S, MAX_DURATION_S)


def corrupt_labels(labels: tuple, num_classes: int, noise_rate: float, rng: np.random.Generator) -> tuple:
    """The noisy split's label noise, one clip at a time.

    With probability ``noise_rate`` the clip's label set is corrupted, otherwise it is returned
    as is. A corrupted single-label clip gets one wrong label (its label replaced by a uniformly
    drawn other class). A corrupted multi-label clip, with equal odds, either loses one of its
    labels (a missing label) or has one replaced by a class it does not hold (a wrong label; if
    it holds every class, it always loses one).
    So a corrupted set always differs from the true one, and the expected fraction of noisy clips
    whose written labels differ from the truth is exactly ``noise_rate``.

    Parameters
    ----------
    labels : sorted tuple of class indices
    """
    if rng.random() >= noise_rate:
        return labels
    victim = rng.integers(len(labels))
    kept = labels[:victim] + labels[victim + 1:]
    # A clip that holds every class has no other class to swap in, so it can only lose one.
    if len(labels) > 1 and (rng.random() < 0.5 or len(labels) == num_classes):
        return kept
    others = np.setdiff1d(np.arange(num_classes), labels)
    return tuple(sorted(kept + (int(rng.choice(others)),)))


def plan_dataset(num_classes: int, num_curated: int, num_noisy: int, num_test: int, seed: int,
                 noise_rate: float) -> tuple:
    """Every clip's name, duration, true and written labels, in split order.

    Clip ``j`` of a split draws everything from its own stream, in the order name, duration,
    labels, label noise: so it is the same clip whatever the other splits' sizes are, and
    ``noise_rate`` changes only the written labels. Its first label is class ``j % num_classes``
    (every class is about equally often a clip's main sound); extra labels (1-3 in all,
    ``NUM_LABELS_P``) are drawn at random. Names are 8 hex digits, distinct across all splits (a
    clash, about one dataset in a million, is redrawn).

    Returns
    -------
    tuple of ClipPlan
    """
    max_labels = min(len(NUM_LABELS_P), num_classes)
    p_labels = np.asarray(NUM_LABELS_P[:max_labels]) / sum(NUM_LABELS_P[:max_labels])
    plans, names = [], set()
    for split_id, (split, count) in enumerate(zip(SPLITS, (num_curated, num_noisy, num_test))):
        for index in range(count):
            rng = _generator(seed, _PLAN, split_id, index)
            name = int(rng.integers(2 ** 32))
            while name in names:
                name = int(rng.integers(2 ** 32))
            names.add(name)
            duration = sample_duration(rng)
            main = index % num_classes
            others = np.delete(np.arange(num_classes), main)
            extra = rng.choice(others, rng.choice(max_labels, p=p_labels), replace=False)
            labels = tuple(sorted([main, *(int(c) for c in extra)]))
            given = corrupt_labels(labels, num_classes, noise_rate, rng) if split == "train_noisy" else labels
            plans.append(ClipPlan(split, index, f"{name:08x}.wav", duration, labels, given))
    return tuple(plans)


# --------------------------------------------------------------------------------------------------
# Writing.


def _check_arguments(num_curated, num_noisy, num_test, seed, noise_rate) -> None:
    for name, value in (("num_curated", num_curated), ("num_noisy", num_noisy), ("num_test", num_test), ("seed", seed)):
        if value < 0:
            raise SynthError(f"synth needs {name} >= 0, got {value}")
    if not 0.0 <= noise_rate <= 1.0:
        raise SynthError(f"synth needs a noise_rate between 0 and 1, got {noise_rate}")


def check_like_arguments(duration_scale: float, seed: int) -> None:
    """Refuse a ``synth --like`` duration scale that is not finite and positive, or a negative seed."""
    if not 0 < duration_scale < math.inf:
        raise SynthError(f"synth needs a finite duration scale > 0, got {duration_scale}")
    if seed < 0:
        raise SynthError(f"synth needs seed >= 0, got {seed}")


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to replace a directory synth did not write (it might be a real dataset)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SynthError(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise SynthError(f"{out_dir} is not empty and was not written by freesound synth; "
                         "choose another directory or empty it first")


def _labels_frame(plans, classes, attribute: str) -> pd.DataFrame:
    rows = sorted((p.fname, ",".join(classes[c] for c in getattr(p, attribute))) for p in plans)
    return pd.DataFrame(rows, columns=["fname", "labels"])


def _write_tables(root: Path, plans, classes) -> None:
    """The CSVs, rows sorted by fname like FSDKaggle2019's."""
    by_split = {split: [p for p in plans if p.split == split] for split in SPLITS}
    _labels_frame(by_split["train_curated"], classes, "given").to_csv(root / "train_curated.csv", index=False)
    _labels_frame(by_split["train_noisy"], classes, "given").to_csv(root / "train_noisy.csv", index=False)
    test = _labels_frame(by_split["test"], classes, "labels")
    test.to_csv(root / "test_labels.csv", index=False)
    submission = pd.DataFrame(0, index=range(len(test)), columns=list(classes))
    submission.insert(0, "fname", test.fname)
    submission.to_csv(root / "sample_submission.csv", index=False)


def _write_clip(plan: ClipPlan, signatures: tuple, seed: int, staging: Path) -> None:
    """Render one planned clip and write its wav (top level, so worker processes can run it)."""
    rng = _generator(seed, _AUDIO, SPLITS.index(plan.split), plan.index)
    # Shuffle the mix order so the loudest class is not always the clip's `index % C` class.
    order = rng.permutation(plan.labels)
    audio = render_clip([signatures[c] for c in order], plan.duration_s, rng, shifted=plan.split == "train_noisy")
    (staging / plan.split / plan.fname).write_bytes(wav_bytes(audio))


def synth_manifest(*, num_classes: int, num_curated: int, num_noisy: int, num_test: int, seed: int,
                   noise_rate: float = 0.3) -> dict:
    """What ``synthesize_dataset`` records in ``DIR/.synth.json``: its arguments and the generator
    version. Equal manifests mean byte-identical datasets."""
    return {"generator": "freesound.data.synth", "version": GENERATOR_VERSION, "num_classes": num_classes,
            "num_curated": num_curated, "num_noisy": num_noisy, "num_test": num_test, "seed": seed,
            "noise_rate": noise_rate}


def read_synth_manifest(root) -> dict | None:
    """The manifest of the synth output in ``root``, or None when there is none; ``SynthError`` when
    it cannot be read."""
    try:
        return json.loads((Path(root) / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise SynthError(f"cannot read {Path(root) / MANIFEST}: {error}") from error


def synthesize_dataset(out_dir, *, num_classes: int = 20, num_curated: int = 400, num_noisy: int = 600,
                       num_test: int = 200, seed: int = 0, noise_rate: float = 0.3, workers: int = 1,
                       progress: bool = True) -> SynthSummary:
    """Write a synthetic FSDKaggle2019-layout dataset to ``out_dir`` (see the module docstring).

    The dataset is built in a temporary sibling directory and renamed into place, so an
    interrupted run leaves no half dataset; an existing ``out_dir`` is replaced only if it is
    empty or an earlier synth output. Same arguments, byte-identical files, whatever ``workers``.

    Parameters
    ----------
    out_dir : path
    num_classes : 2-80, the first N FSDKaggle2019 class names
    num_curated, num_noisy, num_test : clips per split
    seed : int >= 0
    noise_rate : probability that a noisy clip's labels are corrupted (``corrupt_labels``)
    workers : processes rendering clips (1: render in this process)
    progress : show a progress bar on stderr (``freesound.progress``)
    """
    classes = synth_classes(num_classes)
    _check_arguments(num_curated, num_noisy, num_test, seed, noise_rate)
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    signatures = twin_signatures(num_classes, seed)
    plans = plan_dataset(num_classes, num_curated, num_noisy, num_test, seed, noise_rate)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.", dir=out_dir.parent) as tmp:
        staging = Path(tmp) / "dataset"
        for split in SPLITS:
            (staging / split).mkdir(parents=True)
        write = partial(_write_clip, signatures=signatures, seed=seed, staging=staging)
        with ProcessPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
            written = pool.map(write, plans, chunksize=8) if pool else map(write, plans)
            for _ in progress_bar(written, total=len(plans), desc="synth", unit="clip", enabled=progress):
                pass
        _write_tables(staging, plans, classes)
        manifest = synth_manifest(num_classes=num_classes, num_curated=num_curated, num_noisy=num_noisy,
                                  num_test=num_test, seed=seed, noise_rate=noise_rate)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out_dir.exists():
            os.replace(out_dir, Path(tmp) / "previous")  # removed with tmp
        os.replace(staging, out_dir)

    return SynthSummary(
        root=out_dir, classes=classes, num_curated=num_curated, num_noisy=num_noisy, num_test=num_test,
        corrupted=sum(p.given != p.labels for p in plans),
        seconds=sum(max(round(p.duration_s * SAMPLE_RATE), 1) / SAMPLE_RATE for p in plans),
    )
