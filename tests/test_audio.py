"""The audio front end: parity with a direct librosa computation, and its rules."""

import dataclasses
import re
import sys
import warnings

import librosa
import numpy as np
import pytest
import soundfile as sf

from freesound.audio import (
    SAMPLE_RATE_RANGE,
    AudioConfig,
    AudioCroppedWarning,
    AudioDecodeError,
    AudioTruncatedWarning,
    check_log_mel,
    find_audio_files,
    is_audio_name,
    read_as_melspectrogram,
    read_audio,
    scan_audio_folder,
    to_log_mel,
    trim_to_min_length,
)
from freesound.audio.decode import decode

SR = 44100


def tone(seconds, sr=SR, freq=440.0, amplitude=0.5, seed=0):
    """A tone with a little noise, float32 (n,)."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    y = amplitude * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
    return y.astype(np.float32)


def reference_logmel(path):
    """The front end written out with librosa calls and the method's numbers, independently."""
    y, _ = librosa.load(path, sr=44100, mono=True)
    trimmed, (start, end) = librosa.effects.trim(y, top_db=60)
    min_samples = 22050
    if len(trimmed) < min_samples:
        if len(y) >= min_samples:
            left = min(max(0, (start + end) // 2 - min_samples // 2), len(y) - min_samples)
            trimmed = y[left:left + min_samples]
        else:
            pad = min_samples - len(y)
            trimmed = np.pad(y, (pad // 2, pad - pad // 2))
    mel = librosa.feature.melspectrogram(
        y=trimmed, sr=44100, n_fft=2560, hop_length=690, n_mels=128, fmin=20, fmax=22050,
        center=True, pad_mode="reflect", htk=False, norm="slaney", power=2.0,
    )
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=80)


def test_config_numbers_are_the_methods():
    config = AudioConfig()
    assert (config.sample_rate, config.n_fft, config.hop_length, config.n_mels) == (44100, 2560, 690, 128)
    assert (config.fmin, config.fmax, config.pad_mode) == (20.0, 22050.0, "reflect")
    assert (config.trim_top_db, config.min_seconds, config.min_samples) == (60.0, 0.5, 22050)
    assert (config.ref, config.amin, config.top_db) == (1.0, 1e-10, 80.0)


def test_config_key_is_stable_and_sensitive():
    assert AudioConfig().key() == AudioConfig().key()
    assert AudioConfig().key() != AudioConfig(n_mels=64).key()
    assert AudioConfig.from_dict(AudioConfig().to_dict()) == AudioConfig()
    with pytest.raises(ValueError, match="n_melz"):
        AudioConfig.from_dict({"n_melz": 3})
    with pytest.raises(dataclasses.FrozenInstanceError):
        AudioConfig().n_mels = 3


FORMATS = [
    # name, samplerate, channels, format, subtype
    ("pcm16.wav", 44100, 1, "WAV", "PCM_16"),
    ("pcm8.wav", 44100, 1, "WAV", "PCM_U8"),
    ("float.wav", 44100, 1, "WAV", "FLOAT"),
    ("clip.flac", 44100, 1, "FLAC", "PCM_16"),
    ("clip.ogg", 44100, 1, "OGG", "VORBIS"),
    ("stereo.wav", 44100, 2, "WAV", "PCM_16"),
    ("sr22050.wav", 22050, 1, "WAV", "PCM_16"),
    ("sr48000.flac", 48000, 1, "FLAC", "PCM_24"),
    ("clip.aiff", 44100, 1, "AIFF", "PCM_16"),
]


@pytest.mark.parametrize("name,sr,channels,fmt,subtype", FORMATS)
def test_front_end_matches_librosa(tmp_path, name, sr, channels, fmt, subtype):
    y = tone(1.3, sr=sr)
    if channels == 2:
        y = np.stack([y, tone(1.3, sr=sr, freq=1200.0, seed=1)], axis=1)
    path = tmp_path / name
    sf.write(path, y, sr, format=fmt, subtype=subtype)
    ours = read_as_melspectrogram(path)
    expected = reference_logmel(str(path))
    assert ours.dtype == np.float32
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() <= 1e-3


@pytest.mark.parametrize("seconds", [0.2, 0.05])
def test_short_clip_is_padded_to_half_a_second(tmp_path, seconds):
    path = tmp_path / "short.wav"
    sf.write(path, tone(seconds), SR, subtype="PCM_16")
    y = read_audio(path)
    assert y.shape == (22050,)
    n = int(seconds * SR)
    left = (22050 - n) // 2
    assert np.all(y[:left] == 0) and np.all(y[left + n:] == 0)
    assert np.abs(y[left:left + n]).max() > 0.3
    logmel = read_as_melspectrogram(path)
    assert logmel.shape == (128, 1 + 22050 // 690)
    assert np.abs(logmel - reference_logmel(str(path))).max() <= 1e-3


def test_silence_gives_the_floor(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(SR, dtype=np.float32), SR, subtype="PCM_16")
    logmel = read_as_melspectrogram(path)
    # librosa's trim measures against the clip's own peak, so all-zero audio counts as one
    # loud block and is kept whole (as in the original).
    assert logmel.shape == (128, 1 + SR // 690)
    # 10·log10(amin) with amin = 1e-10, one value throughout. numpy's float32 log10 gives -100.0
    # with AVX2 kernels and -100.00001 (one ulp off) with AVX-512 ones, so compare to an ulp.
    assert np.unique(logmel).size == 1
    np.testing.assert_array_max_ulp(logmel, np.full_like(logmel, -100.0), maxulp=1)


def test_trim_removes_silence_around_sound():
    y = np.concatenate([np.zeros(SR), tone(1.0), np.zeros(2 * SR)]).astype(np.float32)
    trimmed = trim_to_min_length(y)
    # librosa's trim works on 512-sample hops, so the edges are exact to a frame.
    assert abs(len(trimmed) - SR) <= 2048


def test_short_sound_in_long_file_takes_half_a_second_around_it():
    burst = tone(0.1, seed=3)
    y = np.zeros(3 * SR, dtype=np.float32)
    y[SR:SR + burst.size] = burst
    out = trim_to_min_length(y)
    assert out.shape == (22050,)
    # The burst sits in the middle of the window (to a trim frame of 512 samples).
    middle_of_burst = np.flatnonzero(np.abs(out) > 0.1).mean()
    assert abs(middle_of_burst - 22050 / 2) < 600


def test_short_sound_at_file_edge_stays_inside_file():
    burst = tone(0.1, seed=4)
    y = np.zeros(2 * SR, dtype=np.float32)
    y[:burst.size] = burst
    out = trim_to_min_length(y)
    assert out.shape == (22050,)
    np.testing.assert_array_equal(out, y[:22050])


def test_stereo_is_averaged(tmp_path):
    left, right = tone(1.0, freq=300.0), tone(1.0, freq=3000.0, seed=2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), SR, subtype="FLOAT")
    y = read_audio(path, AudioConfig(trim_top_db=200.0))
    np.testing.assert_allclose(y, (left + right) / 2, atol=1e-6)


@pytest.mark.parametrize("subtype", ["IMA_ADPCM", "MS_ADPCM"])
def test_adpcm_wav_decodes(tmp_path, subtype):
    path = tmp_path / "adpcm.wav"
    sf.write(path, tone(1.0), SR, format="WAV", subtype=subtype)
    logmel = read_as_melspectrogram(path)
    reference = read_as_melspectrogram(_write(tmp_path / "pcm.wav", tone(1.0)))
    assert abs(logmel.shape[1] - reference.shape[1]) <= 2
    # The tone's mel band dominates in both.
    assert logmel.mean(axis=1).argmax() == reference.mean(axis=1).argmax()


def test_mp3_decodes(tmp_path):
    path = tmp_path / "clip.mp3"
    try:
        sf.write(path, tone(1.0), SR, format="MP3", subtype="MPEG_LAYER_III")
    except (sf.LibsndfileError, ValueError, TypeError) as error:
        pytest.skip(f"this libsndfile cannot write MP3: {error}")
    logmel = read_as_melspectrogram(path)
    reference = read_as_melspectrogram(_write(tmp_path / "pcm.wav", tone(1.0)))
    assert logmel.mean(axis=1).argmax() == reference.mean(axis=1).argmax()


def _write(path, y):
    sf.write(path, y, SR, subtype="PCM_16")
    return path


def test_decode_errors_name_the_file_and_reason(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 50)
    truncated = tmp_path / "truncated.wav"
    sf.write(truncated, tone(1.0), SR, subtype="PCM_16")
    truncated.write_bytes(truncated.read_bytes()[:30])
    header_only = tmp_path / "header_only.wav"
    sf.write(header_only, np.zeros(0, dtype=np.float32), SR, subtype="PCM_16")

    for path, reason in [
        (empty, "empty"), (text, ""), (truncated, ""), (header_only, "no audio samples"),
        (tmp_path / "missing.wav", "no such file"),
    ]:
        with pytest.raises(AudioDecodeError, match=reason or None) as info:
            read_as_melspectrogram(path)
        assert str(path) in str(info.value)
        assert info.value.reason


def write_encoded(path, y, sr=SR):
    """``y`` encoded in the format of ``path``'s suffix (PCM_16 WAV, FLAC, MP3); skips the test
    where this libsndfile cannot write MP3 (it can from 1.1)."""
    options = {".wav": {"subtype": "PCM_16"}, ".flac": {}, ".mp3": {"format": "MP3", "subtype": "MPEG_LAYER_III"}}
    try:
        sf.write(path, y, sr, **options[path.suffix])
    except (sf.LibsndfileError, ValueError, TypeError) as error:
        pytest.skip(f"this libsndfile cannot write {path.suffix}: {error}")
    return path


def cut_to_half(path):
    """Keep the first half of the file's bytes, as an interrupted download or copy does."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".mp3"])
def test_a_truncated_file_warns_and_is_used_as_far_as_it_decodes(tmp_path, suffix):
    # Issue 33: each of these passed without a word (for WAV, libsndfile counts the frames the
    # bytes hold; a FLAC cut mid-frame failed the whole read; an MP3 read 63,407 of 132,300).
    y = tone(3.0)
    whole, _ = decode(write_encoded(tmp_path / f"whole{suffix}", y))
    path = cut_to_half(write_encoded(tmp_path / f"clip{suffix}", y))
    with pytest.warns(AudioTruncatedWarning) as caught:
        samples, sr = decode(path)
    assert sr == SR and len(caught) == 1
    decoded = samples.shape[1]
    assert 0.35 * y.size < decoded < 0.55 * y.size
    # What decodes is the start of the clip, sample for sample.
    np.testing.assert_array_equal(samples, whole[:, :decoded])
    assert str(caught[0].message) == (
        f"{path} is truncated or damaged: its header states 132300 frames (3.00 s) but only {decoded} "
        f"({decoded / SR:.2f} s) decode; the audio that decodes is used")


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".mp3"])
def test_a_whole_file_does_not_warn(tmp_path, suffix):
    path = write_encoded(tmp_path / f"clip{suffix}", tone(3.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        samples, _ = decode(path)
    assert samples.shape == (1, 132300)


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_24", "FLOAT", "IMA_ADPCM"])
def test_a_truncated_wav_states_its_length_in_any_encoding(tmp_path, subtype):
    path = tmp_path / f"{subtype}.wav"
    sf.write(path, np.stack([tone(2.0), tone(2.0, seed=1)], axis=1), SR, subtype=subtype)
    cut_to_half(path)
    with pytest.warns(AudioTruncatedWarning, match=r"states (\d+) frames") as caught:
        decode(path)
    stated = int(re.search(r"states (\d+) frames", str(caught[0].message)).group(1))
    # Exact where every frame takes the same bytes; ADPCM's within a block (2041 frames here).
    assert abs(stated - 2 * SR) <= (2041 if subtype == "IMA_ADPCM" else 0)


def _set_wav_data_size(path, size):
    data = bytearray(path.read_bytes())
    at = data.index(b"data") + 4
    data[at:at + 4] = size.to_bytes(4, "little")
    path.write_bytes(bytes(data))


def test_a_wav_whose_data_size_is_a_streaming_placeholder_does_not_warn(tmp_path):
    # A writer that did not know the length (a pipe) leaves 0xFFFFFFFF: the file's bytes decide.
    path = write_encoded(tmp_path / "streamed.wav", tone(1.0))
    _set_wav_data_size(path, 0xFFFFFFFF)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        samples, _ = decode(path)
    assert samples.shape == (1, SR)


def test_a_wav_with_a_chunk_after_its_data_does_not_warn(tmp_path):
    path = write_encoded(tmp_path / "tagged.wav", tone(1.0))
    data = bytearray(path.read_bytes() + b"LIST" + (4).to_bytes(4, "little") + b"INFO")
    data[4:8] = (len(data) - 8).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        samples, _ = decode(path)
    assert samples.shape == (1, SR)


def test_a_truncated_wav_cropped_within_what_it_holds_is_only_cropped(tmp_path):
    # 3 s stated, 1.5 s held, 1 s used: the audio used is whole, so only the crop is news.
    path = cut_to_half(write_encoded(tmp_path / "clip.wav", tone(3.0)))
    with pytest.warns(AudioCroppedWarning, match="is 3.0 s long; only its first 1 s") as caught:
        samples, _ = decode(path, max_seconds=1.0)
    assert samples.shape == (1, SR) and len(caught) == 1


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_infinite_samples_are_rejected(tmp_path, bad):
    y = tone(1.0)
    y[100] = bad
    path = tmp_path / "bad.wav"
    sf.write(path, y, SR, subtype="FLOAT")
    with pytest.raises(AudioDecodeError, match="NaN or infinite"):
        read_audio(path)


@pytest.mark.parametrize("sr", [SR, 22050])
def test_long_file_is_cropped_to_max_seconds_with_a_warning(tmp_path, sr):
    y = tone(3.0, sr=sr)
    path = tmp_path / "long.wav"
    sf.write(path, y, sr, subtype="FLOAT")
    first = tmp_path / "first.wav"
    sf.write(first, y[:sr], sr, subtype="FLOAT")
    config = AudioConfig(max_seconds=1.0)
    with pytest.warns(AudioCroppedWarning) as caught:
        cropped = read_as_melspectrogram(path, config)
    # The crop is the first second of the file, in the file's own sample rate, before anything else.
    np.testing.assert_array_equal(cropped, read_as_melspectrogram(first, config))
    message = str(caught[0].message)
    assert str(path) in message and "3.0 s long" in message and "first 1 s" in message


def test_files_within_max_seconds_are_left_alone(tmp_path):
    path = tmp_path / "exact.wav"
    sf.write(path, tone(1.0), SR, subtype="FLOAT")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(read_audio(path, AudioConfig(max_seconds=1.0)), read_audio(path))
    # The default never touches FSDKaggle2019 clips (at most 30 s).
    assert AudioConfig().max_seconds >= 30


def test_max_seconds_keys_the_cache_and_old_configs_still_load():
    assert AudioConfig(max_seconds=30.0).key() != AudioConfig().key()
    # A checkpoint saved before max_seconds existed stores the other fields only.
    old = {k: v for k, v in AudioConfig().to_dict().items() if k != "max_seconds"}
    assert AudioConfig.from_dict(old) == AudioConfig()


@pytest.mark.parametrize("sr", [SAMPLE_RATE_RANGE[0] - 1, 1, SAMPLE_RATE_RANGE[1] + 1])
def test_sample_rates_outside_the_range_are_rejected(tmp_path, sr):
    path = tmp_path / "odd_rate.wav"
    sf.write(path, tone(0.1, sr=44100), sr, subtype="PCM_16")
    with pytest.raises(AudioDecodeError, match=f"sample rate {sr} Hz"):
        read_audio(path)


def test_low_sample_rate_is_resampled(tmp_path):
    path = tmp_path / "phone.wav"
    sf.write(path, tone(1.0, sr=8000, freq=300.0), 8000, subtype="PCM_16")
    assert read_audio(path, AudioConfig(trim_top_db=200.0)).shape == (SR,)


def test_many_channels_are_averaged(tmp_path):
    channels = np.stack([tone(1.0, freq=200.0 * (k + 1), seed=k) for k in range(6)], axis=1)
    path = tmp_path / "surround.wav"
    sf.write(path, channels, SR, subtype="FLOAT")
    np.testing.assert_allclose(read_audio(path, AudioConfig(trim_top_db=200.0)), channels.mean(axis=1), atol=1e-6)


@pytest.mark.parametrize("suffix", [".au", ".snd", ".vox", ".gsm"])
def test_headerless_files_are_not_guessed_from_their_name(tmp_path, suffix):
    # libsndfile reads any bytes named *.au as 8 kHz mu-law: noise, not a clip.
    path = tmp_path / f"noise{suffix}"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(AudioDecodeError, match="no audio header"):
        read_audio(path)
    real = tmp_path / "real.au"
    sf.write(real, tone(1.0, sr=8000), 8000, format="AU", subtype="ULAW")
    assert read_audio(real).shape[0] >= 22050


def test_a_folder_is_not_a_file(tmp_path):
    with pytest.raises(AudioDecodeError, match="folder"):
        read_audio(tmp_path)


def test_to_log_mel_frames_and_range():
    y = tone(2.0)
    logmel = to_log_mel(y)
    assert logmel.shape == (128, 1 + y.size // 690)
    assert logmel.max() - logmel.min() <= 80.0 + 1e-4


# ----------------------------------------------------------------------------- unusable clips (issue #19)


def write_huge_sine(path, amplitude=1e17):
    """1 s of a 440 Hz sine at 44.1 kHz, 32-bit float: finite samples whose power overflows float32."""
    t = np.arange(SR) / SR
    sf.write(path, (amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.float32), SR, subtype="FLOAT")
    return path


def test_finite_but_huge_samples_are_a_decode_error_naming_the_file(tmp_path):
    path = write_huge_sine(tmp_path / "loud.wav")
    assert np.isfinite(read_audio(path)).all()  # the samples themselves are fine
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one clear error, no NumPy overflow warnings before it
        with pytest.raises(AudioDecodeError) as info:
            read_as_melspectrogram(path)
    assert str(info.value).startswith(f"cannot decode {path}: the log-mel is not finite (")
    assert "8192 of 8192 values are NaN or infinite" in info.value.reason  # 128 mels x 64 frames
    assert "the samples peak at 1e+17" in info.value.reason
    # The limit is float32's: 1e15 still gives a finite log-mel.
    assert np.isfinite(read_as_melspectrogram(write_huge_sine(tmp_path / "loud_ok.wav", 1e15))).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_check_log_mel_refuses_any_non_finite_value(bad):
    logmel = np.zeros((4, 5), dtype=np.float32)
    assert check_log_mel(logmel, "x.wav") is logmel
    logmel[2, 3] = bad
    with pytest.raises(AudioDecodeError, match=r"^cannot decode x\.wav: the log-mel is not finite \(1 of 20 values"):
        check_log_mel(logmel, "x.wav")


def test_a_file_no_decoder_reads_gets_each_decoders_reason(tmp_path, monkeypatch):
    junk = tmp_path / "clip.m4a"
    junk.write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(AudioDecodeError) as info:
        read_audio(junk)
    reason = info.value.reason
    assert reason.startswith("libsndfile cannot read it (Format not recognised), nor can librosa's fallback "
                             "decoder, audioread (")
    # audioread's NoBackendError has no message: the sentence says what was tried instead.
    import audioread

    backends = ", ".join(b.__name__ for b in audioread.available_backends())
    assert f"none of its backends reads this file, tried: {backends}" in reason

    def fail_without_message(*args, **kwargs):
        raise RuntimeError()

    monkeypatch.setattr(librosa, "load", fail_without_message)
    with pytest.raises(AudioDecodeError, match=r"audioread \(RuntimeError, with no message\)$"):
        read_audio(junk)
    monkeypatch.setitem(sys.modules, "audioread", None)  # not installed
    with pytest.raises(AudioDecodeError, match=r"\(Format not recognised\), and no fallback decoder is installed"):
        read_audio(junk)


def test_which_files_are_audio_one_rule_with_what_it_leaves_out(tmp_path):
    names = ["a.wav", "b.M4A", "c.aac", "d.WebM", "e.Flac", "sub/f.opus", "sub/g.mp4", "notes.txt", "noext",
             ".DS_Store", "._a.wav", ".hidden/h.wav", "cover.jpg"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    folder = scan_audio_folder(tmp_path)
    relative = [p.relative_to(tmp_path).as_posix() for p in folder.files]
    assert relative == ["a.wav", "b.M4A", "c.aac", "d.WebM", "e.Flac", "sub/f.opus", "sub/g.mp4"]
    assert [p.relative_to(tmp_path).as_posix() for p in folder.left_out] == [
        ".DS_Store", "._a.wav", ".hidden/h.wav", "cover.jpg", "noext", "notes.txt"]
    assert folder.describe_left_out(shown=2) == "6 file(s): .DS_Store, ._a.wav and 4 more"
    assert find_audio_files(tmp_path) == folder.files
    every = scan_audio_folder(tmp_path, all_files=True)
    assert len(every.files) == len(names) and every.left_out == []
    assert is_audio_name("X.OGG") and not is_audio_name("x.ogg.txt")
