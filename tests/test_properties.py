"""Property tests: tiling and the train-time transforms keep their shapes and value ranges for any
clip width, any step and any crop or mask parameters (hypothesis draws them)."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from freesound.audio.network_input import to_network_input
from freesound.predict import TILE, make_tiles, tile_layout
from freesound.training.augment import (
    CenterCrop,
    PadToSize,
    RandomCrop,
    RandomResizedCrop,
    SpecAugment,
    train_transform,
)

N_MELS = 128
FAST = settings(max_examples=40, deadline=None)


def spectrogram(frames, kind, seed, n_mels=N_MELS):
    """A float32 (n_mels, frames) log-mel of one of three kinds: dB-like noise, a constant (digital
    silence), or mostly the -100 dB floor with a few loud cells (what a short click looks like)."""
    rng = np.random.default_rng(seed)
    if kind == "constant":
        return np.full((n_mels, frames), -100.0, dtype=np.float32)
    spec = rng.uniform(-80.0, 0.0, size=(n_mels, frames)).astype(np.float32)
    if kind == "sparse":
        spec[rng.random(spec.shape) > 0.02] = -100.0
    return spec


kinds = st.sampled_from(["noise", "constant", "sparse"])
seeds = st.integers(0, 2**32 - 1)


# ----------------------------------------------------------------------------- tiling


@FAST
@given(width=st.integers(1, 10**6), step=st.integers(1, TILE))
def test_tile_layout_follows_the_design_formula_and_covers_the_clip(width, step):
    n_tiles, left, right = tile_layout(width, step)
    covered = width - (TILE - step)
    assert n_tiles == max(1, math.ceil(covered / step))
    extra = step * n_tiles - covered
    assert (left, right) == (extra // 2, extra - extra // 2)
    assert left >= 0 and right >= 0
    # The tiles at 0, step, ... exactly span the padded clip, and one tile fewer would not.
    assert (n_tiles - 1) * step + TILE == left + width + right
    if n_tiles > 1:
        assert (n_tiles - 2) * step + TILE < width


@FAST
@given(width=st.integers(1, 1500), step=st.integers(32, TILE), kind=kinds, seed=seeds)
def test_tiles_are_network_inputs_of_the_min_padded_clip(width, step, kind, seed):
    logmel = spectrogram(width, kind, seed)
    tiles = make_tiles(logmel, step)
    n_tiles, left, right = tile_layout(width, step)
    assert tiles.shape == (n_tiles, 3, N_MELS, TILE) and tiles.dtype == np.float32
    assert np.isfinite(tiles).all()
    padded = np.concatenate([np.full((N_MELS, left), logmel.min(), np.float32), logmel,
                             np.full((N_MELS, right), logmel.min(), np.float32)], axis=1)
    for i in range(n_tiles):
        window = padded[:, i * step:i * step + TILE]
        np.testing.assert_allclose(tiles[i], to_network_input(window), rtol=1e-6, atol=1e-6)
    # The log-mel channel never leaves the clip's range (padding is the clip's minimum).
    base = tiles[:, 0] * 100
    assert base.min() >= logmel.min() - 1e-3 and base.max() <= logmel.max() + 1e-3


# ----------------------------------------------------------------------------- transforms


@FAST
@given(width=st.integers(1, 1000), size=st.integers(1, 512), mode=st.sampled_from(["constant", "wrap"]),
       placement=st.sampled_from(["center", "random"]), kind=kinds, seed=seeds)
def test_pad_keeps_the_clip_and_fills_with_its_minimum_or_itself(width, size, mode, placement, kind, seed):
    spec = spectrogram(width, kind, seed)
    out = PadToSize(size, mode, placement)(spec, np.random.default_rng(seed))
    assert out.shape == (N_MELS, max(width, size)) and out.dtype == np.float32
    if width >= size:
        assert out is spec
        return
    # The clip sits intact somewhere; everything else is the minimum (constant) or the clip's own
    # columns at the same phase (wrap).
    starts = [left for left in range(size - width + 1) if np.array_equal(out[:, left:left + width], spec)]
    assert starts
    if placement == "center":
        assert (size - width) // 2 in starts
    if mode == "constant":
        outside = np.delete(out, np.s_[starts[0]:starts[0] + width], axis=1)
        assert np.all(outside == spec.min())
    else:
        phase = (np.arange(size) - starts[0]) % width
        np.testing.assert_array_equal(out, spec[:, phase])


@FAST
@given(width=st.integers(1, 2000), size=st.integers(9, 512), kind=kinds, seed=seeds)
def test_crops_take_a_contiguous_window_of_the_padded_clip(width, size, kind, seed):
    padded = PadToSize(size)(spectrogram(width, kind, seed))
    for crop in (RandomCrop(size), CenterCrop(size)):
        out = crop(padded, np.random.default_rng(seed))
        assert out.shape == (N_MELS, size)
        assert any(np.array_equal(out, padded[:, s:s + size]) for s in range(padded.shape[1] - size + 1))


@FAST
@given(
    n_mels=st.integers(1, 128), frames=st.integers(1, 400), kind=kinds, seed=seeds,
    scale=st.tuples(st.floats(0.01, 1.0), st.floats(0.01, 1.0)).map(sorted),
    ratio=st.tuples(st.floats(0.05, 20.0), st.floats(0.05, 20.0)).map(sorted),
)
def test_resized_crop_keeps_shape_and_range_for_any_box(n_mels, frames, kind, seed, scale, ratio):
    spec = spectrogram(frames, kind, seed, n_mels=n_mels)
    crop = RandomResizedCrop(scale=tuple(scale), ratio=tuple(ratio))
    rng = np.random.default_rng(seed)
    top, left, height, width = crop.sample_box(spec.shape, rng)
    assert 0 <= top and top + height <= n_mels and 0 <= left and left + width <= frames
    assert height >= 1 and width >= 1
    out = crop(spec, np.random.default_rng(seed))
    assert out.shape == spec.shape and out.dtype == np.float32 and np.isfinite(out).all()
    assert out.min() >= spec.min() - 1e-3 and out.max() <= spec.max() + 1e-3


@FAST
@given(
    n_mels=st.integers(1, 128), frames=st.integers(1, 600), kind=kinds, seed=seeds,
    num_masks=st.tuples(st.integers(0, 3), st.integers(0, 3)).map(sorted),
    freq_fraction=st.floats(0.0, 1.0), time_fraction=st.floats(0.0, 1.0),
)
def test_spec_augment_masks_stay_within_limits(n_mels, frames, kind, seed, num_masks, freq_fraction, time_fraction):
    spec = spectrogram(frames, kind, seed, n_mels=n_mels)
    before = spec.copy()
    out = SpecAugment(tuple(num_masks), freq_fraction, time_fraction)(spec, np.random.default_rng(seed))
    np.testing.assert_array_equal(spec, before)  # the input is left alone
    assert out.shape == spec.shape and out.dtype == np.float32
    fill = spec.min()
    changed = out != spec
    assert np.all(out[changed] == fill)
    # A changed cell outside every fully filled column can only come from a band mask, so its
    # row is masked, and likewise for spans: those rows and columns are fully filled, and no more
    # than the masks can cover.
    full_rows, full_cols = (out == fill).all(axis=1), (out == fill).all(axis=0)
    cells = np.argwhere(changed)
    band_rows = np.unique(cells[~full_cols[cells[:, 1]], 0])
    span_cols = np.unique(cells[~full_rows[cells[:, 0]], 1])
    assert full_rows[band_rows].all() and full_cols[span_cols].all()
    assert len(band_rows) <= num_masks[1] * int(freq_fraction * n_mels)
    assert len(span_cols) <= num_masks[1] * int(time_fraction * frames)


@FAST
@given(
    frames=st.integers(1, 1500), size=st.integers(9, 400), kind=kinds, seed=seeds,
    wrap_pad_prob=st.floats(0.0, 1.0), resize_prob=st.floats(0.0, 1.0), spec_prob=st.floats(0.0, 1.0),
)
def test_train_pipeline_with_any_settings_gives_a_network_input(frames, size, kind, seed, wrap_pad_prob,
                                                               resize_prob, spec_prob):
    spec = spectrogram(frames, kind, seed)
    transform = train_transform(size, wrap_pad_prob=wrap_pad_prob, resize_prob=resize_prob, spec_prob=spec_prob)
    out = transform(spec, np.random.default_rng(seed))
    assert out.shape == (3, N_MELS, size) and out.dtype == np.float32
    assert np.isfinite(out).all()
    values = out[0] * 100
    assert values.min() >= spec.min() - 1e-3 and values.max() <= spec.max() + 1e-3
