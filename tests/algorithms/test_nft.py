"""DiffusionNFT's loss by hand and its minimiser (its short run and resume: test_raft.py)."""

import pytest
import torch

from hero.algorithms.nft import nft_loss
from hero.likelihood import DenoisingErrors


def _raw(prediction, base, target, weight) -> DenoisingErrors:
    return DenoisingErrors(model=torch.zeros(0), prediction=torch.tensor(prediction, requires_grad=True),
                           base_prediction=torch.tensor(base), target=torch.tensor(target),
                           weight=torch.tensor(weight))


def test_nft_loss_by_hand():
    # f_θ = [1, 3], f_ref = [1, 1], y = [2, 0] per image (2 values each); β = 0.5, w = [1, 2].
    e = _raw([[1.0, 3.0], [1.0, 3.0]], [[1.0, 1.0], [1.0, 1.0]], [[2.0, 0.0], [2.0, 0.0]], [1.0, 2.0])
    # good: f⁺ = 0.5·f_ref + 0.5·f_θ = [1, 2], ‖f⁺ − y‖² mean = (1 + 4)/2 = 2.5, weight 1;
    # not good: f⁻ = 1.5·f_ref − 0.5·f_θ = [1, 0], mean ‖f⁻ − y‖² = (1 + 0)/2 = 0.5, weight 2.
    loss = nft_loss(e, torch.tensor([True, False]), beta=0.5)
    assert loss.item() == pytest.approx((2.5 + 2 * 0.5) / 2)
    soft = nft_loss(_raw([[1.0, 3.0]], [[1.0, 1.0]], [[2.0, 0.0]], [1.0]), torch.tensor([0.25]), beta=0.5)
    assert soft.item() == pytest.approx(0.25 * 2.5 + 0.75 * 0.5)  # a reward r in [0, 1] mixes the two terms
    with pytest.raises(ValueError, match="base model's prediction"):
        nft_loss(DenoisingErrors(model=torch.zeros(1)), torch.tensor([True]), 1.0)


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_nft_minimiser_steps_towards_the_good_images_and_away_from_the_others(beta):
    # One x_t that 3 good images (target +1) and 1 not-good image (target −2) pass through; f_ref = 0.
    # The minimiser is f_ref + (p·(E₊ − f_ref) − (1 − p)·(E₋ − f_ref))/β = (0.75·1 + 0.25·2)/β = 1.25/β.
    f = torch.zeros(4, 1, requires_grad=True)
    opt = torch.optim.SGD([f], lr=0.5)
    labels = torch.tensor([True, True, True, False])
    for _ in range(500):
        shared = f.mean(0, keepdim=True).expand(4, 1)  # one prediction at the shared x_t
        errors = DenoisingErrors(model=torch.zeros(0), prediction=shared, base_prediction=torch.zeros(4, 1),
                                 target=torch.tensor([[1.0], [1.0], [1.0], [-2.0]]), weight=torch.ones(4))
        opt.zero_grad()
        nft_loss(errors, labels, beta).backward()
        opt.step()
    assert f.mean().item() == pytest.approx(1.25 / beta, abs=1e-4)
