"""Live tagging: the rolling window, file replay and the microphone front door."""

import sys
import types

import numpy as np
import pytest
import soundfile as sf
import torch

from freesound.audio import AudioDecodeError
from freesound.errors import FreesoundError
from freesound.models import create_model
from freesound.predict import Tagger
from freesound.tools.listen import RollingTagger, format_tags, listen_microphone, replay_file

SR = 44100
CLASSES = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def tagger():
    torch.manual_seed(0)
    return Tagger([create_model("simple_cnn", num_classes=len(CLASSES), base_size=4)], CLASSES)


def steady_tone(seconds, sample_rate=SR):
    """A stationary tone with two harmonics: every window of it looks the same."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 1320 * t)).astype(np.float32)


def test_one_result_per_hop_whatever_the_chunk_size(tagger):
    rolling = RollingTagger(tagger, window_seconds=1.0, hop_seconds=0.25, top=2)
    audio = steady_tone(1.6)
    results = []
    for start in range(0, len(audio), 3001):  # chunks that straddle hop boundaries
        results += rolling.push(audio[start:start + 3001])
    assert [time_s for time_s, _ in results] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.25, 1.5])
    for _, top in results:
        assert len(top) == 2 and {label for label, _ in top} <= set(CLASSES)
        assert top[0][1] >= top[1][1]
    # 0.1 s are left over: flush tags them once, then there is nothing left to tag.
    assert [time_s for time_s, _ in rolling.flush()] == pytest.approx([1.6])
    assert rolling.flush() == []


def test_the_window_forgets_older_audio(tagger):
    rolling = RollingTagger(tagger, window_seconds=0.5, hop_seconds=0.5, top=4)
    rolling.push(steady_tone(1.0))
    (_, after_tone_then_silence), = rolling.push(np.zeros(SR // 2, dtype=np.float32))
    (_, silence_only), = RollingTagger(tagger, 0.5, 0.5, top=4).push(np.zeros(SR // 2, dtype=np.float32))
    assert after_tone_then_silence == silence_only


def test_bad_arguments(tagger):
    with pytest.raises(ValueError, match="hop_seconds"):
        RollingTagger(tagger, window_seconds=1.0, hop_seconds=2.0)
    with pytest.raises(ValueError, match="mono"):
        RollingTagger(tagger).push(np.zeros((10, 2)))


def test_replay_file_agrees_with_tag_on_a_steady_clip(tagger, tmp_path):
    """The acceptance test: `listen --file` gives the same top class as `tag` on a steady clip."""
    path = tmp_path / "tone.wav"
    sf.write(path, steady_tone(4.5), SR)
    results = replay_file(path, tagger, window_seconds=2.0, hop_seconds=1.0, top=3)
    assert [time_s for time_s, _ in results] == pytest.approx([1.0, 2.0, 3.0, 4.0, 4.5])
    tag_top = tagger.predict_files([path]).iloc[0].idxmax()
    assert {top[0][0] for _, top in results} == {tag_top}


def test_replay_file_resamples_other_rates(tagger, tmp_path):
    path = tmp_path / "tone_22k.wav"
    sf.write(path, np.stack([steady_tone(2.0, 22050)] * 2, axis=1), 22050)  # stereo, 22.05 kHz
    assert [time_s for time_s, _ in replay_file(path, tagger, 2.0, 1.0)] == pytest.approx([1.0, 2.0])


def test_a_window_whose_log_mel_is_not_finite_is_an_error_naming_the_source(tagger, tmp_path):
    path = tmp_path / "loud.wav"
    sf.write(path, 1e18 * steady_tone(1.0), SR, subtype="FLOAT")
    with pytest.raises(AudioDecodeError, match=rf"^cannot decode {path}: the log-mel is not finite"):
        replay_file(path, tagger, window_seconds=1.0, hop_seconds=0.5)
    with pytest.raises(AudioDecodeError, match=r"^cannot decode microphone input: the log-mel is not finite"):
        RollingTagger(tagger, 0.5, 0.5).push(1e18 * steady_tone(0.5))


def test_format_tags():
    assert format_tags(12.0, [("dog", 0.9123), ("cat", 0.05)]) == "  12.0 s  dog 0.912 | cat 0.050"


def test_microphone_without_sounddevice_is_a_clear_error(tagger, monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # makes `import sounddevice` fail
    with pytest.raises(FreesoundError, match="pip install sounddevice"):
        listen_microphone(tagger)


class _PortAudioError(Exception):
    pass


def fake_sounddevice(has_input=True, sample_rate=SR):
    """Just enough of the sounddevice API: a default input device that records a steady tone."""
    tone = steady_tone(10.0, sample_rate)

    def query_devices(device=None, kind=None):
        if not has_input:
            raise _PortAudioError("Error querying device -1")
        return {"name": "fake mic", "default_samplerate": float(sample_rate)}

    class InputStream:
        def __init__(self, **kwargs):
            assert kwargs["channels"] == 1 and kwargs["samplerate"] == sample_rate
            self.position = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, frames):
            chunk = tone[self.position:self.position + frames, None]
            self.position += frames
            return chunk, False

    return types.SimpleNamespace(query_devices=query_devices, InputStream=InputStream, PortAudioError=_PortAudioError)


def test_microphone_without_an_input_device_is_a_clear_error(tagger, monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice(has_input=False))
    with pytest.raises(FreesoundError, match="no microphone was found"):
        listen_microphone(tagger)


def test_microphone_prints_the_top_classes_every_hop(tagger, monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice(sample_rate=16000))
    lines = []
    results = listen_microphone(tagger, window_seconds=1.0, hop_seconds=0.5, top=2,
                                duration_seconds=1.5, print_fn=lines.append)
    assert [time_s for time_s, _ in results] == pytest.approx([0.5, 1.0, 1.5])
    assert lines[0].startswith("listening on fake mic at 16000 Hz")
    assert lines[1:] == [format_tags(*result) for result in results]
