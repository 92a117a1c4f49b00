"""``train.augment_on_device``: the batch-level work (SpecAugment, deltas, mixing) done on a batch on
the device gives the CPU pipeline's images for the same seed, epoch and index, so training draws
from the same distribution either way."""

import dataclasses

import librosa
import numpy as np
import pandas as pd
import pytest
import torch

from freesound.audio.network_input import to_network_input
from freesound.config import experiment_from_dict
from freesound.training.augment import (
    DeferredSpecAugment,
    SpecAugment,
    UseWithProb,
    apply_masks,
    train_transform,
    train_window_transform,
)
from freesound.training.device_augment import BatchAugment, delta_matrix, mask_spans
from freesound.training.mixers import method_mixer
from freesound.training.sampling import ClipSource, SamplingDataset, WindowSamplingDataset
from freesound.training.trainer import train_fold

#: float32 matrix products against librosa's float64 filter, on inputs of magnitude <= 0.8.
TOLERANCE = 1e-5


def logmels(rng, n, frames_range=(20, 900)):
    """Log-mel-like clips of random lengths, shorter and longer than a 256-frame window."""
    return [rng.uniform(-80.0, 0.0, (128, int(rng.integers(*frames_range)))).astype(np.float32) for _ in range(n)]


def sources(seed=0, classes=10):
    rng = np.random.default_rng(seed)
    return [ClipSource("curated", logmels(rng, 20), (rng.random((20, classes)) < 0.2).astype(np.float32), False),
            ClipSource("noisy", logmels(rng, 20), (rng.random((20, classes)) < 0.2).astype(np.float32), True)]


def both_datasets(spec_prob=0.5, resize_prob=0.33, mix_prob=0.8, size=256, epoch=2, freq_warp_prob=0.0,
                  mixer_probs=(0.6, 0.4, 0.0), freq_channel=False):
    options = dict(resize_prob=resize_prob, spec_prob=spec_prob, freq_warp_prob=freq_warp_prob)
    cpu = SamplingDataset(sources(), [0.6, 0.4], 512, train_transform(size, **options),
                          method_mixer(mix_prob, *mixer_probs), seed=3, freq_channel=freq_channel)
    device = WindowSamplingDataset(sources(), [0.6, 0.4], 512, train_window_transform(size, **options),
                                   method_mixer(mix_prob, *mixer_probs), seed=3)
    cpu.set_epoch(epoch)
    device.set_epoch(epoch)
    return cpu, device


def collate(items):
    return [torch.stack([item[k] for item in items]) for k in range(len(items[0]))]


def test_delta_matrix_is_librosas_delta():
    x = np.random.default_rng(0).normal(size=(5, 256)).astype(np.float32)
    for order in (1, 2):
        expected = librosa.feature.delta(x, width=9, order=order, axis=-1)
        assert np.abs(x @ delta_matrix(256, order) - expected).max() < 1e-5
    assert np.abs(x[:, :40] @ delta_matrix(40, 1) - librosa.feature.delta(x[:, :40], width=9)).max() < 1e-5


def test_mask_spans_marks_each_span():
    starts, lengths = torch.tensor([[2, 7], [0, 0]]), torch.tensor([[3, 1], [0, 0]])
    marked = mask_spans(starts, lengths, 10)
    assert marked[0].nonzero().flatten().tolist() == [2, 3, 4, 7]
    assert not marked[1].any()


def test_deferred_spec_augment_draws_what_spec_augment_applies():
    """Same generator state in, same numbers drawn: applying the deferred masks is the transform."""
    window = np.random.default_rng(1).uniform(-80, 0, (128, 256)).astype(np.float32)
    spec_augment = SpecAugment()
    for seed in range(30):
        expected = UseWithProb(spec_augment, 0.5)(window, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        _, masks = DeferredSpecAugment(spec_augment, 0.5)(window, rng)
        assert masks.shape == (2, 4)
        assert np.array_equal(apply_masks(window, masks), expected)
        # Both left the generator in the same state.
        reference = np.random.default_rng(seed)
        UseWithProb(spec_augment, 0.5)(window, reference)
        assert rng.random() == reference.random()


@pytest.mark.parametrize("settings", [{}, {"spec_prob": 1.0, "resize_prob": 1.0, "mix_prob": 1.0},
                                      {"spec_prob": 0.0, "resize_prob": 0.0, "mix_prob": 0.0},
                                      {"freq_warp_prob": 0.7, "mixer_probs": (0.3, 0.2, 0.5), "freq_channel": True}])
def test_batch_augment_gives_the_cpu_pipelines_images(settings):
    """Every sample of a batch (mixed or not, masked or not, resized or not, warped or not, by
    SpecMix or not, with the frequency-position plane or not) equals the CPU pipeline's image for
    the same index; targets are identical."""
    cpu, device = both_datasets(**settings)
    indices = range(40, 88)
    images, targets, noisy = collate([cpu[i] for i in indices])
    windows, masks, weights, bands, device_targets, device_noisy = collate([device[i] for i in indices])
    out = BatchAugment(256, "cpu", settings.get("freq_channel", False))(windows, masks, weights, bands)
    planes = 4 if settings.get("freq_channel") else 3
    assert out.shape == images.shape == (48, planes, 128, 256) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert (out - images).abs().max().item() < TOLERANCE
    assert torch.equal(device_targets, targets) and torch.equal(device_noisy, noisy)
    if not settings:  # the method's probabilities: the batch holds every kind of sample
        mixed = (weights[:, 1] != 0).any(dim=1)
        masked = (masks[:, 0, :, 1] + masks[:, 0, :, 3]).sum(dim=1) > 0
        assert 0 < mixed.sum() < len(indices) and 0 < masked.sum() < len(indices)
        assert not bands.any()
    if settings.get("freq_channel"):  # SpecMix took bands whole in some samples; the plane is exact
        assert 0 < bands.any(dim=1).sum() < len(indices)
        assert torch.equal(out[:, 3], images[:, 3])
        expected = (2 * torch.arange(128, dtype=torch.float64) / 127 - 1)[None, :, None].expand(48, 128, 256)
        assert (out[:, 3].double() - expected).abs().max().item() < 1e-6


def test_an_unmixed_sample_is_its_own_network_input():
    _, device = both_datasets(spec_prob=0.0, resize_prob=0.0, mix_prob=0.0)
    windows, masks, weights, bands, _, _ = collate([device[5]])
    assert torch.equal(weights[0], torch.stack([torch.ones(256), torch.zeros(256)])) and not bands.any()
    out = BatchAugment(256, "cpu")(windows, masks, weights, bands)[0].numpy()
    assert np.abs(out - to_network_input(windows[0, 0].numpy())).max() < TOLERANCE


#: The input options of the other top solutions, all on (tests/test_input_options.py).
INPUT_OPTIONS = {"input": {"freq_channel": True}, "transforms": {"freq_warp_prob": 0.5},
                 "mixers": {"prob": 1.0, "sigmoid_concat": 0.3, "add": 0.2, "specmix": 0.5}}


@pytest.mark.parametrize("options", [{}, INPUT_OPTIONS], ids=["method", "input-options"])
def test_training_with_augment_on_device_matches_the_cpu_pipeline(tiny_data, tmp_path, options):
    """The setting changes where the work runs, not what is trained: a fold's first batch has the
    CPU pipeline's loss (to float rounding), with the method's augmentation and with the input
    options on. (Later steps drift apart: Adam's first step moves every weight by about the
    learning rate times the sign of its gradient, and rounding flips the sign of the near-zero ones.)"""
    import shutil

    dataset, work = tiny_data
    values = {"name": "tiny", "model": {"name": "simple_cnn", "params": {"base_size": 4}, "aux_weights": [1.0]},
              "train": {"batch_size": 8, "epoch_size": 8, "max_epochs": 1, "workers": 0, "lr": 3e-3},
              "sampling": {"curated": 0.7, "corrected_noisy": 0.0, "noisy": 0.3}, **options}
    losses = {}
    for on_device in (False, True):
        run_work = tmp_path / str(on_device)
        shutil.copytree(work, run_work)
        experiment = experiment_from_dict(values)
        experiment = dataclasses.replace(experiment, train=dataclasses.replace(experiment.train,
                                                                               augment_on_device=on_device))
        train_fold(experiment, dataset, run_work, 0, progress=False, log=lambda *_: None)
        losses[on_device] = pd.read_csv(run_work / "experiments/tiny/fold_0/log.csv").train_loss[0]
    assert losses[True] == pytest.approx(losses[False], abs=1e-6)
