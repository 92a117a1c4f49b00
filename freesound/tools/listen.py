"""Live tagging: a rolling window over an audio stream, tagged every hop.

``RollingTagger`` keeps the last ``window_seconds`` of a mono stream and, each time another
``hop_seconds`` have arrived, tags that window with a ``freesound.predict.Tagger``. The window goes
through the same front end as a file (resample, ``freesound.audio.to_log_mel``, tiles), except that
silence is not trimmed: a steady stream must not be cut at a quiet moment. ``replay_file`` feeds a
file through the same object (``freesound listen --file``); ``listen_microphone`` feeds it from an
input device through the optional ``sounddevice`` package.
"""

from __future__ import annotations

import numpy as np

from freesound.audio import check_log_mel, decode, resample, to_log_mel, to_mono
from freesound.errors import FreesoundError

#: One hop's result: (stream time in seconds at the window's end, [(label, probability), ...]).
Tags = tuple[float, list[tuple[str, float]]]


class RollingTagger:
    """Tags the last ``window_seconds`` of a stream every ``hop_seconds``.

    Parameters
    ----------
    tagger : freesound.predict.Tagger
    window_seconds : float, length of audio each prediction sees
    hop_seconds : float, stream time between predictions (at most ``window_seconds``)
    sample_rate : int, Hz of the pushed samples; each window is resampled to the tagger's audio
        config rate (resampling whole windows, not chunks, avoids seams at chunk edges)
    top : int, how many classes each result lists
    source : what the stream is, for errors (a file's path when replaying one)

    Until a full window has arrived, the audio so far is tagged (zero-padded symmetrically to the
    front end's minimum length when shorter), so the first result comes after one hop.
    """

    def __init__(self, tagger, window_seconds: float = 5.0, hop_seconds: float = 1.0,
                 sample_rate: int = 44100, top: int = 3, source="microphone input"):
        if not 0 < hop_seconds <= window_seconds:
            raise ValueError(f"need 0 < hop_seconds <= window_seconds, got hop {hop_seconds}, window {window_seconds}")
        if sample_rate <= 0 or top < 1:
            raise ValueError(f"need sample_rate > 0 and top >= 1, got {sample_rate} and {top}")
        self.tagger = tagger
        self.sample_rate = int(sample_rate)
        self.top = top
        self.source = source
        self.window = int(round(window_seconds * sample_rate))
        self.hop = max(1, int(round(hop_seconds * sample_rate)))
        self._buffer = np.zeros(0, dtype=np.float32)
        self._since_last = 0  # samples pushed since the last result
        self._seen = 0  # samples pushed in all

    def push(self, samples) -> list:
        """Add mono samples; tag the window once per completed hop.

        Parameters
        ----------
        samples : array-like, float (n,), at ``sample_rate`` Hz, any n (one chunk may complete
            several hops, or none)

        Returns
        -------
        list of ``(time_s, [(label, prob), ...])``, one per hop completed by this chunk, with
        ``time_s`` the stream time at the end of the tagged window and ``top`` classes, most
        probable first.

        Raises
        ------
        freesound.audio.AudioDecodeError
            A window whose log-mel is not finite (samples too loud for float32), naming ``source``.
        """
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"push takes mono samples of shape (n,), got {samples.shape}")
        results = []
        while len(samples):
            take = min(len(samples), self.hop - self._since_last)
            self._append(samples[:take])
            samples = samples[take:]
            if self._since_last == self.hop:
                results.append(self._tag())
        return results

    def flush(self) -> list:
        """Tag the window if samples arrived since the last result (the tail of a finite stream).

        Returns
        -------
        list with zero or one ``(time_s, [(label, prob), ...])``.
        """
        return [self._tag()] if self._since_last else []

    def _append(self, chunk: np.ndarray) -> None:
        self._buffer = np.concatenate([self._buffer, chunk])[-self.window:]
        self._since_last += len(chunk)
        self._seen += len(chunk)

    def _tag(self) -> Tags:
        self._since_last = 0
        config = self.tagger.audio_config
        window = resample(self._buffer, self.sample_rate, config.sample_rate)
        logmel = check_log_mel(to_log_mel(_pad_to(window, config.min_samples), config), self.source, window)
        probs = self.tagger.predict_spectrograms([logmel])[0]
        best = np.argsort(-probs, kind="stable")[:self.top]
        return self._seen / self.sample_rate, [(self.tagger.classes[i], float(probs[i])) for i in best]


def _pad_to(y: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad symmetrically to ``length`` samples, as the front end does for short files."""
    padding = max(0, length - len(y))
    return np.pad(y, (padding // 2, padding - padding // 2)) if padding else y


def format_tags(time_s: float, top) -> str:
    """One line for a result: ``'  12.0 s  dog 0.912 | cat 0.051'``."""
    return f"{time_s:6.1f} s  " + " | ".join(f"{label} {prob:.3f}" for label, prob in top)


def replay_file(path, tagger, window_seconds: float = 5.0, hop_seconds: float = 1.0, top: int = 3) -> list:
    """Tag a file as if it were streamed live.

    The file is decoded, mixed to mono and resampled to the tagger's rate (not trimmed), then
    pushed in hop-sized chunks through one ``RollingTagger``; a last partial hop is tagged too.

    Returns
    -------
    list of ``(time_s, [(label, prob), ...])``: ``ceil(duration / hop)`` results.

    Raises
    ------
    freesound.audio.AudioDecodeError
    """
    samples, sr = decode(path)
    rate = tagger.audio_config.sample_rate
    y = resample(to_mono(samples), sr, rate)
    rolling = RollingTagger(tagger, window_seconds, hop_seconds, sample_rate=rate, top=top, source=path)
    results = []
    for start in range(0, len(y), rolling.hop):
        results += rolling.push(y[start:start + rolling.hop])
    return results + rolling.flush()


def _import_sounddevice():
    try:
        import sounddevice
    except ImportError as error:
        raise FreesoundError(
            "live tagging from a microphone needs the sounddevice package: pip install sounddevice"
        ) from error
    except OSError as error:  # sounddevice is installed but the PortAudio library is not
        raise FreesoundError(f"sounddevice cannot load PortAudio ({error}); install the PortAudio library") from error
    return sounddevice


def listen_microphone(tagger, window_seconds: float = 5.0, hop_seconds: float = 1.0, top: int = 3, *,
                      input_device=None, duration_seconds: float | None = None, print_fn=print) -> list:
    """Tag the microphone live, printing the top classes every hop until Ctrl-C.

    Records mono at the device's default rate (windows are resampled to the tagger's rate).

    Parameters
    ----------
    tagger : freesound.predict.Tagger
    window_seconds, hop_seconds, top : as for ``RollingTagger``
    input_device : sounddevice device id or name substring; default: the system's input device
    duration_seconds : stop after this much audio; default: run until interrupted
    print_fn : called with one line per result (``format_tags``) and with status lines

    Returns
    -------
    list of every ``(time_s, [(label, prob), ...])`` produced.

    Raises
    ------
    FreesoundError
        When sounddevice is not installed or no input device is found.
    """
    sd = _import_sounddevice()
    try:
        info = sd.query_devices(input_device, kind="input")
    except (ValueError, sd.PortAudioError) as error:
        raise FreesoundError(f"no microphone was found ({error}); connect one or pick another input device") from error
    rate = int(info["default_samplerate"])
    rolling = RollingTagger(tagger, window_seconds, hop_seconds, sample_rate=rate, top=top)
    limit = None if duration_seconds is None else int(duration_seconds * rate)
    results, recorded = [], 0
    print_fn(f"listening on {info['name']} at {rate} Hz; Ctrl-C stops")
    try:
        with sd.InputStream(samplerate=rate, channels=1, dtype="float32", device=input_device) as stream:
            while limit is None or recorded < limit:
                chunk, overflowed = stream.read(rolling.hop)
                if overflowed:
                    # Tagging took longer than a hop, so some audio was dropped; say so once per hop.
                    print_fn("(input overflow: audio was dropped; try a longer --hop)")
                recorded += len(chunk)
                for result in rolling.push(chunk[:, 0]):
                    results.append(result)
                    print_fn(format_tags(*result))
    except KeyboardInterrupt:
        print_fn("stopped")
    return results
