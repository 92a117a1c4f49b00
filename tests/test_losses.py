import math

import pytest
import torch

from freesound.training.losses import AuxLoss, NoisyCuratedLoss, bce, lq, lsoft, make_loss

LOGITS = [[0.5, -1.0], [2.0, 0.0]]
TARGET = [[1.0, 0.0], [0.0, 1.0]]


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def tensors(logits=LOGITS, target=TARGET, grad=False):
    return torch.tensor(logits, dtype=torch.float64, requires_grad=grad), torch.tensor(target, dtype=torch.float64)


def elementwise(fn):
    """Mean of a per-element formula over LOGITS / TARGET, computed by hand in Python floats."""
    values = [fn(z, y) for zs, ys in zip(LOGITS, TARGET) for z, y in zip(zs, ys)]
    return sum(values) / len(values)


def hand_bce(z, y, soft=None):
    p = sigmoid(z)
    t = y if soft is None else soft
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def test_bce_by_hand():
    expected = elementwise(hand_bce)
    assert bce(*tensors()).item() == pytest.approx(expected, abs=1e-6)


def test_lsoft_by_hand():
    beta = 0.7

    def hand(z, y):
        return hand_bce(z, y, soft=beta * y + (1 - beta) * sigmoid(z))

    assert lsoft(*tensors(), beta=beta).item() == pytest.approx(elementwise(hand), abs=1e-6)


def test_lsoft_with_beta_1_is_bce():
    assert lsoft(*tensors(), beta=1.0).item() == pytest.approx(bce(*tensors()).item(), abs=1e-7)


def test_lsoft_gradient_treats_the_prediction_as_a_constant():
    beta = 0.7
    logits, target = tensors(grad=True)
    lsoft(logits, target, beta=beta).backward()
    # d/dz BCE(z, t') = sigmoid(z) - t' with t' fixed; t' = beta*y + (1-beta)*p gives beta*(p - y).
    p = torch.sigmoid(logits.detach())
    expected = beta * (p - target) / target.numel()
    torch.testing.assert_close(logits.grad, expected, rtol=0, atol=1e-7)


def test_lq_by_hand():
    q = 0.5

    def hand(z, y):
        p = sigmoid(z)
        p_t = y * p + (1 - y) * (1 - p)
        return (1 - p_t**q) / q

    assert lq(*tensors(), q=q).item() == pytest.approx(elementwise(hand), abs=1e-6)


def test_lq_soft_targets_follow_the_same_formula():
    q = 0.7
    z, y = 0.3, 0.25
    p = sigmoid(z)
    expected = (1 - (y * p + (1 - y) * (1 - p)) ** q) / q
    assert lq(torch.tensor([[z]]), torch.tensor([[y]]), q=q).item() == pytest.approx(expected, abs=1e-6)


def test_lq_has_finite_gradients_at_saturated_logits():
    logits = torch.tensor([[200.0, -200.0, 30.0, -30.0]], requires_grad=True)
    target = torch.tensor([[0.0, 1.0, 1.0, 0.5]])
    loss = lq(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_losses_compute_in_float32_from_half_logits():
    logits, target = torch.tensor(LOGITS, dtype=torch.float16), torch.tensor(TARGET)
    for fn in (bce, lsoft, lq):
        assert fn(logits, target).dtype == torch.float32


def test_noisy_curated_weights_by_sample_counts():
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    target = (torch.rand(5, 4, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    noisy = torch.tensor([False, True, False, True, True])
    loss = NoisyCuratedLoss(bce, lsoft)(logits, target, noisy)
    expected = (2 * bce(logits[~noisy], target[~noisy]) + 3 * lsoft(logits[noisy], target[noisy])) / 5
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.parametrize("all_noisy", [False, True])
def test_noisy_curated_with_one_part_empty(all_noisy):
    logits, target = tensors(grad=True)
    noisy = torch.full((2,), all_noisy)
    loss = NoisyCuratedLoss(bce, lambda z, y: lsoft(z, y, beta=0.5))(logits, target, noisy)
    expected = lsoft(logits, target, beta=0.5) if all_noisy else bce(logits, target)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-7)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_noisy_curated_rejects_a_mask_of_the_wrong_length():
    with pytest.raises(ValueError, match="noisy_mask"):
        NoisyCuratedLoss(bce, bce)(*tensors(), torch.tensor([True, False, True]))


def test_aux_loss_weights_heads_and_passes_extra_arguments():
    logits, target = tensors()
    heads = (logits, logits * 2, logits * 3, logits * 4)
    noisy = torch.tensor([True, False])
    base = NoisyCuratedLoss(bce, lq)
    expected = sum(w * base(h, target, noisy) for w, h in zip((1.0, 0.4, 0.2, 0.1), heads))
    assert AuxLoss(base)(heads, target, noisy).item() == pytest.approx(expected.item(), abs=1e-7)


def test_aux_loss_single_head_has_weight_1():
    logits, target = tensors()
    aux = AuxLoss(bce, weights=(0.5, 0.5))
    assert aux(logits, target).item() == pytest.approx(bce(logits, target).item())
    assert aux((logits,), target).item() == pytest.approx(bce(logits, target).item())
    with pytest.raises(ValueError, match="weights"):
        aux((logits, logits, logits), target)


def test_make_loss_builds_every_named_loss():
    logits, target = tensors()
    noisy = torch.tensor([True, False])
    assert make_loss("bce")(logits, target, noisy).item() == pytest.approx(bce(logits, target).item())
    assert make_loss("lq", q=0.3)(logits, target).item() == pytest.approx(lq(logits, target, q=0.3).item())
    built = make_loss("noisy_curated", curated={"name": "bce"}, noisy={"name": "lsoft", "beta": 0.7})
    expected = NoisyCuratedLoss(bce, lambda z, y: lsoft(z, y, beta=0.7))(logits, target, noisy)
    assert built(logits, target, noisy).item() == pytest.approx(expected.item())
    default = make_loss("noisy_curated")
    assert default(logits, target, noisy).item() == pytest.approx(expected.item())


def test_make_loss_names_valid_choices_on_error():
    with pytest.raises(ValueError, match="valid.*bce.*lq.*lsoft.*noisy_curated"):
        make_loss("focal")
    with pytest.raises(ValueError, match="valid.*beta"):
        make_loss("lsoft", gamma=2)
    with pytest.raises(ValueError, match="noisy_curated.noisy.*valid"):
        make_loss("noisy_curated", noisy={"name": "focal"})
    with pytest.raises(ValueError, match="valid.*curated.*noisy"):
        make_loss("noisy_curated", clean={"name": "bce"})
