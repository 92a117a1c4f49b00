import librosa
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from freesound.audio.network_input import to_network_input
from freesound.training.augment import (
    CenterCrop,
    Compose,
    OneOf,
    PadToSize,
    RandomCrop,
    RandomResizedCrop,
    SpecAugment,
    UseWithProb,
    random_pad_to_size,
    resize_bilinear,
    train_transform,
    valid_transform,
)

N_MELS = 128


def logmel(frames, seed=0):
    """A dB-like float32 spectrogram whose every column differs (so crops can be located)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-80.0, 0.0, size=(N_MELS, frames)).astype(np.float32)


def rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- padding


def test_pad_constant_centres_the_clip_and_fills_with_its_minimum():
    spec = logmel(100)
    out = PadToSize(256, "constant")(spec, None)
    assert out.shape == (N_MELS, 256) and out.dtype == np.float32
    left = (256 - 100) // 2
    np.testing.assert_array_equal(out[:, left : left + 100], spec)
    padding = np.concatenate([out[:, :left], out[:, left + 100 :]], axis=1)
    assert np.all(padding == spec.min())


def test_pad_wrap_repeats_the_clip_even_when_much_shorter():
    spec = logmel(7)
    out = PadToSize(256, "wrap")(spec, None)
    left = (256 - 7) // 2
    # Every column equals the clip column at the same phase.
    phase = (np.arange(256) - left) % 7
    np.testing.assert_array_equal(out, spec[:, phase])


def test_pad_random_placement_keeps_the_clip_intact_somewhere():
    spec = logmel(100)
    pad = PadToSize(256, "constant", placement="random")
    lefts = set()
    for seed in range(20):
        out = pad(spec, rng(seed))
        left = int(np.flatnonzero((out == spec[:, :1]).all(axis=0))[0])
        np.testing.assert_array_equal(out[:, left : left + 100], spec)
        lefts.add(left)
    assert len(lefts) > 1


def test_pad_leaves_long_clips_alone():
    spec = logmel(300)
    assert PadToSize(256)(spec, None) is spec


def test_random_pad_picks_both_modes():
    spec = logmel(50)
    pad = random_pad_to_size(256, wrap_prob=0.5)
    constant_edges = [np.all(pad(spec, rng(seed))[:, 0] == spec.min()) for seed in range(40)]
    assert 0 < sum(constant_edges) < 40


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="mode"):
        PadToSize(256, "reflect")
    with pytest.raises(ValueError, match="pad first"):
        RandomCrop(256)(logmel(100), rng())
    with pytest.raises(ValueError, match="probs"):
        OneOf([CenterCrop(), CenterCrop()], probs=[0.5, 0.6])
    with pytest.raises(ValueError, match="spectrogram"):
        PadToSize(256)(np.zeros((N_MELS, 0), np.float32), None)


# ----------------------------------------------------------------------------- cropping


def test_random_crop_is_a_contiguous_window_of_the_input():
    spec = logmel(1000)
    starts = set()
    for seed in range(20):
        out = RandomCrop(256)(spec, rng(seed))
        assert out.shape == (N_MELS, 256)
        start = int(np.flatnonzero((spec == out[:, :1]).all(axis=0))[0])
        np.testing.assert_array_equal(out, spec[:, start : start + 256])
        starts.add(start)
    assert len(starts) > 1


def test_center_crop_takes_the_middle():
    spec = logmel(301)
    np.testing.assert_array_equal(CenterCrop(256)(spec, None), spec[:, 22:278])


# ----------------------------------------------------------------------------- resized crop


def test_resize_bilinear_matches_torch_interpolate():
    image = logmel(256)
    crop = image[5:120, 17:250]
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(np.ascontiguousarray(crop))[None, None],
        size=image.shape,
        mode="bilinear",
        align_corners=False,
    )[0, 0].numpy()
    np.testing.assert_allclose(resize_bilinear(crop, image.shape), expected, atol=1e-4)


def test_resized_crop_box_respects_area_and_ratio():
    crop = RandomResizedCrop(scale=(0.8, 1.0), ratio=(1.7, 2.3))
    for seed in range(200):
        top, left, h, w = crop.sample_box((N_MELS, 256), rng(seed))
        assert 0 <= top and top + h <= N_MELS and 0 <= left and left + w <= 256
        if (h, w) != (N_MELS, 256):
            # Rounding each side to whole pixels moves area and ratio by a pixel's worth.
            assert 0.8 * 0.97 <= h * w / (N_MELS * 256) <= 1.0
            assert 1.7 * 0.97 <= w / h <= 2.3 * 1.03


def test_resized_crop_falls_back_to_the_full_window():
    spec = logmel(256)
    # A 10:1 box of at least 80% area cannot fit a 2:1 window.
    crop = RandomResizedCrop(scale=(0.8, 1.0), ratio=(10.0, 10.0))
    assert crop.sample_box(spec.shape, rng()) == (0, 0, N_MELS, 256)
    assert crop(spec, rng()) is spec


def test_resized_crop_keeps_shape_dtype_and_range():
    spec = logmel(256)
    for seed in range(10):
        out = RandomResizedCrop()(spec, rng(seed))
        assert out.shape == spec.shape and out.dtype == np.float32
        assert spec.min() - 1e-4 <= out.min() and out.max() <= spec.max() + 1e-4


# ----------------------------------------------------------------------------- SpecAugment


def masked_bands_and_spans(out, fill):
    rows = np.flatnonzero((out == fill).all(axis=1))
    cols = np.flatnonzero((out == fill).all(axis=0))
    return rows, cols


def runs(indices):
    """Lengths of the runs of consecutive integers in a sorted array."""
    if len(indices) == 0:
        return []
    breaks = np.flatnonzero(np.diff(indices) != 1)
    return np.diff(np.concatenate([[-1], breaks, [len(indices) - 1]])).tolist()


def test_spec_augment_masks_stay_within_limits_and_fill_with_the_minimum():
    spec = logmel(256)
    fill = spec.min()
    augment = SpecAugment(num_masks=(1, 2), freq_fraction=0.15, time_fraction=0.2)
    for seed in range(50):
        out = augment(spec, rng(seed))
        changed = out != spec
        assert np.all(out[changed] == fill)
        rows, cols = masked_bands_and_spans(out, fill)
        # Changed cells all lie in fully masked bands or spans.
        assert np.all(np.isin(np.argwhere(changed)[:, 0], rows) | np.isin(np.argwhere(changed)[:, 1], cols))
        # At most 2 masks of at most 15% of bands / 20% of frames each (two may overlap or touch).
        assert len(runs(rows)) <= 2 and len(runs(cols)) <= 2
        assert len(rows) <= 2 * int(0.15 * N_MELS) and len(cols) <= 2 * int(0.2 * 256)
    single = SpecAugment(num_masks=(1, 1))
    for seed in range(50):
        rows, cols = masked_bands_and_spans(single(spec, rng(seed)), fill)
        assert len(rows) <= int(0.15 * N_MELS) and len(cols) <= int(0.2 * 256)


def test_spec_augment_does_not_modify_its_input():
    spec = logmel(256)
    copy = spec.copy()
    SpecAugment()(spec, rng())
    np.testing.assert_array_equal(spec, copy)


# ----------------------------------------------------------------------------- combinators


class Constant:
    def __init__(self, value):
        self.value = value

    def __call__(self, spec, rng):
        return np.full_like(spec, self.value)


def test_use_with_prob_and_one_of_follow_their_probabilities():
    spec = logmel(10)
    generator = rng()
    applied = [UseWithProb(Constant(1.0), 0.3)(spec, generator)[0, 0] == 1.0 for _ in range(2000)]
    assert 0.25 < np.mean(applied) < 0.35
    picks = [OneOf([Constant(1.0), Constant(2.0)], probs=[0.2, 0.8])(spec, generator)[0, 0] for _ in range(2000)]
    assert 0.75 < np.mean(np.array(picks) == 2.0) < 0.85
    assert UseWithProb(Constant(1.0), 0.0)(spec, generator) is spec


def test_compose_applies_in_order():
    spec = logmel(300)
    out = Compose([CenterCrop(256), Constant(3.0)])(spec, rng())
    assert out.shape == (N_MELS, 256) and np.all(out == 3.0)


# ----------------------------------------------------------------------------- network input


def test_to_network_input_equals_librosa_deltas_over_100():
    window = logmel(256)
    out = to_network_input(window)
    assert out.shape == (3, N_MELS, 256) and out.dtype == np.float32
    expected = np.stack(
        [
            window,
            librosa.feature.delta(window, width=9),
            librosa.feature.delta(window, order=2, width=9),
        ]
    ).astype(np.float32) / 100
    np.testing.assert_array_equal(out, expected)


def test_to_network_input_needs_nine_frames():
    with pytest.raises(ValueError, match="9 frames"):
        to_network_input(logmel(8))


# ----------------------------------------------------------------------------- pipelines


def test_train_transform_is_reproducible_per_seed():
    spec = logmel(700)
    transform = train_transform()
    a = transform(spec, rng(1))
    b = transform(spec, rng(1))
    c = transform(spec, rng(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_valid_transform_is_deterministic_and_centred():
    spec = logmel(400)
    out = valid_transform()(spec)
    np.testing.assert_array_equal(out, to_network_input(spec[:, 72:328]))


@settings(max_examples=25, deadline=None)
@given(frames=st.integers(1, 2000), seed=st.integers(0, 2**32 - 1))
def test_pipelines_map_any_length_to_a_network_input(frames, seed):
    spec = logmel(frames, seed=seed % 1000)
    for transform in (train_transform(), valid_transform()):
        out = transform(spec, rng(seed))
        assert out.shape == (3, N_MELS, 256) and out.dtype == np.float32
        assert np.isfinite(out).all()
        # Padding, cropping, masking and bilinear resizing never leave the input's range.
        values = out[0] * 100
        assert values.min() >= spec.min() - 1e-3 and values.max() <= spec.max() + 1e-3
