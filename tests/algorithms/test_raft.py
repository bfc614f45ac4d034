"""RAFT and Diffusion-KTO losses by hand; short runs of RAFT, KTO and DiffusionNFT that load, and resume after
SIGKILL to the bit (NFT's loss: test_nft.py)."""


import pytest
import torch
from run_checks import assert_lora_loads, kill_resume_and_compare

from hero.algorithms.kto import kto_loss
from hero.algorithms.raft import raft_loss
from hero.config import load_config
from hero.likelihood import DenoisingErrors
from hero.runs.feedback_log import FeedbackLog
from hero.train import train

FAST = ["sampler.steps=4", "pg.timesteps_per_traj=2", "likelihood.steps_per_round=3", "likelihood.batch_size=4"]


def _errors(model, base, to_base) -> DenoisingErrors:
    return DenoisingErrors(model=torch.tensor(model, requires_grad=True), base=torch.tensor(base),
                           to_base=torch.tensor(to_base))


def test_raft_loss_by_hand():
    e = _errors([0.1, 0.3], [0.2, 0.2], [0.01, 0.03])
    assert raft_loss(e, torch.tensor([True, True]), 0.5).item() == pytest.approx(0.2 + 0.5 * 0.02)
    assert raft_loss(e, torch.tensor([True, True]), 0.0).item() == pytest.approx(0.2)


def test_kto_loss_by_hand_and_its_pull_directions():
    e = _errors([0.1, 0.3], [0.2, 0.2], [0.01, 0.03])
    labels = torch.tensor([True, False])
    # r = 10·(ℓ_ref − ℓ_θ) = [1, −1], Q = 10·0.02 = 0.2: good 1 − σ(0.8), not good 1 − σ(0.2 + 1).
    expected = ((1 - torch.sigmoid(torch.tensor(0.8))) + (1 - torch.sigmoid(torch.tensor(1.2)))) / 2
    loss = kto_loss(e, labels, beta=10.0)
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert e.model.grad[0] > 0 > e.model.grad[1]  # descent lowers the good image's error, raises the other's
    weighted = kto_loss(_errors([0.1, 0.3], [0.2, 0.2], [0.01, 0.03]), labels, 10.0, good_weight=2.0, bad_weight=0.5)
    assert weighted.item() == pytest.approx((2 * (1 - torch.sigmoid(torch.tensor(0.8))) +
                                             0.5 * (1 - torch.sigmoid(torch.tensor(1.2)))).item() / 2)


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["raft", "kto", "nft"])
def test_a_run_killed_mid_way_and_resumed_ends_with_the_uninterrupted_lora(algo, tmp_path):
    args = dict(algo=algo, prompt="two red squares", budget=24, images_per_round=8)
    whole = train(load_config(None, FAST, **args, out=str(tmp_path / "whole")), show_progress=False)
    assert_lora_loads(whole)
    metrics = whole.metrics()
    assert [m["round"] for m in metrics] == [0, 1, 2] and metrics[-1]["lik_steps"] in (0, 3)
    assert metrics[-1]["pool_size"] == 24

    out = tmp_path / "killed"
    kill_resume_and_compare(["--algo", algo, "--prompt", "two red squares", "--budget", "24", "--images-per-round",
                             "8", "--out", str(out)] + [a for s in FAST for a in ("--set", s)], out, whole)
    assert FeedbackLog(out / "feedback.sqlite").n_feedback() == 24


@pytest.mark.parametrize("rejected, expected", [("unused", [1, 3]), ("unconditional", [0, 1, 2, 3])])
def test_raft_trains_the_rejected_images_only_when_asked(tiny_pixel_pipeline, rejected, expected):
    from hero.algorithms.raft import RaftTrainer
    from hero.rollout import rollout

    cfg = load_config(None, [f"likelihood.rejected={rejected}"], algo="raft", prompt="two red squares")
    trainer = RaftTrainer(cfg, tiny_pixel_pipeline)
    traj = rollout(tiny_pixel_pipeline, ["two red squares"] * 4, guidance_scale=2.0, num_steps=2, seed=0)
    trainer.pool.add_round(traj, [False, True, False, True], best=None)
    assert trainer.candidates().tolist() == expected
    assert trainer.update.rejected_unconditional == (rejected == "unconditional")


def test_raft_keeps_the_sampled_states_only_when_asked_and_saves_them(tiny_pixel_pipeline, tmp_path):
    from hero.algorithms.base import likelihood_config
    from hero.algorithms.raft import RaftTrainer
    from hero.likelihood import ImagePool
    from hero.rollout import rollout

    off = load_config(None, [], algo="raft", prompt="two red squares")
    assert likelihood_config(off, with_base=True).sampled_states == 0 and not ImagePool().keep_states
    cfg = load_config(None, ["likelihood.sampled_states=0.5"], algo="raft", prompt="two red squares")
    trainer = RaftTrainer(cfg, tiny_pixel_pipeline)
    traj = rollout(tiny_pixel_pipeline, ["two red squares"] * 2, guidance_scale=2.0, num_steps=3, seed=0)
    trainer.pool.add_round(traj, [True, False], best=None)
    assert trainer.update.sampled_states == 0.5 and trainer.pool.keep_states and len(trainer.pool.states) == 1
    trainer.save(tmp_path)
    trainer.pool = ImagePool()
    trainer.load(tmp_path)  # as a resumed run does
    assert trainer.pool.keep_states and torch.equal(trainer.pool.states[0], traj.latents[:, :-1])
    assert torch.equal(trainer.pool.timesteps[0], traj.timesteps)
