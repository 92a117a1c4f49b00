"""Real recordings end to end: 100 clips of the Free Spoken Digit Dataset (two speakers, 8 kHz)
through prepare -> features -> folds grouped by speaker -> 1 epoch of a tiny model -> predict.

The audio is read from ``../shared/data/fsdd`` (never copied into the repository); the test skips
with the reason when it is absent.
"""

import shutil
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import run_cli, tiny_experiment_toml

from freesound.data.dataset import load_dataset
from freesound.data.features import load_features

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "recordings"
SPEAKERS = ("george", "jackson")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FSDD.is_dir(), reason=f"the FSDD recordings are not at {FSDD}"),
]


@pytest.fixture(scope="module")
def fsdd_run(tmp_path_factory):
    """Two speakers x 10 digits x indexes 0-4 (100 clips; index 0 is the test split)."""
    root = tmp_path_factory.mktemp("fsdd")
    src = root / "recordings"
    src.mkdir()
    for speaker in SPEAKERS:
        for digit in range(10):
            for index in range(5):
                name = f"{digit}_{speaker}_{index}.wav"
                shutil.copyfile(FSDD / name, src / name)
    data, work = root / "data", root / "work"
    experiments = root / "experiments"
    experiments.mkdir()
    (experiments / "tiny.toml").write_text(tiny_experiment_toml("aux_skip_attention", epoch_size=16, max_epochs=1))
    outputs = {
        "prepare": run_cli("prepare", src, data, "--pattern", "{label}_{group}_{index}.wav",
                           "--test-column", "index", "--test-value", "0").output,
        "features": run_cli("features", "--data", data, "--work", work, "--workers", "2").output,
        "folds": run_cli("make-folds", "--data", data, "--work", work, "--folds", "2", "--group-by", "group").output,
    }
    common = ["--data", data, "--work", work, "--experiments", experiments, "--device", "cpu"]
    outputs["train"] = run_cli("train", "tiny", *common).output
    outputs["predict"] = run_cli("predict", "tiny", *common).output
    return src, data, work, outputs


def test_layout_from_real_recordings(fsdd_run):
    src, data, _, outputs = fsdd_run
    assert "prepared: 80 training and 20 test clips of 10 classes" in outputs["prepare"]
    dataset = load_dataset(data)
    assert dataset.classes == tuple(str(d) for d in range(10))
    assert len(dataset.curated) == 80 and len(dataset.test_fnames) == 20
    assert all(name.endswith("_0.wav") for name in dataset.test_fnames)
    assert all(label == (name.split("_")[0],) for name, label in zip(dataset.curated.fname, dataset.curated.labels))
    for name in dataset.test_fnames:  # linked or copied, byte for byte, never re-encoded
        assert (data / "test" / name).read_bytes() == (src / name).read_bytes()
    meta = pd.read_csv(data / "metadata.csv", dtype=str)
    assert set(meta.group) == set(SPEAKERS)


def test_8khz_audio_arrives_as_44k_log_mels(fsdd_run):
    _, data, work, _ = fsdd_run
    dataset = load_dataset(data)
    fnames = dataset.curated.fname.tolist()
    logmels = load_features(dataset, work, "train_curated", fnames)
    for fname, logmel in zip(fnames[:12], logmels[:12]):
        path = data / "train_curated" / fname
        assert sf.info(path).samplerate == 8000
        # Independently: librosa's resampling to 44.1 kHz, its 60 dB trim and the 0.5 s minimum,
        # then centred frames at hop 690.
        y, _ = librosa.load(path, sr=44100)
        length = max(len(librosa.effects.trim(y, top_db=60)[0]), 22050)
        assert logmel.dtype == np.float32 and logmel.shape[0] == 128
        assert abs(logmel.shape[1] - (1 + length // 690)) <= 1, (fname, logmel.shape)
        # Nothing above the 4 kHz Nyquist limit of the recording: the mel bands above ~4.3 kHz
        # sit at the floor (80 dB below the peak) while the speech bands do not.
        floor = logmel.max() - 80
        high = librosa.mel_frequencies(n_mels=130, fmin=20, fmax=22050)[1:-1] > 4300
        assert logmel[high].mean() < floor + 6 and logmel[~high].mean() > floor + 20


def test_folds_keep_speakers_apart(fsdd_run):
    _, data, work, outputs = fsdd_run
    assert "2 groups kept apart" in outputs["folds"]
    folds = pd.read_csv(work / "folds.csv")
    speakers = folds.fname.str.split("_").str[1]
    assert folds.groupby(speakers).fold.nunique().tolist() == [1, 1]
    assert sorted(folds.fold.unique()) == [0, 1]


def test_every_test_clip_gets_a_row(fsdd_run):
    _, data, work, outputs = fsdd_run
    assert "fold 1:" in outputs["train"] and "OOF lwlrap" in outputs["train"]
    submission = pd.read_csv(work / "predictions" / "tiny" / "test.csv")
    expected = pd.read_csv(data / "sample_submission.csv")
    assert submission.fname.tolist() == expected.fname.tolist()
    assert list(submission.columns) == list(expected.columns)
    probs = submission.drop(columns="fname").to_numpy()
    assert np.isfinite(probs).all() and ((probs > 0) & (probs < 1)).all()
    oof = pd.read_csv(work / "predictions" / "tiny" / "oof.csv")
    assert sorted(oof.fname) == sorted(load_dataset(data).curated.fname)
