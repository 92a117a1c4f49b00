"""Train-time spectrogram transforms.

A log-mel is a float32 array of shape ``(n_mels, frames)`` in dB. Every transform is a small
callable ``transform(spec, rng) -> spec`` that takes its randomness from the
``numpy.random.Generator`` it is handed (never from a global RNG), so a seeded run is reproducible
sample by sample. Deterministic transforms accept ``rng`` and ignore it.

The method's pipelines (``train_transform`` / ``valid_transform``)::

    train: pad to T (wrap | constant, p=0.5 each) -> random T-frame crop
           -> RandomResizedCrop (p=0.33) [-> FrequencyWarp (transforms.freq_warp_prob, off)]
           -> SpecAugment (p=0.5) -> to_network_input
    valid: pad to T (constant) -> centre T-frame crop -> to_network_input

T is the experiment's tile length (``[input] tile_frames``; the method's 256 frames), or its
chunk (``[train] chunk_seconds``) when it sets one; validation may crop the first T frames or
keep the whole clip instead (``[train] valid_crop``).

``to_network_input`` (``freesound.audio.network_input``) is shared with the inference tiler so
train and test inputs are built the same way.

With ``train.augment_on_device`` the pipeline stops at the window (``train_window_transform``):
SpecAugment's masks are drawn here but applied, with the deltas, to whole batches on the training
device (``freesound.training.device_augment``), from the same random numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from freesound.audio.network_input import to_network_input

#: ``transform(spec, rng) -> spec``; deterministic transforms accept ``rng=None``.
Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _check_2d(spec: np.ndarray) -> None:
    if spec.ndim != 2 or spec.shape[0] == 0 or spec.shape[1] == 0:
        raise ValueError(f"expected a non-empty (n_mels, frames) spectrogram, got shape {spec.shape}")


def check_prob(prob: float, name: str = "prob") -> None:
    """Raise ``ValueError`` unless ``0 <= prob <= 1``."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {prob}")


def check_choice_probs(probs: Sequence[float] | None, n: int) -> np.ndarray | None:
    """Validate a choice distribution over ``n`` options; ``None`` means uniform."""
    if probs is None:
        return None
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (n,) or np.any(probs < 0) or not math.isclose(probs.sum(), 1.0, abs_tol=1e-6):
        raise ValueError(f"probs must be {n} non-negative numbers summing to 1, got {probs.tolist()}")
    return probs


# --------------------------------------------------------------------------------------------
# Padding and cropping on the time axis


class PadToSize:
    """Pad the time axis to at least ``size`` frames.

    Parameters
    ----------
    size : int
        Minimum number of frames of the output.
    mode : {"constant", "wrap"}
        ``"constant"`` fills with the clip's minimum value (its silence level in dB);
        ``"wrap"`` repeats the clip periodically.
    placement : {"center", "random"}
        Where the original frames sit inside the padded window. ``"center"`` puts
        ``padding // 2`` frames on the left and the rest on the right, as the original solution
        (and the inference tiler) does. ``"random"`` draws the left padding uniformly in
        ``[0, padding]``.

    Input ``(n_mels, frames)``; output ``(n_mels, max(frames, size))``, same dtype. A clip that is
    already long enough is returned unchanged.
    """

    def __init__(self, size: int = 256, mode: str = "constant", placement: str = "center"):
        if mode not in ("constant", "wrap"):
            raise ValueError(f"mode must be 'constant' or 'wrap', got {mode!r}")
        if placement not in ("center", "random"):
            raise ValueError(f"placement must be 'center' or 'random', got {placement!r}")
        self.size = size
        self.mode = mode
        self.placement = placement

    def __call__(self, spec: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        _check_2d(spec)
        padding = self.size - spec.shape[1]
        if padding <= 0:
            return spec
        if self.placement == "center":
            left = padding // 2
        else:
            left = int(rng.integers(0, padding + 1))
        pad_width = ((0, 0), (left, padding - left))
        if self.mode == "constant":
            return np.pad(spec, pad_width, mode="constant", constant_values=spec.min())
        return np.pad(spec, pad_width, mode="wrap")


def random_pad_to_size(size: int = 256, wrap_prob: float = 0.5, placement: str = "center") -> "OneOf":
    """Pad with ``mode="wrap"`` with probability ``wrap_prob``, else ``mode="constant"``."""
    check_prob(wrap_prob, "wrap_prob")
    return OneOf(
        [PadToSize(size, "wrap", placement), PadToSize(size, "constant", placement)],
        probs=[wrap_prob, 1.0 - wrap_prob],
    )


def _check_long_enough(spec: np.ndarray, size: int) -> None:
    _check_2d(spec)
    if spec.shape[1] < size:
        raise ValueError(f"cannot crop {size} frames from a {spec.shape[1]}-frame spectrogram; pad first")


class RandomCrop:
    """Take ``size`` consecutive frames starting at a uniformly random frame.

    Input ``(n_mels, frames >= size)``; output ``(n_mels, size)`` (a view).
    """

    def __init__(self, size: int = 256):
        self.size = size

    def __call__(self, spec: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_long_enough(spec, self.size)
        start = int(rng.integers(0, spec.shape[1] - self.size + 1))
        return spec[:, start : start + self.size]


class CenterCrop:
    """Take the middle ``size`` frames (the left margin is ``(frames - size) // 2``).

    Input ``(n_mels, frames >= size)``; output ``(n_mels, size)`` (a view).
    """

    def __init__(self, size: int = 256):
        self.size = size

    def __call__(self, spec: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        _check_long_enough(spec, self.size)
        start = (spec.shape[1] - self.size) // 2
        return spec[:, start : start + self.size]


class FirstCrop:
    """Take the first ``size`` frames (BirdCLEF's fixed validation chunk: a recordist centres the
    primary species near the start of a recording).

    Input ``(n_mels, frames >= size)``; output ``(n_mels, size)`` (a view).
    """

    def __init__(self, size: int = 256):
        self.size = size

    def __call__(self, spec: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        _check_long_enough(spec, self.size)
        return spec[:, : self.size]


# --------------------------------------------------------------------------------------------
# Random resized crop


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of 1-D linear resampling with half-pixel centres.

    This is ``align_corners=False`` sampling (PyTorch ``interpolate``, PIL and OpenCV upscaling):
    output sample ``i`` reads the input at ``(i + 0.5) * n_in / n_out - 0.5``, clamped to the edges.
    """
    position = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    position = np.clip(position, 0.0, n_in - 1)
    low = np.floor(position).astype(np.intp)
    high = np.minimum(low + 1, n_in - 1)
    return low, high, position - low


def resize_bilinear(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize a 2-D array to ``shape`` (``align_corners=False``).

    Every output value is a convex combination of input values, so the output stays within the
    input's range. Same dtype as the input.
    """
    low, high, weight = _linear_taps(image.shape[0], shape[0])
    rows = image[low] * (1.0 - weight)[:, None] + image[high] * weight[:, None]
    low, high, weight = _linear_taps(image.shape[1], shape[1])
    out = rows[:, low] * (1.0 - weight) + rows[:, high] * weight
    return out.astype(image.dtype, copy=False)


class RandomResizedCrop:
    """Crop a random box and stretch it back to the input's shape (Inception-style crop).

    The box covers a fraction ``U(scale)`` of the spectrogram's area and has a width/height
    (frames/mel bands) ratio drawn log-uniformly from ``ratio``; its position is uniform. A box that
    does not fit is redrawn, up to ``attempts`` times, after which the whole window is used (the
    input is returned unchanged).

    Parameters
    ----------
    scale : (float, float)
        Range of the box's area as a fraction of the input's area.
    ratio : (float, float)
        Range of the box's width / height.
    attempts : int
        Draws before falling back to the full window.

    Input and output ``(n_mels, frames)``, same shape and dtype.
    """

    def __init__(self, scale=(0.8, 1.0), ratio=(1.7, 2.3), attempts: int = 10):
        if not (0.0 < scale[0] <= scale[1] <= 1.0):
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not (0.0 < ratio[0] <= ratio[1]):
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.attempts = attempts

    def sample_box(self, shape: tuple[int, int], rng: np.random.Generator) -> tuple[int, int, int, int]:
        """Return ``(top, left, height, width)`` of a box inside ``shape`` (``(H, W)``)."""
        height, width = shape
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(self.attempts):
            area = rng.uniform(*self.scale) * height * width
            aspect = math.exp(rng.uniform(*log_ratio))
            box_w = int(round(math.sqrt(area * aspect)))
            box_h = int(round(math.sqrt(area / aspect)))
            if 0 < box_w <= width and 0 < box_h <= height:
                top = int(rng.integers(0, height - box_h + 1))
                left = int(rng.integers(0, width - box_w + 1))
                return top, left, box_h, box_w
        return 0, 0, height, width

    def __call__(self, spec: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_2d(spec)
        top, left, box_h, box_w = self.sample_box(spec.shape, rng)
        if (box_h, box_w) == spec.shape:
            return spec
        return resize_bilinear(spec[top : top + box_h, left : left + box_w], spec.shape)


# --------------------------------------------------------------------------------------------
# Frequency warping


def warp_positions(n_mels: int, factor: float, boundary: float = 0.8) -> np.ndarray:
    """Where each output mel band reads the input, for a piecewise-linear warp of the mel axis.

    The warp maps input band position ``x`` to ``y = factor * x`` up to the knee
    ``y0 = boundary * S * min(factor, 1)`` (``S = n_mels - 1``), then linearly on to ``S``, so the
    lowest and highest bands stay in place. This is the shape of vocal tract length perturbation
    (Jaitly & Hinton 2013, with the knee at ``boundary`` of the axis), applied to the mel band
    index as the upb team's frequency warping did (Ebbers & Haeb-Umbach, DCASE 2019 Task 2).

    Returns
    -------
    np.ndarray
        float64 ``(n_mels,)``: output band ``j`` reads the input at ``x(j) = interp(j, [0, y0, S],
        [0, y0 / factor, S])``, the inverse map. ``factor > 1`` moves content up (stretches the low
        part), ``factor < 1`` down; ``factor == 1`` is the identity.
    """
    if factor <= 0 or not 0 < boundary <= 1:
        raise ValueError(f"need factor > 0 and 0 < boundary <= 1, got factor={factor}, boundary={boundary}")
    top = n_mels - 1
    knee = boundary * top * min(factor, 1.0)
    return np.interp(np.arange(n_mels, dtype=np.float64), [0.0, knee, top], [0.0, knee / factor, top])


def warp_bands(spec: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """``spec`` (``(n_mels, frames)``) resampled along the mel axis at ``positions`` (``(n_mels,)``,
    in ``[0, n_mels - 1]``) by linear interpolation between neighbouring bands; same dtype. Each
    output value is a convex combination of two input values, so the range is kept."""
    low = np.floor(positions).astype(np.intp)
    high = np.minimum(low + 1, spec.shape[0] - 1)
    weight = (positions - low).astype(spec.dtype)[:, None]
    return (spec[low] * (1 - weight) + spec[high] * weight).astype(spec.dtype, copy=False)


class FrequencyWarp:
    """Stretch or squeeze the mel axis by a random factor (``warp_positions``, ``warp_bands``).

    The factor is ``U(1 - max_warp, 1 + max_warp)``, one draw from ``rng``. Input and output
    ``(n_mels, frames)``, same shape and dtype; the input is not modified.
    """

    def __init__(self, max_warp: float = 0.2, boundary: float = 0.8):
        if not 0 <= max_warp < 1:
            raise ValueError(f"max_warp must be in [0, 1), got {max_warp}")
        self.max_warp = max_warp
        self.boundary = boundary

    def __call__(self, spec: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_2d(spec)
        factor = rng.uniform(1.0 - self.max_warp, 1.0 + self.max_warp)
        return warp_bands(spec, warp_positions(spec.shape[0], factor, self.boundary))


# --------------------------------------------------------------------------------------------
# SpecAugment


class SpecAugment:
    """Frequency and time masking (SpecAugment without time warping).

    Draws ``k`` masks, ``k`` uniform in ``num_masks`` (inclusive). Each mask blanks one band of
    ``int(U(0, freq_fraction) * n_mels)`` mel bands and one span of
    ``int(U(0, time_fraction) * frames)`` frames, each at a uniform position, with the
    spectrogram's minimum (taken before masking, i.e. the clip's silence level).

    Input and output ``(n_mels, frames)``; the input is not modified.
    """

    def __init__(self, num_masks=(1, 2), freq_fraction: float = 0.15, time_fraction: float = 0.2):
        if not (0 <= num_masks[0] <= num_masks[1]):
            raise ValueError(f"num_masks must be (min, max) with 0 <= min <= max, got {num_masks}")
        check_prob(freq_fraction, "freq_fraction")
        check_prob(time_fraction, "time_fraction")
        self.num_masks = tuple(num_masks)
        self.freq_fraction = freq_fraction
        self.time_fraction = time_fraction

    def draw(self, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        """The masks for a spectrogram of ``shape`` (``(n_mels, frames)``), without applying them.

        Returns
        -------
        np.ndarray
            int64 ``(k, 4)``, one row ``(first band, bands, first frame, frames)`` per mask.
        """
        n_mels, frames = shape
        masks = []
        for _ in range(int(rng.integers(self.num_masks[0], self.num_masks[1] + 1))):
            band = int(rng.uniform(0.0, self.freq_fraction) * n_mels)
            f0 = int(rng.integers(0, n_mels - band + 1))
            span = int(rng.uniform(0.0, self.time_fraction) * frames)
            t0 = int(rng.integers(0, frames - span + 1))
            masks.append((f0, band, t0, span))
        return np.array(masks, dtype=np.int64).reshape(-1, 4)

    def __call__(self, spec: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_2d(spec)
        return apply_masks(spec, self.draw(spec.shape, rng))


def apply_masks(spec: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """A copy of ``spec`` (``(n_mels, frames)``) with each mask row ``(f0, bands, t0, frames)`` of
    ``SpecAugment.draw`` filled with ``spec``'s minimum, taken before masking (the clip's silence
    level); a row of zero bands and zero frames changes nothing."""
    fill = spec.min()
    spec = spec.copy()
    for f0, band, t0, span in masks:
        spec[f0 : f0 + band, :] = fill
        spec[:, t0 : t0 + span] = fill
    return spec


class DeferredSpecAugment:
    """``UseWithProb(spec_augment, prob)``'s random draws, leaving the masking for later.

    Returns ``(window, masks)``: the window unchanged and int64 ``(max_masks, 4)`` mask rows (see
    ``SpecAugment.draw``), zero rows where fewer masks (or none: skipped with ``1 - prob``) were
    drawn. It draws the same numbers in the same order as the ``UseWithProb`` it stands for, so
    ``apply_masks`` of its masks gives that transform's output exactly.
    """

    def __init__(self, spec_augment: SpecAugment, prob: float):
        check_prob(prob)
        self.spec_augment = spec_augment
        self.prob = prob
        self.max_masks = spec_augment.num_masks[1]

    def __call__(self, window: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        masks = np.zeros((self.max_masks, 4), dtype=np.int64)
        if rng.random() < self.prob:
            drawn = self.spec_augment.draw(window.shape, rng)
            masks[: len(drawn)] = drawn
        return window, masks


# --------------------------------------------------------------------------------------------
# Combinators


class Compose:
    """Apply ``transforms`` in order, passing the same ``rng`` to each."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, spec: np.ndarray, rng: np.random.Generator | None = None):
        for transform in self.transforms:
            spec = transform(spec, rng)
        return spec


class OneOf:
    """Apply one of ``transforms``, chosen with ``probs`` (uniform when ``None``)."""

    def __init__(self, transforms: Sequence[Transform], probs: Sequence[float] | None = None):
        self.transforms = list(transforms)
        if not self.transforms:
            raise ValueError("OneOf needs at least one transform")
        self.probs = check_choice_probs(probs, len(self.transforms))

    def __call__(self, spec: np.ndarray, rng: np.random.Generator):
        index = int(rng.choice(len(self.transforms), p=self.probs))
        return self.transforms[index](spec, rng)


class UseWithProb:
    """Apply ``transform`` with probability ``prob``, else return the input unchanged."""

    def __init__(self, transform: Transform, prob: float):
        check_prob(prob)
        self.transform = transform
        self.prob = prob

    def __call__(self, spec: np.ndarray, rng: np.random.Generator):
        if rng.random() < self.prob:
            return self.transform(spec, rng)
        return spec


class ToNetworkInput:
    """``to_network_input`` as a pipeline step (ignores ``rng``), with the frequency-position plane
    when ``freq_channel``."""

    def __init__(self, freq_channel: bool = False):
        self.freq_channel = freq_channel

    def __call__(self, spec: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return to_network_input(spec, self.freq_channel)


# --------------------------------------------------------------------------------------------
# The method's pipelines


def train_transform(
    size: int = 256,
    wrap_pad_prob: float = 0.5,
    pad_placement: str = "center",
    resize_prob: float = 0.33,
    resize_scale=(0.8, 1.0),
    resize_ratio=(1.7, 2.3),
    spec_prob: float = 0.5,
    spec_num_masks=(1, 2),
    spec_freq_fraction: float = 0.15,
    spec_time_fraction: float = 0.2,
    freq_warp_prob: float = 0.0,
    freq_warp_max: float = 0.2,
    deferred: bool = False,
) -> Compose | WindowTransform:
    """The method's train-time pipeline; the defaults are the original solution's numbers.

    ``freq_warp_prob`` adds ``FrequencyWarp(freq_warp_max)`` after the resized crop with that
    probability; at 0 (the method) the step is left out, so no random number is drawn for it.

    Returns ``f(spec, rng) -> np.ndarray`` mapping a log-mel ``(n_mels, frames)`` of any length to
    a float32 network input ``(3, n_mels, size)``; with ``deferred``, the same pipeline up to the
    window with SpecAugment drawn but not applied (``WindowTransform``, ``train_window_transform``).
    """
    if not deferred:  # the deferred path's DeferredSpecAugment checks it
        check_prob(spec_prob, "spec_prob")
    spec_augment = SpecAugment(spec_num_masks, freq_fraction=spec_freq_fraction, time_fraction=spec_time_fraction)
    window = _window_steps(size, wrap_pad_prob, pad_placement, resize_prob, resize_scale, resize_ratio,
                           freq_warp_prob, freq_warp_max)
    if deferred:
        return WindowTransform(Compose(window), DeferredSpecAugment(spec_augment, spec_prob))
    return Compose(window + [UseWithProb(spec_augment, spec_prob), ToNetworkInput()])


def _window_steps(size, wrap_pad_prob, pad_placement, resize_prob, resize_scale, resize_ratio,
                  freq_warp_prob=0.0, freq_warp_max=0.2) -> list:
    """The per-clip steps of the train-time pipeline: pad, crop, random resized crop, and the
    frequency warp when ``freq_warp_prob > 0``."""
    check_prob(resize_prob, "resize_prob")
    check_prob(freq_warp_prob, "freq_warp_prob")
    steps = [
        random_pad_to_size(size, wrap_prob=wrap_pad_prob, placement=pad_placement),
        RandomCrop(size),
        UseWithProb(RandomResizedCrop(scale=resize_scale, ratio=resize_ratio), resize_prob),
    ]
    warp = FrequencyWarp(freq_warp_max)  # built (and checked) even when off
    return steps + ([UseWithProb(warp, freq_warp_prob)] if freq_warp_prob > 0 else [])


class WindowTransform:
    """The train-time pipeline with its batch-level work left for the device.

    ``f(spec, rng) -> (window, masks)``: the padded, cropped, possibly resized float32 window
    ``(n_mels, size)`` and the SpecAugment masks drawn for it (``DeferredSpecAugment``: int64
    ``(max_masks, 4)``). It draws exactly what ``train_transform`` with the same arguments draws,
    so ``to_network_input(apply_masks(window, masks))`` equals that transform's output;
    ``freesound.training.device_augment.BatchAugment`` does the masking and the deltas on a whole
    batch at once.
    """

    def __init__(self, window: Compose, spec_augment: DeferredSpecAugment):
        self.window = window
        self.spec_augment = spec_augment

    def __call__(self, spec: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        window = np.ascontiguousarray(self.window(spec, rng), dtype=np.float32)
        return self.spec_augment(window, rng)


def train_window_transform(size: int = 256, **options) -> WindowTransform:
    """``train_transform``'s pipeline (same arguments) up to the window, with SpecAugment drawn but
    not applied and no deltas: see ``WindowTransform``. The frequency warp is a window step, so
    both paths run the same code on the same draws."""
    return train_transform(size, deferred=True, **options)


def valid_transform(size: int = 256, freq_channel: bool = False, crop: str = "center") -> Compose:
    """The validation pipeline: constant pad (centred), a crop, network input.

    ``crop`` is ``"center"`` (the method's centre crop), ``"first"`` (the first ``size`` frames,
    ``FirstCrop``) or ``"whole"`` (no crop: the whole clip, at least ``size`` frames).

    Deterministic; returns ``f(spec, rng=None) -> np.ndarray`` float32 ``(3, n_mels, size)``, or
    ``(4, n_mels, size)`` with the frequency-position plane when ``freq_channel``.

    Raises
    ------
    ValueError
        An unknown ``crop``.
    """
    crops = {"center": [CenterCrop(size)], "first": [FirstCrop(size)], "whole": []}
    if crop not in crops:
        raise ValueError(f"crop must be one of {', '.join(crops)}, got {crop!r}")
    return Compose([PadToSize(size, "constant"), *crops[crop], ToNetworkInput(freq_channel)])
