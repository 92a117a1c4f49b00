"""Sample mixers: blend a training sample with another one drawn from the same dataset.

Mixers run after the spectrogram transforms, on network inputs. Every mixer is a callable::

    mixer(image, target, draw_other, rng) -> (image, target)

- ``image``: float32 ``(3, H, W)`` network input (channels, mel bands, frames);
- ``target``: float32 ``(K,)`` multi-hot or soft labels in ``[0, 1]``;
- ``draw_other()``: returns another transformed ``(image, target)`` from the same source; it is
  called only when a mix actually happens, so a skipped mix costs nothing;
- ``rng``: the ``numpy.random.Generator`` all randomness comes from.

The method's mixer (``method_mixer``): with p=0.8 mix, choosing sigmoid-concat (p=0.6) or an
additive mix (p=0.4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from freesound.training.augment import check_choice_probs, check_prob

Sample = tuple[np.ndarray, np.ndarray]
DrawOther = Callable[[], Sample]
Mixer = Callable[[np.ndarray, np.ndarray, DrawOther, np.random.Generator], Sample]


def sigmoid_time_mask(width: int, radius: float) -> np.ndarray:
    """``sigmoid(x)`` for ``x = -radius + 2 * radius * t / width``, ``t = 0 .. width - 1``.

    Rises smoothly from ``sigmoid(-radius)`` (near 0) to near ``sigmoid(radius)`` (near 1), crossing
    0.5 at the middle frame; a larger radius gives a sharper transition. float32 ``(width,)``.
    """
    x = -radius + (2.0 * radius / width) * np.arange(width)
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


class SigmoidConcatMixer:
    """Join two clips in time with a smooth sigmoid crossfade; labels are OR-ed.

    ``image = m * image + (1 - m) * other`` with ``m = sigmoid_time_mask(W, r)`` broadcast over
    channels and mel bands, for an integer radius ``r`` uniform in ``sigmoid_range`` (inclusive).
    The other clip fills the start (left) of the window and this sample the end (right).
    ``target = clip(target + other_target, 0, 1)``.
    """

    def __init__(self, sigmoid_range=(3, 12)):
        if not (0 < sigmoid_range[0] <= sigmoid_range[1]):
            raise ValueError(f"sigmoid_range must be (min, max) with 0 < min <= max, got {sigmoid_range}")
        self.sigmoid_range = tuple(sigmoid_range)

    def __call__(self, image, target, draw_other: DrawOther, rng: np.random.Generator) -> Sample:
        other_image, other_target = draw_other()
        radius = int(rng.integers(self.sigmoid_range[0], self.sigmoid_range[1] + 1))
        mask = sigmoid_time_mask(image.shape[-1], radius)
        image = mask * image + (1.0 - mask) * other_image
        target = np.clip(target + other_target, 0.0, 1.0)
        return image.astype(np.float32, copy=False), target.astype(np.float32, copy=False)


class AddMixer:
    """Overlay another clip at a random level; labels are mixed by the same weight.

    ``alpha ~ U(alpha_range)``; ``image = (1 - alpha) * image + alpha * other`` and
    ``target = (1 - alpha) * target + alpha * other_target``. With ``alpha <= 0.5`` this sample
    stays the dominant one.
    """

    def __init__(self, alpha_range=(0.0, 0.5)):
        if not (0.0 <= alpha_range[0] <= alpha_range[1] <= 1.0):
            raise ValueError(f"alpha_range must satisfy 0 <= min <= max <= 1, got {alpha_range}")
        self.alpha_range = tuple(alpha_range)

    def __call__(self, image, target, draw_other: DrawOther, rng: np.random.Generator) -> Sample:
        other_image, other_target = draw_other()
        alpha = np.float32(rng.uniform(*self.alpha_range))
        image = (1 - alpha) * image + alpha * other_image
        target = (1 - alpha) * target + alpha * other_target
        return image.astype(np.float32, copy=False), target.astype(np.float32, copy=False)


class RandomMixer:
    """Apply one of ``mixers``, chosen with ``probs`` (uniform when ``None``)."""

    def __init__(self, mixers: Sequence[Mixer], probs: Sequence[float] | None = None):
        self.mixers = list(mixers)
        if not self.mixers:
            raise ValueError("RandomMixer needs at least one mixer")
        self.probs = check_choice_probs(probs, len(self.mixers))

    def __call__(self, image, target, draw_other: DrawOther, rng: np.random.Generator) -> Sample:
        index = int(rng.choice(len(self.mixers), p=self.probs))
        return self.mixers[index](image, target, draw_other, rng)


class UseMixerWithProb:
    """Apply ``mixer`` with probability ``prob``; otherwise return the sample untouched."""

    def __init__(self, mixer: Mixer, prob: float):
        check_prob(prob)
        self.mixer = mixer
        self.prob = prob

    def __call__(self, image, target, draw_other: DrawOther, rng: np.random.Generator) -> Sample:
        if rng.random() < self.prob:
            return self.mixer(image, target, draw_other, rng)
        return image, target


def method_mixer(prob: float = 0.8, sigmoid_prob: float = 0.6, add_prob: float = 0.4) -> UseMixerWithProb:
    """The method's mixer: with ``prob`` mix, by sigmoid-concat or additively (``sigmoid_prob``
    and ``add_prob`` are the choice's probabilities and must sum to 1)."""
    return UseMixerWithProb(
        RandomMixer([SigmoidConcatMixer(), AddMixer()], probs=[sigmoid_prob, add_prob]), prob
    )
