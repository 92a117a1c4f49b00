"""Post-processing of per-window probabilities: how models combine, smoothing over neighbouring
windows, and rescaling by a file's maximum. Each is a pure function of NumPy arrays.

The defaults of ``freesound predict --windows`` (geometric mean, no smoothing, no rescaling) leave
every window's probabilities as the models give them.
"""

from __future__ import annotations

import numpy as np

from freesound.errors import FreesoundError
from freesound.predict.tiles import geometric_mean

#: How the probabilities of several models are combined (``combine_models``).
COMBINE = ("gmean", "mean", "min")


def combine_models(probabilities: np.ndarray, how: str = "gmean", axis: int = 0) -> np.ndarray:
    """Combine models' probabilities along ``axis``: ``"gmean"`` (the method's geometric mean,
    ``freesound.predict.tiles.geometric_mean``), ``"mean"`` or ``"min"``.

    The minimum keeps a class high only where every model agrees; BirdCLEF 2023-2025 teams blended
    with arithmetic means and ranked blends, FSDKaggle2019's winners with the geometric mean.

    Returns
    -------
    np.ndarray float32 (float64 for float64 input), ``probabilities`` without ``axis``

    Raises
    ------
    FreesoundError
        An unknown ``how`` (naming the valid ones).
    """
    if how == "gmean":
        return geometric_mean(probabilities, axis=axis)
    dtype = np.result_type(probabilities.dtype, np.float32)
    if how == "mean":
        return probabilities.astype(np.float64).mean(axis=axis).astype(dtype)
    if how == "min":
        return probabilities.min(axis=axis).astype(dtype)
    raise FreesoundError(f"model combination must be one of {', '.join(COMBINE)}, got {how!r}")


def check_smoothing(weights) -> np.ndarray:
    """``weights`` as a float64 array if they make a smoothing kernel: an odd number of
    non-negative weights with a positive centre; else a ``FreesoundError`` saying why."""
    kernel = np.asarray(weights, dtype=np.float64)
    if kernel.ndim != 1 or len(kernel) % 2 == 0 or not np.all(np.isfinite(kernel)) or np.any(kernel < 0):
        raise FreesoundError(f"smoothing weights must be an odd number of non-negative numbers, centred on the "
                             f"window itself (e.g. 0.15,0.7,0.15), got {','.join(f'{w:g}' for w in np.atleast_1d(kernel))}")
    if kernel[len(kernel) // 2] <= 0:
        raise FreesoundError(f"the centre smoothing weight (the window's own) must be positive, got {','.join(f'{w:g}' for w in kernel)}")
    return kernel


def parse_weights(text: str | None) -> list | None:
    """Smoothing weights from a comma-separated string (``"0.15,0.7,0.15"``), checked by
    ``check_smoothing``; ``None`` for ``None``.

    Raises
    ------
    FreesoundError
        A weight that is not a number, or weights that make no kernel.
    """
    if text is None:
        return None
    try:
        weights = [float(part) for part in text.split(",")]
    except ValueError:
        raise FreesoundError(f"smoothing weights must be comma-separated numbers such as 0.15,0.7,0.15, "
                             f"got {text!r}") from None
    return check_smoothing(weights).tolist()


def smooth_windows(probabilities: np.ndarray, weights) -> np.ndarray:
    """Each window's probabilities as a weighted mean of its own and its neighbours' in one file.

    ``out[t] = sum_j w[j]·p[t + j - h] / sum_j' w[j']`` with ``h = len(weights) // 2``, both sums over
    the windows that exist: at the file's ends the weights of the windows present are renormalised,
    so a file's first window with ``0.15, 0.7, 0.15`` is ``(0.7·p0 + 0.15·p1) / 0.85``. Weights are
    normalised, so their scale does not matter.

    Source: BirdCLEF 2025 public kernels smoothed each soundscape's 5-second rows over their
    neighbours, e.g. ``smooth_submission`` in github.com/Ryan-Ren0330/BirdCLEF2025-Bronze-Solution
    (Private LB 0.893): ``0.15, 0.7, 0.15`` inside the file, ``0.8, 0.2`` at its ends; wider
    kernels such as ``0.1, 0.2, 0.4, 0.2, 0.1`` are the same operation.

    Parameters
    ----------
    probabilities : np.ndarray (n_windows, C), one file's windows in time order
    weights : odd-length sequence of non-negative floats, the centre for the window itself

    Returns
    -------
    np.ndarray, same shape and dtype (float32 for narrower input)
    """
    kernel = check_smoothing(weights)
    probs = np.asarray(probabilities, dtype=np.float64)
    n, half = len(probs), len(kernel) // 2
    padded = np.pad(probs, ((half, half), (0, 0)))
    present = np.pad(np.ones(n), half)
    total = np.zeros_like(probs)
    norm = np.zeros(n)
    for j, weight in enumerate(kernel):
        total += weight * padded[j:j + n]
        norm += weight * present[j:j + n]
    return (total / norm[:, None]).astype(np.result_type(np.asarray(probabilities).dtype, np.float32))


def rescale_power(power) -> float:
    """``power`` if it is a finite number >= 0 (``rescale_by_file_max``); else a ``FreesoundError``."""
    if isinstance(power, bool) or not (isinstance(power, (int, float)) and 0 <= power < np.inf):
        raise FreesoundError(f"the file-rescaling power must be a non-negative number, got {power!r}")
    return power


def rescale_by_file_max(probabilities: np.ndarray, power: float) -> np.ndarray:
    """``p[t, c] · max_t'(p[t', c]) ** power`` for one file's windows.

    A class heard loud somewhere in a recording is more likely present in its quieter windows too;
    a class never above a low probability anywhere is pushed further down. ``power = 0`` leaves the
    probabilities unchanged; larger powers lean more on the file. Ranks within a window change, the
    order of one class's windows within the file does not.

    Source: BirdCLEF 2025's public post-processing by the file's maximum (myso1987, "Post-processing
    with power adjustment for low-ranked classes", used in github.com/Ryan-Ren0330/
    BirdCLEF2025-Bronze-Solution as ``apply_power_to_low_ranked_cols``) raises to a power the
    classes whose file maximum ranks low; this is its smooth form, the same idea without a rank cut.

    Parameters
    ----------
    probabilities : np.ndarray (n_windows, C), one file's windows
    power : float >= 0

    Raises
    ------
    FreesoundError
        A negative or non-finite ``power``.
    """
    power = rescale_power(power)
    probs = np.asarray(probabilities)
    dtype = np.result_type(probs.dtype, np.float32)
    scaled = probs.astype(np.float64) * probs.astype(np.float64).max(axis=0, keepdims=True) ** power
    return scaled.astype(dtype)


def postprocess_file(probabilities: np.ndarray, smooth=None, file_rescale: float | None = None) -> np.ndarray:
    """One file's windows smoothed (``smooth`` weights, optional) and then rescaled by the file's
    maximum (``file_rescale`` power, optional); neither given: ``probabilities`` unchanged."""
    if smooth is not None:
        probabilities = smooth_windows(probabilities, smooth)
    if file_rescale is not None:
        probabilities = rescale_by_file_max(probabilities, file_rescale)
    return probabilities
