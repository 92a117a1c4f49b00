"""Sample mixers: blend a training sample with another one drawn from the same dataset.

Mixers run after the spectrogram transforms, on network inputs. Every mixer is a callable::

    mixer(image, target, draw_other, rng) -> (image, target)

- ``image``: float32 ``(3, H, W)`` network input (channels, mel bands, frames);
- ``target``: float32 ``(K,)`` multi-hot or soft labels in ``[0, 1]``;
- ``draw_other()``: returns another transformed ``(image, target)`` from the same source; it is
  called only when a mix actually happens, so a skipped mix costs nothing;
- ``rng``: the ``numpy.random.Generator`` all randomness comes from.

The method's mixer (``method_mixer``): with p=0.8 mix, choosing sigmoid-concat (p=0.6) or an
additive mix (p=0.4); ``[mixers] specmix`` adds SpecMix to that choice (off in the method).

Every mixer is a weighted sum along time, ``image = w_self * image + w_other * other`` with
per-frame weights ``(W,)``, after which the mel bands marked in ``bands`` ``(H,)`` are taken from
the other sample whole (only SpecMix marks any). Their parts are public so that the mixing can be
done later, on a whole batch on the training device (``train.augment_on_device``):
``choose(rng)`` makes the combinators' random choice (the mixer to apply, or None) and
``mix_weights((H, W), rng) -> (w_self, w_other, bands)`` a mixer's own draw, in the order
``__call__`` draws them.
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
    """Join two clips in time with a smooth sigmoid crossfade; labels are OR-ed (max).

    ``image = m * image + (1 - m) * other`` with ``m = sigmoid_time_mask(W, r)`` broadcast over
    channels and mel bands, for an integer radius ``r`` uniform in ``sigmoid_range`` (inclusive).
    The other clip fills the start (left) of the window and this sample the end (right).
    ``target = max(target, other_target)`` elementwise: the OR of multi-hot labels (the method's
    ``clip(target + other_target, 0, 1)``, equal on 0/1 labels), and for soft targets
    (``[targets]``) a class as probable as in the clip where it is most probable, rather than a
    sum that would make two clips' 0.5 a certain 1.
    """

    def __init__(self, sigmoid_range=(3, 12)):
        if not (0 < sigmoid_range[0] <= sigmoid_range[1]):
            raise ValueError(f"sigmoid_range must be (min, max) with 0 < min <= max, got {sigmoid_range}")
        self.sigmoid_range = tuple(sigmoid_range)

    def weights(self, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(mask, 1 - mask)``, float32 ``(width,)`` each, for a radius drawn from ``rng``."""
        radius = int(rng.integers(self.sigmoid_range[0], self.sigmoid_range[1] + 1))
        mask = sigmoid_time_mask(width, radius)
        return mask, 1.0 - mask

    def mix_weights(self, shape: tuple[int, int], rng: np.random.Generator) -> tuple:
        """``weights(W)`` and no bands taken whole, for a ``(H, W)`` image."""
        return (*self.weights(shape[-1], rng), np.zeros(shape[-2], dtype=bool))

    @staticmethod
    def mix_targets(target, other_target, weights) -> np.ndarray:
        return np.maximum(target, other_target).astype(np.float32, copy=False)

    def choose(self, rng: np.random.Generator):
        return self

    def __call__(self, image, target, draw_other: DrawOther, rng: np.random.Generator) -> Sample:
        return _mix_with(self, image, target, draw_other, rng)


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

    def weights(self, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(1 - alpha, alpha)`` repeated over ``width`` frames (float32), alpha drawn from ``rng``."""
        alpha = np.float32(rng.uniform(*self.alpha_range))
        return np.full(width, 1 - alpha, dtype=np.float32), np.full(width, alpha, dtype=np.float32)

    def mix_weights(self, shape: tuple[int, int], rng: np.random.Generator) -> tuple:
        """``weights(W)`` and no bands taken whole, for a ``(H, W)`` image."""
        return (*self.weights(shape[-1], rng), np.zeros(shape[-2], dtype=bool))

    @staticmethod
    def mix_targets(target, other_target, weights) -> np.ndarray:
        # The weights are constant along time: their first frame is the labels' weight.
        self_weight, other_weight = weights[0][0], weights[1][0]
        return (self_weight * target + other_weight * other_target).astype(np.float32, copy=False)

    def choose(self, rng: np.random.Generator):
        return self

    def __call__(self, image, target, draw_other: DrawOther, rng: np.random.Generator) -> Sample:
        return _mix_with(self, image, target, draw_other, rng)


class SpecMixMixer:
    """SpecMix (Kim, Han and Ko, "SpecMix: a mixed sample data augmentation method for training
    with time-frequency domain features", Interspeech 2021): replace some mel bands and some time
    spans of this sample by the other's; labels are mixed by the fraction of the area replaced.

    It draws ``k_f`` bands, ``k_f`` uniform in ``num_bands`` (inclusive), each of
    ``int(U(0, freq_fraction) * H)`` mel bands at a uniform start, then ``k_t`` spans, ``k_t``
    uniform in ``num_spans``, each of ``int(U(0, time_fraction) * W)`` frames: SpecAugment's masks
    (``freesound.training.augment.SpecAugment``, the same ranges by default), filled from the other
    sample instead of with silence. With ``M[f, t] = 1`` where band ``f`` or frame ``t`` is
    replaced::

        image = (1 - M) * image + M * other
        lam = M.sum() / (H * W)
        target = (1 - lam) * target + lam * other_target
    """

    def __init__(self, num_bands=(1, 3), freq_fraction: float = 0.15, num_spans=(1, 3), time_fraction: float = 0.2):
        for name, (low, high) in (("num_bands", num_bands), ("num_spans", num_spans)):
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be (min, max) with 0 <= min <= max, got {(low, high)}")
        check_prob(freq_fraction, "freq_fraction")
        check_prob(time_fraction, "time_fraction")
        self.num_bands, self.num_spans = tuple(num_bands), tuple(num_spans)
        self.freq_fraction, self.time_fraction = freq_fraction, time_fraction

    @staticmethod
    def _spans(size: int, count_range, fraction: float, rng: np.random.Generator) -> np.ndarray:
        marked = np.zeros(size, dtype=bool)
        for _ in range(int(rng.integers(count_range[0], count_range[1] + 1))):
            width = int(rng.uniform(0.0, fraction) * size)
            start = int(rng.integers(0, size - width + 1))
            marked[start:start + width] = True
        return marked

    def mix_weights(self, shape: tuple[int, int], rng: np.random.Generator) -> tuple:
        """``(1 - T, T, F)`` for a ``(H, W)`` image: ``T`` float32 ``(W,)`` is 1 on the replaced
        frames, ``F`` bool ``(H,)`` marks the replaced bands (drawn first)."""
        bands = self._spans(shape[-2], self.num_bands, self.freq_fraction, rng)
        frames = self._spans(shape[-1], self.num_spans, self.time_fraction, rng).astype(np.float32)
        return 1.0 - frames, frames, bands

    @staticmethod
    def replaced_fraction(weights) -> float:
        """``lam``: the fraction of the ``(H, W)`` area taken from the other sample."""
        frames, bands = weights[1] > 0, weights[2]
        return float((bands[:, None] | frames[None, :]).mean())

    @classmethod
    def mix_targets(cls, target, other_target, weights) -> np.ndarray:
        lam = np.float32(cls.replaced_fraction(weights))
        return ((1 - lam) * target + lam * other_target).astype(np.float32, copy=False)

    def choose(self, rng: np.random.Generator):
        return self

    def __call__(self, image, target, draw_other: DrawOther, rng: np.random.Generator) -> Sample:
        return _mix_with(self, image, target, draw_other, rng)


def _mix_with(mixer, image, target, draw_other: DrawOther, rng: np.random.Generator) -> Sample:
    """Draw the other sample, then the mixer's weights; mix images along time, take the marked
    bands from the other sample whole, and mix the targets."""
    other_image, other_target = draw_other()
    weights = mixer.mix_weights(image.shape[-2:], rng)
    image = weights[0] * image + weights[1] * other_image
    bands = weights[2]
    if bands.any():
        image[..., bands, :] = other_image[..., bands, :]
    return image.astype(np.float32, copy=False), mixer.mix_targets(target, other_target, weights)


class RandomMixer:
    """Apply one of ``mixers``, chosen with ``probs`` (uniform when ``None``)."""

    def __init__(self, mixers: Sequence[Mixer], probs: Sequence[float] | None = None):
        self.mixers = list(mixers)
        if not self.mixers:
            raise ValueError("RandomMixer needs at least one mixer")
        self.probs = check_choice_probs(probs, len(self.mixers))

    def choose(self, rng: np.random.Generator):
        """The mixer to apply (itself chosen by the picked mixer's ``choose``), or None."""
        index = int(rng.choice(len(self.mixers), p=self.probs))
        return self.mixers[index].choose(rng)

    def __call__(self, image, target, draw_other: DrawOther, rng: np.random.Generator) -> Sample:
        return _apply_chosen(self.choose(rng), image, target, draw_other, rng)


def _apply_chosen(mixer, image, target, draw_other: DrawOther, rng: np.random.Generator) -> Sample:
    return (image, target) if mixer is None else mixer(image, target, draw_other, rng)


class UseMixerWithProb:
    """Apply ``mixer`` with probability ``prob``; otherwise return the sample untouched."""

    def __init__(self, mixer: Mixer, prob: float):
        check_prob(prob)
        self.mixer = mixer
        self.prob = prob

    def choose(self, rng: np.random.Generator):
        """The mixer to apply (with ``prob``, whatever ``mixer.choose`` picks), or None."""
        return self.mixer.choose(rng) if rng.random() < self.prob else None

    def __call__(self, image, target, draw_other: DrawOther, rng: np.random.Generator) -> Sample:
        return _apply_chosen(self.choose(rng), image, target, draw_other, rng)


def method_mixer(prob: float = 0.8, sigmoid_prob: float = 0.6, add_prob: float = 0.4,
                 specmix_prob: float = 0.0) -> UseMixerWithProb:
    """The method's mixer: with ``prob`` mix, by sigmoid-concat, additively or by SpecMix
    (``sigmoid_prob``, ``add_prob`` and ``specmix_prob`` are the choice's probabilities and must sum
    to 1). With ``specmix_prob == 0`` SpecMix is not among the choices at all, so the method's
    mixer draws exactly the random numbers it always drew."""
    if specmix_prob == 0:
        return UseMixerWithProb(RandomMixer([SigmoidConcatMixer(), AddMixer()], probs=[sigmoid_prob, add_prob]), prob)
    return UseMixerWithProb(RandomMixer([SigmoidConcatMixer(), AddMixer(), SpecMixMixer()],
                                        probs=[sigmoid_prob, add_prob, specmix_prob]), prob)
