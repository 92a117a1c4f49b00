"""The steps EfficientAT's front end adds to the method's (``AudioConfig``'s added fields).

EfficientAT (Schmid et al. 2023) computes its log-mels with ``AugmentMelSTFT``: pre-emphasis as a
convolution with the kernel ``[-0.97, 1]``, ``torch.stft`` with a symmetric Hann window shorter
than the frame, Kaldi's mel filterbank (``torchaudio.compliance.kaldi.get_mel_banks``, padded with
a zero column for the Nyquist bin), ``ln(mel + 1e-5)`` and ``(x + 4.5) / 5``. Here each is a NumPy
function of the config's numbers, with no torch or torchaudio; ``freesound.audio.logmel.to_log_mel``
chains them when a config sets any of them (``uses_added_steps``), e.g. the ``efficientat`` preset
``freesound.config.EFFICIENTAT_AUDIO``.
"""

from __future__ import annotations

import functools

import numpy as np

from freesound.config import _ADDED_AUDIO_DEFAULTS, AudioConfig

#: The added fields this module's steps read.
_STEP_FIELDS = ("preemphasis", "win_length", "periodic_window", "mel_scale", "log", "log_offset", "norm_shift",
                "norm_scale")


def uses_added_steps(config: AudioConfig) -> bool:
    """Whether ``config`` sets any log-mel step beyond the method's (pre-emphasis, a shorter or
    symmetric window, Kaldi mels, the offset log, a normalisation)."""
    return any(getattr(config, name) != _ADDED_AUDIO_DEFAULTS[name] for name in _STEP_FIELDS)


def preemphasize(y: np.ndarray, coefficient: float) -> np.ndarray:
    """``y[n] - coefficient * y[n - 1]`` for ``n = 1 .. len(y) - 1``: float32, one sample shorter
    (a valid convolution with ``[-coefficient, 1]``, as EfficientAT's); ``y`` itself for 0."""
    y = np.asarray(y, dtype=np.float32)
    if coefficient == 0:
        return y
    return y[1:] - np.float32(coefficient) * y[:-1]


def frame_window(n_fft: int, win_length: int, periodic: bool) -> np.ndarray:
    """A Hann window of ``win_length`` samples (0: ``n_fft``; periodic or symmetric) centred in
    ``n_fft`` zeros, as ``torch.stft`` and ``librosa.stft`` place a shorter window: float64 ``(n_fft,)``."""
    length = win_length or n_fft
    # The periodic window of length L is the symmetric window of length L + 1 without its last sample.
    points = length + 1 if periodic else length
    window = np.hanning(points)[:length]
    left = (n_fft - length) // 2
    return np.pad(window, (left, n_fft - length - left))


@functools.lru_cache(maxsize=16)
def _kaldi_mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    def mel(hz):
        return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)

    low, high = mel(fmin), mel(fmax)
    step = (high - low) / (n_mels + 1)
    left = low + step * np.arange(n_mels)[:, None]
    centre, right = left + step, left + 2 * step
    bins = mel(sample_rate / n_fft * np.arange(n_fft // 2))[None, :]
    rising = (bins - left) / (centre - left)
    falling = (right - bins) / (right - centre)
    filters = np.zeros((n_mels, n_fft // 2 + 1), dtype=np.float32)  # the Nyquist bin's column stays 0
    filters[:, :-1] = np.maximum(0.0, np.minimum(rising, falling))
    filters.flags.writeable = False
    return filters


def kaldi_mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Kaldi's mel filterbank (as ``torchaudio.compliance.kaldi.get_mel_banks`` without warping):
    float32 ``(n_mels, n_fft // 2 + 1)``.

    Triangles equally spaced on the mel scale ``1127 ln(1 + f / 700)`` between ``fmin`` and
    ``fmax`` (Hz), each rising from its left neighbour's centre to its own and falling to its right
    neighbour's, evaluated in the mel domain at the FFT bins' frequencies; not area-normalised; the
    Nyquist bin gets no weight (Kaldi's banks cover ``n_fft // 2`` bins, EfficientAT pads one zero).
    """
    return _kaldi_mel_filterbank(sample_rate, n_fft, n_mels, float(fmin), float(fmax)).copy()


def offset_log(mel: np.ndarray, offset: float) -> np.ndarray:
    """``ln(mel + offset)`` in float32, in place where ``mel`` is float32."""
    mel = np.asarray(mel, dtype=np.float32)
    mel += np.float32(offset)
    return np.log(mel, out=mel)


def normalize(logmel: np.ndarray, shift: float, scale: float) -> np.ndarray:
    """``(logmel + shift) / scale`` in float32, in place where ``logmel`` is float32 (a no-op for
    0 and 1)."""
    logmel = np.asarray(logmel, dtype=np.float32)
    if shift != 0:
        logmel += np.float32(shift)
    if scale != 1:
        logmel /= np.float32(scale)
    return logmel
