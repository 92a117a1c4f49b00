"""The synthetic FSDKaggle2019-layout dataset: layout, audio format, labels, determinism, learnability."""

import dataclasses
import re

import librosa
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from freesound.data.dataset import FSD2019_CLASSES, load_dataset
from freesound.data.synth import (
    GENERATOR_VERSION,
    MAX_DURATION_S,
    MIN_DURATION_S,
    SAMPLE_RATE,
    SPLITS,
    ClassSignature,
    SynthError,
    _tones,
    class_signature,
    corrupt_labels,
    plan_dataset,
    read_synth_manifest,
    render_clip,
    render_source,
    sample_duration,
    synth_classes,
    synth_manifest,
    synthesize_dataset,
    twin_signatures,
)
from freesound.errors import FreesoundError

NUM_CLASSES = 8
FNAME = re.compile(r"^[0-9a-f]{8}\.wav$")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A small dataset with enough single-label clips per class for a nearest-centroid check."""
    root = tmp_path_factory.mktemp("synth") / "data"
    summary = synthesize_dataset(root, num_classes=NUM_CLASSES, num_curated=96, num_noisy=48, num_test=40,
                                 seed=3, progress=False)
    return root, summary


def read_labels(path):
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def all_files(root):
    return {path.relative_to(root): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_layout_and_tables(dataset):
    root, summary = dataset
    classes = FSD2019_CLASSES[:NUM_CLASSES]
    assert summary.root == root and summary.classes == classes
    assert (summary.num_curated, summary.num_noisy, summary.num_test) == (96, 48, 40)

    submission = pd.read_csv(root / "sample_submission.csv", dtype={"fname": str})
    assert list(submission.columns) == ["fname", *classes]
    assert (submission[list(classes)] == 0).all().all()
    assert list(submission.fname) == sorted(submission.fname)

    tables = {"train_curated": "train_curated.csv", "train_noisy": "train_noisy.csv", "test": "test_labels.csv"}
    names = []
    for split, table in tables.items():
        frame = read_labels(root / table)
        assert list(frame.columns) == ["fname", "labels"]
        assert list(frame.fname) == sorted(frame.fname)
        assert {path.name for path in (root / split).iterdir()} == set(frame.fname)
        names += list(frame.fname)
    assert list(read_labels(root / "test_labels.csv").fname) == list(submission.fname)
    assert len(names) == len(set(names)) == 96 + 48 + 40
    assert all(FNAME.match(name) for name in names)

    loaded = load_dataset(root)  # the project's own loader accepts it
    assert loaded.classes == classes and len(loaded.curated) == 96 and len(loaded.noisy) == 48


def test_wav_format(dataset):
    root, _ = dataset
    for split in SPLITS:
        for path in sorted((root / split).iterdir())[:10]:
            info = sf.info(path)
            assert (info.samplerate, info.channels, info.format, info.subtype) == (SAMPLE_RATE, 1, "WAV", "PCM_16")


def test_labels_use_the_vocabulary_and_hold_one_to_three_classes(dataset):
    root, _ = dataset
    classes = set(FSD2019_CLASSES[:NUM_CLASSES])
    counts = {}
    for table in ("train_curated.csv", "train_noisy.csv", "test_labels.csv"):
        labels = [text.split(",") for text in read_labels(root / table).labels]
        assert all(set(clip) <= classes and len(set(clip)) == len(clip) for clip in labels)
        counts[table] = [len(clip) for clip in labels]
    for table in ("train_curated.csv", "test_labels.csv"):
        assert set(counts[table]) <= {1, 2, 3}
    assert set(counts["train_curated.csv"]) == {1, 2, 3}  # 96 clips: all three sizes occur
    assert np.mean(np.array(counts["train_curated.csv"]) == 1) > 0.5  # mostly single-label
    assert min(counts["train_noisy.csv"]) >= 1


def test_clip_lengths(dataset):
    root, summary = dataset
    durations = [sf.info(path).frames / SAMPLE_RATE for split in SPLITS for path in (root / split).iterdir()]
    assert MIN_DURATION_S - 1e-4 <= min(durations) and max(durations) <= MAX_DURATION_S + 1e-4
    assert summary.seconds == pytest.approx(sum(durations))

    default = plan_dataset(20, 400, 600, 200, seed=0, noise_rate=0.3)  # the default size, no audio
    planned = [plan.duration_s for plan in default]
    assert min(planned) < 0.5 and max(planned) > 10.0
    draws = np.array([sample_duration(np.random.default_rng(i)) for i in range(2000)])
    assert MIN_DURATION_S <= draws.min() and draws.max() <= MAX_DURATION_S
    assert np.mean(draws < 0.5) == pytest.approx(np.log(0.5 / 0.3) / np.log(40), abs=0.03)


def test_some_clips_have_near_silence_that_a_60_db_trim_removes(dataset):
    root, _ = dataset
    trimmed = []
    for path in sorted((root / "train_curated").iterdir())[:40]:
        y, _ = sf.read(path, dtype="float32")
        # librosa.effects.trim's criterion (frames 60 dB below the loudest), without its JIT start-up.
        frames = y[: y.size // 512 * 512].reshape(-1, 512)
        level = 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-20)
        loud = np.flatnonzero(level > level.max() - 60)
        trimmed.append(1 - (loud[-1] - loud[0] + 1) / len(frames))
    assert max(trimmed) > 0.1 and np.median(trimmed) < 0.1


def test_same_seed_same_bytes_in_any_process_other_seed_other_bytes(tmp_path):
    arguments = dict(num_classes=4, num_curated=3, num_noisy=3, num_test=2, progress=False)
    first = all_files(synthesize_dataset(tmp_path / "a", seed=7, **arguments).root)
    second = all_files(synthesize_dataset(tmp_path / "b", seed=7, workers=2, **arguments).root)
    other = all_files(synthesize_dataset(tmp_path / "c", seed=8, **arguments).root)
    assert first == second
    assert len(first) == 3 + 3 + 2 + 5  # wavs, four csvs and the manifest
    sizes = dict(num_classes=4, num_curated=3, num_noisy=3, num_test=2)
    assert read_synth_manifest(tmp_path / "a") == synth_manifest(seed=7, **sizes)
    assert read_synth_manifest(tmp_path / "c") != synth_manifest(seed=7, **sizes)
    assert synth_manifest(seed=7, **sizes)["version"] == GENERATOR_VERSION
    assert read_synth_manifest(tmp_path) is None
    wavs = lambda files: {name: data for name, data in files.items() if name.suffix == ".wav"}  # noqa: E731
    assert not set(wavs(first)) & set(wavs(other))
    assert not set(wavs(first).values()) & set(wavs(other).values())


def test_a_clip_does_not_depend_on_the_other_splits(tmp_path):
    small = synthesize_dataset(tmp_path / "small", num_classes=4, num_curated=2, num_noisy=1, num_test=1,
                               seed=5, progress=False).root
    large = synthesize_dataset(tmp_path / "large", num_classes=4, num_curated=3, num_noisy=0, num_test=2,
                               seed=5, progress=False).root
    for split in ("train_curated", "test"):
        for path in (small / split).iterdir():
            assert path.read_bytes() == (large / split / path.name).read_bytes()


def test_rerun_replaces_an_earlier_synth_output_but_not_other_data(tmp_path):
    root = tmp_path / "data"
    synthesize_dataset(root, num_classes=3, num_curated=4, num_noisy=2, num_test=2, seed=1, progress=False)
    synthesize_dataset(root, num_classes=3, num_curated=2, num_noisy=1, num_test=1, seed=2, progress=False)
    assert sum(1 for _ in root.rglob("*.wav")) == 4  # nothing stale left behind
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]  # staging cleaned up

    foreign = tmp_path / "real"
    foreign.mkdir()
    (foreign / "train_curated.csv").write_text("fname,labels\n")
    with pytest.raises(SynthError, match="not written by freesound synth"):
        synthesize_dataset(foreign, num_classes=3, num_curated=1, num_noisy=1, num_test=1, progress=False)
    assert (foreign / "train_curated.csv").read_text() == "fname,labels\n"


def test_noisy_labels_are_corrupted_at_the_requested_rate(dataset):
    plans = plan_dataset(10, 0, 800, 0, seed=11, noise_rate=0.3)
    corrupted = [plan for plan in plans if plan.given != plan.labels]
    assert len(corrupted) / len(plans) == pytest.approx(0.3, abs=0.06)  # 4.5 binomial sd
    for plan in corrupted:  # exactly one label replaced, or one of several dropped
        kept = set(plan.given) & set(plan.labels)
        assert len(kept) == len(plan.labels) - 1 and len(plan.given) in (len(plan.labels), len(plan.labels) - 1)
        assert plan.given
    single = [plan for plan in plans if len(plan.labels) == 1]
    assert all(len(plan.given) == 1 for plan in single)  # a lone label is replaced, never dropped
    assert {len(plan.given) < len(plan.labels) for plan in corrupted} == {True, False}  # both kinds occur

    clean = plan_dataset(10, 0, 200, 0, seed=11, noise_rate=0.0)
    assert all(plan.given == plan.labels for plan in clean)
    assert [plan.labels for plan in clean] == [plan.labels for plan in plans[:200]]  # the rate moves only labels
    assert all(plan.given != plan.labels for plan in plan_dataset(10, 0, 200, 0, seed=11, noise_rate=1.0))

    root, summary = dataset  # and the written CSV is what the plan says
    plans = plan_dataset(NUM_CLASSES, 96, 48, 40, seed=3, noise_rate=0.3)
    classes = FSD2019_CLASSES[:NUM_CLASSES]
    written = dict(read_labels(root / "train_noisy.csv").itertuples(index=False))
    noisy = [plan for plan in plans if plan.split == "train_noisy"]
    assert written == {plan.fname: ",".join(classes[c] for c in plan.given) for plan in noisy}
    assert summary.corrupted == sum(plan.given != plan.labels for plan in noisy)


def test_corrupt_labels_rate_edges():
    rng = np.random.default_rng(0)
    assert corrupt_labels((2,), 5, 0.0, rng) == (2,)
    wrong = corrupt_labels((2,), 5, 1.0, rng)
    assert len(wrong) == 1 and wrong != (2,) and 0 <= wrong[0] < 5
    for _ in range(20):  # a clip holding every class has nothing to swap in: it loses a label
        assert corrupt_labels((0, 1), 2, 1.0, rng) in {(0,), (1,)}


MEL_BASIS = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=2560, n_mels=128, fmin=20, fmax=22050)


def mean_profile(path):
    """Mean log-mel (the project's front-end numbers) of a clip's first 2 s, level-normalised: (128,) dB."""
    y, _ = sf.read(path, dtype="float32", frames=2 * SAMPLE_RATE)
    power = np.abs(librosa.stft(y, n_fft=2560, hop_length=690, pad_mode="reflect")) ** 2
    profile = librosa.power_to_db(MEL_BASIS @ power, ref=1.0, amin=1e-10, top_db=80).mean(axis=1)
    return profile - profile.mean()


def test_twin_pairs_are_separable_in_log_mel(dataset):
    """Class pairs (2m, 2m+1) share a spectrum, so a mean log-mel profile finds the pair, not the
    class; the time course (onset sharper than offset, or the reverse) separates the twins."""
    root, _ = dataset

    def single_label(table, split):
        frame = read_labels(root / table)
        frame = frame[~frame.labels.str.contains(",")]
        return [root / split / fname for fname in frame.fname], frame.labels.to_numpy()

    classes = list(synth_classes(NUM_CLASSES))
    pair = {name: classes.index(name) // 2 for name in classes}
    train_paths, train_labels = single_label("train_curated.csv", "train_curated")
    test_paths, test_labels = single_label("test_labels.csv", "test")
    train = np.stack([mean_profile(p) for p in train_paths])
    test = np.stack([mean_profile(p) for p in test_paths])
    train_pairs = np.array([pair[n] for n in train_labels])
    test_pairs = np.array([pair[n] for n in test_labels])
    centroids = np.stack([train[train_pairs == k].mean(axis=0) for k in range(NUM_CLASSES // 2)])
    predicted = np.argmin(((test[:, None] - centroids[None]) ** 2).sum(axis=-1), axis=1)
    assert len(test_labels) >= 20
    assert np.mean(predicted == test_pairs) > 0.6  # chance is 1/4

    # Within a pair: the forward twin rises faster than it falls, the reversed one the opposite.
    def asymmetry(path):
        y, _ = librosa.load(path, sr=SAMPLE_RATE)
        energy = librosa.feature.rms(y=y, frame_length=1024, hop_length=256)[0]
        slope = np.diff(librosa.amplitude_to_db(energy + 1e-6))
        return float(np.sum(np.clip(slope, 0, None) ** 2) - np.sum(np.clip(slope, None, 0) ** 2))

    forward = [asymmetry(p) for p, n in zip(test_paths, test_labels) if classes.index(n) % 2 == 0]
    backward = [asymmetry(p) for p, n in zip(test_paths, test_labels) if classes.index(n) % 2 == 1]
    assert np.median(forward) > 0 > np.median(backward)


def test_twins_share_a_signature_and_reverse_it():
    signatures = twin_signatures(6, seed=0)
    for m in range(3):
        even, odd = signatures[2 * m], signatures[2 * m + 1]
        assert not even.reversed and odd.reversed
        assert dataclasses.replace(odd, reversed=False) == even
        assert even.event_rate_hz > 0 and even.attack_s < 0.02 < even.decay_s
        assert even.partials_hz and 0.3 <= abs(even.glide) <= 0.6
    forward = render_source(signatures[0], 20000, np.random.default_rng(1))
    backward = render_source(signatures[1], 20000, np.random.default_rng(1))
    np.testing.assert_allclose(backward, forward[::-1], atol=1e-6)


def peak_hz(x):
    """The strongest frequency of a Hann-windowed stretch of audio, Hz (to within a bin)."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spectrum) * SAMPLE_RATE / x.size)


@pytest.mark.parametrize("glide", [0.5, -0.4])
def test_a_glide_moves_the_pitch_towards_its_end_ratio_within_an_event(glide):
    """One event of a 1 kHz tone: the frequency is f (1 + g (1 - exp(-s / decay))) at s seconds;
    the reversed twin glides back the other way."""
    decay, window = 0.3, 4096
    sig = dataclasses.replace(class_signature(0, np.random.default_rng(0)), partials_hz=(1000.0,),
                              partial_gains=(1.0,), vibrato_hz=0.0, glide=glide, decay_s=decay)
    n = SAMPLE_RATE
    since = np.arange(n, dtype=np.float32) / SAMPLE_RATE  # a single event from the first sample
    tone = _tones(n, sig, 1.0, np.random.default_rng(0), since)
    for start in (0, 13000, 30000):
        middle = (start + window / 2) / SAMPLE_RATE
        expected = 1000.0 * (1.0 + glide * (1.0 - np.exp(-middle / decay)))
        assert peak_hz(tone[start:start + window]) == pytest.approx(expected, rel=0.02)
    assert (peak_hz(tone[-window:]) - peak_hz(tone[:window])) * glide > 300 * abs(glide)
    backward = tone[::-1]
    assert (peak_hz(backward[-window:]) - peak_hz(backward[:window])) * glide < 0


def test_class_signatures_differ_and_render_to_the_asked_length():
    signatures = [class_signature(i, np.random.default_rng(i)) for i in range(10)]
    assert all(isinstance(sig, ClassSignature) for sig in signatures)
    assert len(set(signatures)) == 10
    assert class_signature(3, np.random.default_rng(0)) == class_signature(3, np.random.default_rng(0))
    for shifted in (False, True):
        clip = render_clip(signatures[:3], 0.7, np.random.default_rng(1), shifted=shifted)
        assert clip.dtype == np.float32 and clip.shape == (round(0.7 * SAMPLE_RATE),)
        assert np.isfinite(clip).all() and 0.01 < np.abs(clip).max() <= 1.0


@pytest.mark.parametrize("num_classes", [81, 1, 0])
def test_bad_class_count_is_a_clear_error(tmp_path, num_classes):
    with pytest.raises(SynthError, match=f"between 2 and 80 classes.*got {num_classes}") as info:
        synthesize_dataset(tmp_path / "d", num_classes=num_classes, num_curated=1, num_noisy=1, num_test=1,
                           progress=False)
    assert isinstance(info.value, ValueError) and isinstance(info.value, FreesoundError)
    assert not (tmp_path / "d").exists()


def test_bad_rate_or_count_is_a_clear_error(tmp_path):
    with pytest.raises(SynthError, match="noise_rate"):
        synthesize_dataset(tmp_path / "d", noise_rate=1.5, progress=False)
    with pytest.raises(SynthError, match="num_test"):
        synthesize_dataset(tmp_path / "d", num_test=-1, progress=False)
