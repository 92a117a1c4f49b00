"""The audio front end: from any audio file to what the network sees.

    decode.py         any file -> float32 samples (``decode``, ``to_mono``, ``resample``), or an
                      ``AudioDecodeError`` naming the file and the reason; a file that decodes
                      fewer frames than its header states warns (``AudioTruncatedWarning``);
                      ``write_audio`` writes in blocks (a libsndfile Vorbis crash)
    trim.py           silence trimming with a minimum clip length (librosa's decision, faster)
    logmel.py         ``read_audio`` -> ``to_log_mel`` = ``read_as_melspectrogram``: float32
                      ``(n_mels, frames)`` in dB, with the original solution's numbers; a log-mel
                      that is not finite is an ``AudioDecodeError`` (``check_log_mel``)
    efficientat_frontend.py  the steps EfficientAT's front end adds (pre-emphasis, a shorter
                      symmetric window, Kaldi mel filters, ``ln(mel + offset)``, a normalisation),
                      chained by ``to_log_mel`` when the config sets them
    network_input.py  a log-mel window + its deltas, /100: the ``(3, n_mels, frames)`` input
                      (``(4, ...)`` with the frequency-position plane of ``[input] freq_channel``)
    files.py          which files in a folder are audio (one rule, with what it leaves out)

The settings are ``freesound.config.AudioConfig`` (re-exported here)::

    y = read_audio(path, config)          # float32 mono at 44.1 kHz, <= 600 s, trimmed, >= 0.5 s
    logmel = to_log_mel(y, config)        # float32 (n_mels, frames), dB
    logmel = read_as_melspectrogram(path) # both at once
"""

from freesound.audio.decode import (
    SAMPLE_RATE_RANGE,
    AudioCroppedWarning,
    AudioDecodeError,
    AudioTruncatedWarning,
    decode,
    resample,
    to_mono,
    write_audio,
)
from freesound.audio.files import AUDIO_EXTENSIONS, AudioFolder, find_audio_files, is_audio_name, scan_audio_folder
from freesound.audio.logmel import (
    check_log_mel,
    mel_filterbank,
    power_to_db,
    read_as_melspectrogram,
    read_audio,
    silent_logmel,
    to_log_mel,
)
from freesound.audio.trim import trim_to_min_length
from freesound.config import DEFAULT_AUDIO_CONFIG, AudioConfig

__all__ = [
    "AUDIO_EXTENSIONS", "AudioFolder", "DEFAULT_AUDIO_CONFIG", "SAMPLE_RATE_RANGE", "AudioConfig",
    "AudioCroppedWarning", "AudioDecodeError", "AudioTruncatedWarning", "check_log_mel", "decode", "find_audio_files", "is_audio_name",
    "mel_filterbank", "power_to_db", "read_as_melspectrogram", "read_audio", "resample", "scan_audio_folder",
    "silent_logmel", "to_log_mel", "to_mono", "trim_to_min_length",
]
