"""Multi-label losses for clean and noisy labels.

All losses take raw logits ``(B, K)`` and float targets ``(B, K)`` in ``[0, 1]`` (multi-hot, or
soft after mixing) and return a scalar tensor, the mean over every element (``lsep``, a ranking
loss: over every sample). Half-precision inputs (autocast) are upcast to float32 first, so the
small per-element terms are not rounded away.

The method: BCE on trusted (curated and corrected-noisy) samples, ``lsoft`` (or ``lq``) on noisy
ones, combined per batch by ``NoisyCuratedLoss``; ``AuxLoss`` sums that over the model's heads.
With a separate noisy-label head (``noisy_head`` model parameter), ``NoisyHeadLoss`` replaces
both: the usual heads learn from trusted samples only, the extra head from noisy ones only.
Every loss that ``make_loss`` builds is called the same way::

    loss(logits, target, noisy_mask)    # noisy_mask: (B,) bool, True for noisy samples
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Upcast half-precision tensors; float32 and float64 pass through."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy with logits over all ``B x K`` elements."""
    return F.binary_cross_entropy_with_logits(_at_least_float32(logits), _at_least_float32(target))


def lsoft(logits: torch.Tensor, target: torch.Tensor, beta: float = 0.7) -> torch.Tensor:
    """Soft bootstrapping loss (L_soft) for noisy labels.

    The target becomes ``beta * y + (1 - beta) * p`` with ``p = sigmoid(logits)`` treated as a
    constant (no gradient flows through it), then BCE with logits, mean over all elements. The
    gradient with respect to a logit is therefore ``(p - target') / (B * K)``, i.e.
    ``beta * (p - y) / (B * K)``: the model is pulled towards the given label only ``beta`` as hard.
    """
    logits = _at_least_float32(logits)
    with torch.no_grad():
        soft_target = beta * _at_least_float32(target) + (1.0 - beta) * torch.sigmoid(logits)
    return F.binary_cross_entropy_with_logits(logits, soft_target)


def lq(logits: torch.Tensor, target: torch.Tensor, q: float = 0.5) -> torch.Tensor:
    """Generalised cross-entropy (L_q, Zhang & Sabuncu 2018) on per-label probabilities.

    With ``p = sigmoid(logits)`` and ``p_t = y * p + (1 - y) * (1 - p)`` (the probability given to
    the label's value; for soft ``y`` the same formula), the loss is ``mean((1 - p_t ** q) / q)``
    over all elements. ``q -> 0`` recovers BCE; ``q = 1`` is the mean absolute error, which bounds
    the pull of a confidently wrong label. ``p_t`` is evaluated in log space
    (``logaddexp(log y + logsigmoid(z), log(1 - y) + logsigmoid(-z))``) so saturated logits give
    finite gradients.
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"q must be in (0, 1], got {q}")
    logits = _at_least_float32(logits)
    target = _at_least_float32(target)
    log_pt = torch.logaddexp(
        torch.log(target) + F.logsigmoid(logits),
        torch.log1p(-target) + F.logsigmoid(-logits),
    )
    return ((1.0 - torch.exp(q * log_pt)) / q).mean()


def lsep(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Log-sum-exp pairwise ranking loss (LSEP; Li, Song & Luo, "Improving Pairwise Ranking for
    Multi-label Image Classification", CVPR 2017, eq. 4), the mean over the batch.

    Per sample, ``log(1 + sum_{u, v} w_uv * exp(f_v - f_u))`` with ``f`` the logits and the pair
    weight ``w_uv = max(0, y_u - y_v)``: with multi-hot targets, 1 exactly for every pair of a
    positive label ``u`` and a negative label ``v``, which is the paper's loss. Soft targets
    (additive mixing) give each pair the margin by which ``u``'s target exceeds ``v``'s: a label
    with target 0.7 must rank above one with 0.2 (weight 0.5) and above an absent one (weight 0.7),
    and two labels with equal targets are not compared. A sample with no such pair (no positive or
    no negative label) has loss 0 and no gradient, and still counts in the mean over the ``B``
    samples (as every sample does in the other losses).

    Evaluated as ``softplus(logsumexp(f_v - f_u + log w_uv))`` over the ``(B, K, K)`` pairs, so
    large logit gaps do not overflow.

    Parameters
    ----------
    logits : (B, K) tensor
    target : (B, K) tensor in [0, 1]

    Returns
    -------
    scalar tensor
    """
    logits = _at_least_float32(logits)
    target = _at_least_float32(target)
    # pair (u, v) at [b, u, v]: u ranked above v
    weight = (target.unsqueeze(2) - target.unsqueeze(1)).clamp(min=0)
    has_pair = (weight > 0).flatten(1).any(1)
    log_weight = torch.log(weight)
    # A row of -inf everywhere (no pair) would give NaN gradients through logsumexp, even behind
    # the where() below; it is set to 0 there, then its loss is replaced by 0.
    log_weight = torch.where(has_pair[:, None, None], log_weight, torch.zeros_like(log_weight))
    gaps = logits.unsqueeze(1) - logits.unsqueeze(2)  # [b, u, v] = f_v - f_u
    per_sample = F.softplus(torch.logsumexp((gaps + log_weight).flatten(1), dim=1))
    return torch.where(has_pair, per_sample, torch.zeros_like(per_sample)).mean()


class NoisyCuratedLoss:
    """One loss for trusted samples and another for noisy ones, weighted by sample counts.

    ``loss(logits, target, noisy_mask)`` with ``logits``, ``target`` ``(B, K)`` and ``noisy_mask``
    ``(B,)`` bool returns ``(n_c * L_c + n_n * L_n) / B``, where ``L_c`` is ``curated_loss`` on the
    ``n_c`` trusted rows and ``L_n`` is ``noisy_loss`` on the ``n_n`` noisy rows; an empty part
    contributes 0.
    """

    def __init__(self, curated_loss: LossFn, noisy_loss: LossFn):
        self.curated_loss = curated_loss
        self.noisy_loss = noisy_loss

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, noisy_mask: torch.Tensor) -> torch.Tensor:
        noisy_mask = torch.as_tensor(noisy_mask, dtype=torch.bool, device=logits.device)
        if noisy_mask.shape != logits.shape[:1]:
            raise ValueError(f"noisy_mask must have shape ({logits.shape[0]},), got {tuple(noisy_mask.shape)}")
        batch = logits.shape[0]
        total = logits.new_zeros((), dtype=torch.float32)
        for mask, loss in ((~noisy_mask, self.curated_loss), (noisy_mask, self.noisy_loss)):
            count = int(mask.sum())
            if count:
                total = total + loss(logits[mask], target[mask]) * (count / batch)
        return total


class AuxLoss:
    """Weighted sum of one loss over a model's heads.

    ``loss(outputs, target, *args)`` with ``outputs`` a tuple of logits ``(main, aux3, aux2,
    aux1)`` returns ``sum_i weights[i] * base_loss(outputs[i], target, *args)``; extra arguments
    (e.g. ``noisy_mask``) are passed through. A single tensor or a 1-tuple gets weight 1.
    """

    def __init__(self, base_loss: Callable[..., torch.Tensor], weights: Sequence[float] = (1.0, 0.4, 0.2, 0.1)):
        self.base_loss = base_loss
        self.weights = tuple(weights)

    def __call__(self, outputs, target: torch.Tensor, *args) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        if len(outputs) == 1:
            return self.base_loss(outputs[0], target, *args)
        if len(outputs) > len(self.weights):
            raise ValueError(f"{len(outputs)} heads but only {len(self.weights)} weights: {self.weights}")
        return sum(w * self.base_loss(out, target, *args) for w, out in zip(self.weights, outputs))


class NoisyHeadLoss:
    """Trusted and noisy labels on separate heads (a model built with ``noisy_head=True``).

    ``loss(outputs, target, noisy_mask)`` with ``outputs = (*heads, noisy_logits)``, the model's
    usual heads (main first) then its noisy-label head, each ``(B, K)``, returns::

        (n_t / B) * sum_i weights[i] * trusted_loss(heads[i][trusted], target[trusted])
        + (n_n / B) * noisy_loss(noisy_logits[noisy], target[noisy])

    over the ``n_t`` trusted and ``n_n`` noisy rows of the batch (``noisy_mask``): the main and
    auxiliary heads never see a noisy label and the noisy head never sees a trusted one; it is
    weighted like the main head (1.0). An empty part contributes 0, its heads entering the graph
    times 0, so every parameter gets a gradient each step (``DistributedDataParallel`` requires
    it, and the optimiser then steps the same parameters in one process as in several).

    Source: the 4th-place FAT2019 solution and upb's (Ebbers & Haeb-Umbach, DCASE 2019), which
    trained a separate output for the noisy set.
    """

    def __init__(self, trusted_loss: LossFn, noisy_loss: LossFn, weights: Sequence[float] = (1.0, 0.4, 0.2, 0.1)):
        self.trusted_loss = trusted_loss
        self.noisy_loss = noisy_loss
        self.weights = tuple(weights)

    def __call__(self, outputs, target: torch.Tensor, noisy_mask: torch.Tensor) -> torch.Tensor:
        *heads, noisy_logits = outputs
        if not heads or len(heads) > len(self.weights):
            raise ValueError(f"expected 2 to {len(self.weights) + 1} outputs (the heads, then the noisy head), "
                             f"got {len(outputs)}")
        noisy_mask = torch.as_tensor(noisy_mask, dtype=torch.bool, device=noisy_logits.device)
        if noisy_mask.shape != noisy_logits.shape[:1]:
            raise ValueError(f"noisy_mask must have shape ({noisy_logits.shape[0]},), got {tuple(noisy_mask.shape)}")
        batch = noisy_logits.shape[0]
        trusted = ~noisy_mask
        parts = [(trusted, self.trusted_loss, weight, head) for weight, head in zip(self.weights, heads)]
        parts.append((noisy_mask, self.noisy_loss, 1.0, noisy_logits))
        total = noisy_logits.new_zeros((), dtype=torch.float32)
        for mask, loss, weight, logits in parts:
            count = int(mask.sum())
            if count:
                total = total + weight * (count / batch) * loss(logits[mask], target[mask])
            else:
                total = total + 0.0 * logits.sum()
        return total


class SampleLoss:
    """A plain loss behind the shared signature: ``noisy_mask`` is accepted and ignored."""

    def __init__(self, fn: LossFn, **params):
        self.fn = fn
        self.params = params

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, noisy_mask=None) -> torch.Tensor:
        return self.fn(logits, target, **self.params)


_PLAIN_LOSSES: dict[str, LossFn] = {"bce": bce, "lsoft": lsoft, "lq": lq, "lsep": lsep}
LOSS_NAMES = (*_PLAIN_LOSSES, "noisy_curated")


def _check_params(name: str, params: dict, valid: Sequence[str]) -> None:
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for loss {name!r}; valid: {sorted(valid)}")


def _build_plain(name: str, params: dict) -> SampleLoss:
    fn = _PLAIN_LOSSES[name]
    _check_params(name, params, list(inspect.signature(fn).parameters)[2:])
    return SampleLoss(fn, **params)


def _build_part(part: str, spec: dict) -> SampleLoss:
    """Build one side of ``noisy_curated`` from a sub-config like ``{"name": "lsoft", "beta": 0.7}``."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in _PLAIN_LOSSES:
        raise ValueError(f"unknown loss {name!r} for noisy_curated.{part}; valid: {sorted(_PLAIN_LOSSES)}")
    return _build_plain(name, spec)


def make_loss(name: str, **params) -> Callable[..., torch.Tensor]:
    """Build a loss from its config name and parameters.

    Parameters
    ----------
    name : {"bce", "lsoft", "lq", "lsep", "noisy_curated"}
        ``"bce"``; ``"lsoft"`` (``beta``); ``"lq"`` (``q``); ``"lsep"`` (no parameters);
        ``"noisy_curated"`` with ``curated`` and ``noisy`` sub-configs such as
        ``{"name": "lsoft", "beta": 0.7}`` (defaults: BCE for trusted samples, L_soft with
        ``beta=0.7`` for noisy ones).

    Returns
    -------
    callable
        ``loss(logits, target, noisy_mask) -> scalar tensor``; plain losses ignore ``noisy_mask``.
        Wrap it in ``AuxLoss`` for a model with auxiliary heads.

    Raises
    ------
    ValueError
        For an unknown name or parameter; the message lists the valid ones.
    """
    if name in _PLAIN_LOSSES:
        return _build_plain(name, params)
    if name == "noisy_curated":
        _check_params(name, params, ["curated", "noisy"])
        curated = _build_part("curated", params.get("curated", {"name": "bce"}))
        noisy = _build_part("noisy", params.get("noisy", {"name": "lsoft", "beta": 0.7}))
        return NoisyCuratedLoss(curated, noisy)
    raise ValueError(f"unknown loss {name!r}; valid: {sorted(LOSS_NAMES)}")
