import numpy as np
import pytest

from freesound.training.mixers import (
    AddMixer,
    RandomMixer,
    SigmoidConcatMixer,
    UseMixerWithProb,
    method_mixer,
    sigmoid_time_mask,
)

SHAPE = (3, 128, 256)


def rng(seed=0):
    return np.random.default_rng(seed)


def sample(value, labels, n_classes=5):
    image = np.full(SHAPE, value, dtype=np.float32)
    target = np.zeros(n_classes, dtype=np.float32)
    target[list(labels)] = 1.0
    return image, target


class Draw:
    """``draw_other`` that counts its calls."""

    def __init__(self, other):
        self.other = other
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.other


def test_sigmoid_mask_rises_monotonically_from_near_0_to_near_1():
    for radius in (3, 12):
        mask = sigmoid_time_mask(256, radius)
        assert mask.shape == (256,) and mask.dtype == np.float32
        assert np.all(np.diff(mask) > 0)
        assert mask[0] == pytest.approx(1 / (1 + np.exp(radius)), rel=1e-5)
        assert mask[-1] > 0.95
        assert mask[128] == pytest.approx(0.5)


def test_sigmoid_mask_has_exactly_width_samples_for_awkward_widths():
    # A float-step arange can return one sample too many; the mask must match the window.
    for width in (255, 256, 257, 999):
        assert sigmoid_time_mask(width, 7).shape == (width,)


def test_sigmoid_concat_puts_the_other_clip_first_and_ors_labels():
    image, target = sample(1.0, [0, 2])
    other = sample(0.0, [2, 3])
    mixed, mixed_target = SigmoidConcatMixer()(image, target, Draw(other), rng())
    assert mixed.shape == SHAPE and mixed.dtype == np.float32
    # With this image 1 and the other 0 the mix is the mask itself: the other clip dominates the
    # start (left) of the window, this one the end (right).
    profile = mixed[0, 0]
    assert np.all(np.diff(profile) > 0) and profile[0] < 0.05 and profile[-1] > 0.95
    assert np.all(mixed == profile)  # the same mask on every channel and mel band
    np.testing.assert_array_equal(mixed_target, [1, 0, 1, 1, 0])


def test_sigmoid_concat_keeps_soft_labels_in_range():
    image, _ = sample(1.0, [])
    target = np.array([0.7, 0.2, 0.0], dtype=np.float32)
    other_target = np.array([0.6, 0.0, 0.3], dtype=np.float32)
    _, mixed = SigmoidConcatMixer()(image, target, Draw((image, other_target)), rng())
    np.testing.assert_allclose(mixed, [0.7, 0.2, 0.3])  # elementwise max, not clip(sum): see test_teacher.py


def test_add_mixer_mixes_images_and_labels_by_alpha():
    image, target = sample(1.0, [0])
    other = sample(3.0, [1])
    mixed, mixed_target = AddMixer(alpha_range=(0.0, 0.5))(image, target, Draw(other), rng(4))
    alpha = (mixed[0, 0, 0] - 1.0) / 2.0  # image = (1 - a) * 1 + a * 3
    assert 0.0 <= alpha <= 0.5
    np.testing.assert_allclose(mixed, 1.0 + 2.0 * alpha, rtol=1e-6)
    np.testing.assert_allclose(mixed_target, [1 - alpha, alpha, 0, 0, 0], rtol=1e-6)
    assert mixed.dtype == np.float32 and mixed_target.dtype == np.float32


def test_add_mixer_draws_alpha_from_its_range():
    image, target = sample(0.0, [0])
    other = sample(1.0, [1])
    alphas = [AddMixer((0.1, 0.2))(image, target, Draw(other), rng(s))[0][0, 0, 0] for s in range(50)]
    assert 0.1 <= min(alphas) and max(alphas) <= 0.2


def test_no_mix_means_no_draw():
    image, target = sample(1.0, [0])
    draw = Draw(sample(0.0, [1]))
    out_image, out_target = UseMixerWithProb(AddMixer(), prob=0.0)(image, target, draw, rng())
    assert draw.calls == 0 and out_image is image and out_target is target


def test_method_mixer_mixes_80_percent_split_60_40():
    image, target = sample(1.0, [0])
    draw = Draw(sample(0.0, [1]))
    mixer = method_mixer()
    generator = rng()
    kinds = []
    for _ in range(2000):
        mixed, mixed_target = mixer(image, target, draw, generator)
        if mixed is image:
            kinds.append("none")
        elif mixed_target[1] == 1.0:  # OR-ed labels: sigmoid-concat
            kinds.append("sigmoid")
        else:
            kinds.append("add")
    kinds = np.array(kinds)
    assert draw.calls == np.sum(kinds != "none")
    assert 0.77 < np.mean(kinds != "none") < 0.83
    assert 0.56 < np.sum(kinds == "sigmoid") / np.sum(kinds != "none") < 0.64


def test_random_mixer_rejects_bad_probs():
    with pytest.raises(ValueError, match="probs"):
        RandomMixer([AddMixer(), AddMixer()], probs=[0.9, 0.9])
    with pytest.raises(ValueError, match="probs"):
        method_mixer(sigmoid_prob=0.5, add_prob=0.4)
