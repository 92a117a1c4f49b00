"""The log-mel cache: hits, misses on changed files or config, resume, failures; and folds."""

import os
import shutil

import numpy as np
import pandas as pd
import pytest

from freesound.audio import AudioConfig, read_as_melspectrogram
from freesound.data.dataset import load_dataset
from freesound.data.features import MissingFeaturesError, cache_features, cache_root, load_features
from freesound.data.folds import make_folds, read_folds, write_folds
from freesound.errors import FreesoundError


@pytest.fixture
def dataset_copy(tiny_data, tmp_path):
    dataset, _ = tiny_data
    shutil.copytree(dataset.root, tmp_path / "data")
    return load_dataset(tmp_path / "data"), tmp_path / "work"


def count_cached(work, dataset, config=None):
    return len(list(cache_root(work, dataset.root, config or AudioConfig()).rglob("*.npy")))


def test_cache_hit_and_values(dataset_copy):
    dataset, work = dataset_copy
    total = len(dataset.curated) + len(dataset.noisy) + len(dataset.test_fnames)
    first = cache_features(dataset, work, progress=False)
    assert (first.computed, first.cached, first.failures) == (total, 0, [])
    second = cache_features(dataset, work, progress=False)
    assert (second.computed, second.cached) == (0, total)
    fname = dataset.curated.fname[0]
    cached = load_features(dataset, work, "train_curated", [fname])[0]
    np.testing.assert_array_equal(cached, read_as_melspectrogram(dataset.root / "train_curated" / fname))


def test_changed_file_is_recomputed_and_stale_entry_dropped(dataset_copy):
    dataset, work = dataset_copy
    cache_features(dataset, work, splits=("train_curated",), progress=False)
    before = count_cached(work, dataset)
    victim = dataset.root / "train_curated" / dataset.curated.fname[3]
    other = dataset.root / "train_curated" / dataset.curated.fname[4]
    shutil.copyfile(other, victim)
    os.utime(victim, ns=(10**18, 10**18))  # a new modification time, as any rewrite gives
    with pytest.raises(MissingFeaturesError, match=victim.name):
        load_features(dataset, work, "train_curated")
    report = cache_features(dataset, work, splits=("train_curated",), progress=False)
    assert report.computed == 1
    assert count_cached(work, dataset) == before
    np.testing.assert_array_equal(load_features(dataset, work, "train_curated", [victim.name])[0],
                                  read_as_melspectrogram(other))


def test_caching_lists_each_split_folder_once_not_once_per_clip(dataset_copy, monkeypatch):
    """A listing per clip (a glob for its stale entries) made caching quadratic in the split size:
    about 17 ms a clip in a folder of 20,000 cache files, 3 CPU-minutes for the real noisy split."""
    dataset, work = dataset_copy
    cache_features(dataset, work, splits=("train_curated",), progress=False)
    victim = dataset.root / "train_curated" / dataset.curated.fname[2]
    os.utime(victim, ns=(10**18, 10**18))  # one stale entry to replace
    listings = []
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path=".": listings.append(str(path)) or real_scandir(path))
    monkeypatch.setattr(type(work), "glob", lambda self, pattern: listings.append(pattern) or iter(()))
    report = cache_features(dataset, work, progress=False)
    assert report.computed == len(dataset.noisy) + len(dataset.test_fnames) + 1
    assert len(listings) == 3  # one per split
    assert count_cached(work, dataset) == report.computed + report.cached


def test_iter_features_reads_a_chunk_at_a_time(dataset_copy, monkeypatch):
    import freesound.data.features as features

    dataset, work = dataset_copy
    cache_features(dataset, work, splits=("train_noisy",), progress=False)
    whole = load_features(dataset, work, "train_noisy")
    sizes = []
    real_load = features.load_features
    monkeypatch.setattr(features, "load_features", lambda *a, **k: sizes.append(len(a[3])) or real_load(*a, **k))
    streamed = list(features.iter_features(dataset, work, "train_noisy", chunk=7))
    assert len(streamed) == len(whole) and all(np.array_equal(a, b) for a, b in zip(streamed, whole))
    assert max(sizes) == 7 and sum(sizes) == len(whole)


def test_changed_config_uses_another_cache(dataset_copy):
    dataset, work = dataset_copy
    cache_features(dataset, work, splits=("test",), progress=False)
    config = AudioConfig(n_mels=64)
    assert cache_root(work, dataset.root, config) != cache_root(work, dataset.root, AudioConfig())
    with pytest.raises(MissingFeaturesError):
        load_features(dataset, work, "test", config=config)
    report = cache_features(dataset, work, config, splits=("test",), progress=False)
    assert report.computed == len(dataset.test_fnames)
    assert load_features(dataset, work, "test", config=config)[0].shape[0] == 64


def test_interrupted_run_resumes(dataset_copy):
    dataset, work = dataset_copy
    cache_features(dataset, work, splits=("train_noisy",), progress=False)
    entries = sorted(cache_root(work, dataset.root, AudioConfig()).rglob("*.npy"))
    for path in entries[::3]:
        path.unlink()
    # A temporary file left by a killed writer is never mistaken for a result.
    (entries[1].parent / f".{entries[1].name}.abc.tmp").write_bytes(b"partial")
    report = cache_features(dataset, work, splits=("train_noisy",), workers=2, progress=False)
    assert report.computed == len(entries[::3])
    assert report.cached == len(entries) - len(entries[::3])
    assert len(load_features(dataset, work, "train_noisy")) == len(dataset.noisy)


def test_undecodable_clip_is_reported_and_the_rest_cached(dataset_copy):
    dataset, work = dataset_copy
    broken = dataset.root / "test" / dataset.test_fnames[2]
    broken.write_bytes(b"not audio at all")
    (dataset.root / "test" / dataset.test_fnames[5]).unlink()
    report = cache_features(dataset, work, splits=("test",), workers=2, progress=False)
    reasons = {fname: reason for _, fname, reason in report.failures}
    assert set(reasons) == {broken.name, dataset.test_fnames[5]}
    assert reasons[dataset.test_fnames[5]] == "no such file"
    assert report.computed == len(dataset.test_fnames) - 2


def test_make_folds_is_seeded_kfold(tmp_path):
    fnames = [f"{i:04d}.wav" for i in range(23)]
    folds = make_folds(fnames, n_folds=5, seed=42)
    assert list(folds.fname) == fnames
    assert sorted(folds.fold.value_counts()) == [4, 4, 5, 5, 5]
    assert folds.equals(make_folds(fnames, n_folds=5, seed=42))
    assert not folds.equals(make_folds(fnames, n_folds=5, seed=1))
    write_folds(tmp_path, folds)
    assert read_folds(tmp_path, fnames).equals(folds)
    with pytest.raises(FreesoundError, match="does not match"):
        read_folds(tmp_path, fnames[:-1])
    with pytest.raises(FreesoundError, match="cannot make 5 folds"):
        make_folds(fnames[:3])
    assert pd.read_csv(tmp_path / "folds.csv").columns.tolist() == ["fname", "fold"]
