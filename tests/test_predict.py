"""Tiling and the Tagger."""

import numpy as np
import pytest
import soundfile as sf

from benchmarks.reference import reference_predict
from conftest import random_model
from freesound.audio import AudioDecodeError, read_as_melspectrogram, silent_logmel
from freesound.audio.network_input import to_network_input
from freesound.errors import FreesoundError
from freesound.models import save_checkpoint
from freesound.paths import experiment_checkpoints
from freesound.predict import Tagger, geometric_mean, make_tiles, tile_layout
from freesound.training.oof import OOFTiles


@pytest.mark.parametrize("width,expected", [
    (1, (1, 127, 128)),        # far shorter than a tile: padded to 256
    (100, (1, 78, 78)),
    (192, (1, 32, 32)),
    (255, (1, 0, 1)),
    (256, (1, 0, 0)),          # exactly one tile
    (257, (2, 31, 32)),        # one frame over: a second tile, 63 frames of padding
    (320, (2, 0, 0)),
    (1000, (13, 12, 12)),      # long: 13 tiles cover 1024 = 1000 + 24
])
def test_tile_layout_hand_checked(width, expected):
    assert tile_layout(width, step=64) == expected
    n_tiles, left, right = expected
    # The tiles exactly cover the padded clip.
    assert (n_tiles - 1) * 64 + 256 == width + left + right


def test_tile_layout_other_step():
    assert tile_layout(300, step=128) == (2, 42, 42)
    with pytest.raises(ValueError):
        tile_layout(0)


def test_tiles_pad_with_clip_minimum_and_carry_deltas():
    rng = np.random.default_rng(0)
    logmel = rng.uniform(-60, 0, size=(128, 100)).astype(np.float32)
    tiles = make_tiles(logmel)
    assert tiles.shape == (1, 3, 128, 256) and tiles.dtype == np.float32
    base = tiles[0, 0] * 100
    np.testing.assert_allclose(base[:, :78], logmel.min(), rtol=1e-6)
    np.testing.assert_allclose(base[:, 78:178], logmel, rtol=1e-6)
    np.testing.assert_allclose(base[:, 178:], logmel.min(), rtol=1e-6)
    padded = np.pad(logmel, ((0, 0), (78, 78)), constant_values=logmel.min())
    np.testing.assert_allclose(tiles[0], to_network_input(padded), rtol=1e-6)


def test_tiles_of_a_long_clip_start_at_multiples_of_step():
    logmel = np.arange(128 * 400, dtype=np.float32).reshape(128, 400)
    tiles = make_tiles(logmel)
    n, left, right = tile_layout(400)
    assert (n, left, right) == (4, 24, 24)
    assert len(tiles) == n
    padded = np.pad(logmel, ((0, 0), (left, right)), constant_values=logmel.min())
    assert (n - 1) * 64 + 256 == padded.shape[1]  # the last tile ends at the padded clip's end
    for i in range(n):  # every tile, the last one included
        np.testing.assert_allclose(tiles[i, 0] * 100, padded[:, i * 64:i * 64 + 256], rtol=1e-6)


def test_geometric_mean():
    p = np.array([[0.25, 0.5], [0.64, 0.5]], dtype=np.float32)
    np.testing.assert_allclose(geometric_mean(p), [0.4, 0.5], rtol=1e-6)


def test_aggregates_keep_float64_until_ranked():
    """A float64 blend and the OOF clip means stay float64: rounding them to float32 before ranking
    would tie scores that differ (here by 1e-9)."""
    p = np.array([[0.999999999, 0.999999998], [0.5, 0.5]])
    blend = geometric_mean(p)
    assert blend.dtype == np.float64 and blend[0] > blend[1]
    assert geometric_mean(p.astype(np.float32)).dtype == np.float32  # the models' own precision
    above = np.nextafter(np.float32(0.7), np.float32(1))  # the next float32 above 0.7
    tiles = OOFTiles(np.array(["x.wav"]), np.array([0]), np.array([0, 2]),
                     np.array([[0.8, 0.7], [above, 0.8]], dtype=np.float32))
    means = tiles.clip_means()
    assert means.dtype == np.float64
    np.testing.assert_array_equal(means, tiles.probs.astype(np.float64).mean(axis=0, keepdims=True))
    assert means[0, 0] > means[0, 1]  # float32 means would tie
    assert np.float32(means[0, 0]) == np.float32(means[0, 1])


def small_models(n=2, classes=5):
    return [random_model(seed, classes) for seed in range(n)]


def test_tagger_equals_per_clip_reference():
    rng = np.random.default_rng(1)
    logmels = [rng.uniform(-80, 0, size=(128, w)).astype(np.float32) for w in (30, 256, 257, 700, 1500, 90)]
    models = small_models()
    tagger = Tagger(models, classes=list("abcde"), batch_size=7)
    ours = tagger.predict_spectrograms(logmels)
    expected = np.stack([reference_predict(models, m) for m in logmels])
    assert ours.shape == (6, 5) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    per_tile = tagger.tile_probabilities(logmels)
    assert [p.shape for p in per_tile] == [(2, tile_layout(m.shape[1])[0], 5) for m in logmels]


def test_predict_files_policies(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, np.sin(np.arange(44100) / 10).astype(np.float32) * 0.3, 44100, subtype="PCM_16")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF garbage")
    tagger = Tagger(small_models(1), classes=list("abcde"))
    with pytest.raises(AudioDecodeError, match="bad.wav"):
        tagger.predict_files([good, bad])
    failures = []
    frame = tagger.predict_files([bad, good], on_error="skip", failures=failures)
    assert list(frame.index) == ["good.wav"] and list(frame.columns) == list("abcde")
    assert failures and failures[0][0] == "bad.wav"
    frame = tagger.predict_files([bad, good], on_error="silence")
    assert list(frame.index) == ["bad.wav", "good.wav"]
    np.testing.assert_allclose(frame.loc["bad.wav"].to_numpy(), tagger.predict_spectrograms([silent_logmel()])[0])
    # Predicted beside a silent clip, in a batch of another shape: a float32 ulp apart on some CPUs.
    np.testing.assert_allclose(frame.loc["good.wav"].to_numpy(),
                               tagger.predict_spectrograms([read_as_melspectrogram(good)])[0], rtol=1e-6)


def test_from_experiment_loads_all_folds_and_names_missing(tmp_path):
    models = small_models(2)
    for fold, model in enumerate(models):
        save_checkpoint(tmp_path / f"fold_{fold}" / "model.pt", model, model_name="aux_skip_attention",
                        model_params={"num_classes": 5, "base_size": 8}, classes=list("abcde"), audio_config={})
    tagger = Tagger.from_experiment(tmp_path)
    assert len(tagger.models) == 2 and tagger.classes == list("abcde")
    logmel = np.random.default_rng(2).uniform(-80, 0, (128, 300)).astype(np.float32)
    np.testing.assert_allclose(tagger.predict_spectrograms([logmel])[0], reference_predict(models, logmel), atol=1e-5)
    with pytest.raises(FreesoundError, match=r"fold\(s\) 3 have no model.pt"):
        experiment_checkpoints(tmp_path, folds=[0, 3])


@pytest.mark.slow
def test_predicting_while_workers_decode_gives_the_same_outputs(tmp_path):
    """predict_files streams chunks of clips to the model while a worker decodes the next ones;
    its rows equal decoding every file first and predicting them all at once, for any chunk size,
    bad files included."""
    from freesound.predict.files import iter_logmel_chunks, predict_files

    rng = np.random.default_rng(3)
    paths = []
    for index, seconds in enumerate((0.3, 5.0, 1.2, 9.0, 2.5, 0.8, 6.0)):
        path = tmp_path / f"clip{index}.wav"
        sf.write(path, (0.3 * rng.standard_normal(int(seconds * 44100))).astype(np.float32), 44100, subtype="PCM_16")
        paths.append(path)
    (tmp_path / "clip2.wav").write_bytes(b"not audio")
    tagger = Tagger(small_models(2), classes=list("abcde"), batch_size=5, runtime="torch", workers=0)
    logmels = [read_as_melspectrogram(p) if p.name != "clip2.wav" else silent_logmel() for p in paths]
    sequential = tagger.predict_spectrograms(logmels)
    for workers, chunk_size in ((0, 7), (1, 2), (2, 3)):
        failures = []
        tagger.workers = workers
        frame = predict_files(tagger, paths, on_error="silence", failures=failures, chunk_size=chunk_size)
        assert list(frame.index) == [p.name for p in paths] and [f[0] for f in failures] == ["clip2.wav"]
        np.testing.assert_allclose(frame.to_numpy(), sequential, atol=1e-6)
    chunks = list(iter_logmel_chunks(paths, tagger.audio_config, on_error="skip", workers=1, chunk_size=3))
    assert [names for names, _ in chunks] == [["clip0.wav", "clip1.wav"], ["clip3.wav", "clip4.wav", "clip5.wav"],
                                              ["clip6.wav"]]
