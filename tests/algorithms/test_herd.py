"""HERD: descriptions as hindsight prompts, log-probs recomputed under the relabel prompt, the joint update, a run."""

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch
from run_checks import assert_lora_loads, assert_resume_reproduces_lora
from safetensors.torch import load_file

import hero.algorithms.herd as herd
from hero.algorithms import ALGORITHMS, make_algorithm
from hero.algorithms.herd import HerdTrainer, describe, recompute_log_probs, relabel, relabel_prompt
from hero.config import load_config
from hero.feedback import RoundFeedback, SimulatedHuman
from hero.models.families import denoiser_for
from hero.policy_gradient import standardise_advantages
from hero.rollout import rollout, step_log_prob
from hero.runs.feedback_log import FeedbackLog
from hero.toyworld import parse_task, random_scene, render
from hero.toyworld.judge import analyse, verdict
from hero.train import train

FAST = ["sampler.steps=4", "pg.timesteps_per_traj=2"]


def _scenes() -> np.ndarray:
    """Judged for "two red squares": good; a failure showing 3 blue circles; a smear; a failure showing 1 triangle."""
    rng = np.random.default_rng(0)
    return np.stack([render(random_scene(rng, [(2, "red", "square")], "white")),
                     render(random_scene(rng, [(3, "blue", "circle")], "white")),
                     render(random_scene(rng, [(2, "red", "square")], "white", defect="smear")),
                     render(random_scene(rng, [(1, "green", "triangle")], "black"))])


def test_describe_names_what_the_image_shows():
    images = _scenes()
    assert [describe(im) for im in images] == ["two red squares on white", "three blue circles on white", None,
                                               "one green triangle on black"]
    rng = np.random.default_rng(1)
    mixed = render(random_scene(rng, [(1, "red", "circle"), (2, "yellow", "square")], "black"))
    assert verdict(analyse(mixed), parse_task(describe(mixed))).good  # the description is a prompt it satisfies
    g = torch.Generator().manual_seed(0)
    # Indescribable: the seed's rule, a sentence of a multi-sentence prompt, or nothing.
    assert relabel_prompt(images[2], "a cat. on a mat.", g) in ("a cat", "on a mat")
    assert relabel_prompt(images[2], "two red squares", g) is None


def test_relabelled_log_probs_are_recomputed_under_the_new_prompt(tiny_pixel_pipeline):
    pipe = tiny_pixel_pipeline
    traj = rollout(pipe, ["a red circle", "a blue square"], guidance_scale=3.0, num_steps=3, seed=0)
    moved = relabel(pipe, traj, ["a blue square", "big"])
    assert torch.equal(moved.latents, traj.latents) and moved.prompts == ["a blue square", "big"]
    assert torch.isnan(moved.log_probs).all()  # the stale ones cannot be used by mistake
    lp = recompute_log_probs(pipe, moved, batch_size=1)
    with torch.no_grad():  # a fresh evaluation of step 1 under the new prompt
        assert torch.allclose(lp[:, 1], step_log_prob(denoiser_for(pipe), moved, [0, 1], 1))
    assert (lp - traj.log_probs).abs().min() > 1e-3  # differs from the stale log-probs of the old prompt
    # Relabelled back to the prompts it was sampled with: exactly the sampler's own log-probs.
    back = recompute_log_probs(pipe, relabel(pipe, moved, traj.prompts))
    assert torch.allclose(back, traj.log_probs, atol=1e-6)


def test_learn_replays_relabelled_failures_with_joint_advantages(tiny_pixel_pipeline, monkeypatch):
    cfg = load_config(None, FAST + ["herd.replay_fraction=1.0"], algo="herd", prompt="two red squares", budget=8,
                      images_per_round=4)
    trainer = make_algorithm(cfg, tiny_pixel_pipeline)
    assert isinstance(trainer, HerdTrainer) and "herd" in ALGORITHMS
    calls = []
    monkeypatch.setattr(herd, "policy_gradient_update", lambda pipe, batch, rewards, *a, **kw: calls.append(
        (batch, rewards)) or {"loss": 0.0})
    traj = rollout(tiny_pixel_pipeline, [cfg.prompt] * 4, guidance_scale=2.0, num_steps=4, seed=0)
    traj = dataclasses.replace(traj, images=_scenes())
    fb = SimulatedHuman(parse_task(cfg.prompt)).judge_round(0, cfg.prompt, traj.images, None)
    assert fb.good == [True, False, False, False]
    stats = trainer.learn(0, traj, fb, torch.Generator().manual_seed(0))
    assert len(calls[0][0]) == 4 and stats["herd_replayed"] == 0
    # The three failures were examined (three feedback); the smear has no description, so two are relabelled,
    # each judged by the simulated human for what it shows: a success.
    assert stats["herd_relabel_feedback"] == 3 and stats["herd_relabelled"] == 2
    assert trainer.replay.prompts == ["three blue circles on white", "one green triangle on black"]
    # Every image looked at is a judgement for the log: the smear with no prompt, the two with theirs.
    assert sorted(trainer.relabels) == [1, 2, 3]
    assert sorted(r.prompt for r in trainer.relabels.values() if r.prompt) == trainer.replay.prompts[::-1]
    assert [r.good for r in trainer.relabels.values() if r.prompt] == [True, True]
    assert sum(r.prompt is None and r.good is None for r in trainer.relabels.values()) == 1
    assert trainer.replay_rewards.tolist() == pytest.approx([1.0, 1.0])

    fb1 = RoundFeedback(good=[False] * 4, best=None, source="sim", scores=[0.0, 0.0, 0.5, 0.5])
    stats = trainer.learn(1, traj, fb1, torch.Generator().manual_seed(1))
    batch, rewards = calls[1]
    assert stats["herd_replayed"] == 2 and stats["herd_relabel_feedback_total"] == 3 + 4
    assert batch.prompts[4:] == ["three blue circles on white", "one green triangle on black"]
    with torch.no_grad():  # old log-probs of the replay: the current model under the relabel prompt
        fresh = torch.stack([step_log_prob(denoiser_for(tiny_pixel_pipeline), batch, [4, 5], s)
                             for s in range(4)], dim=1)
    assert torch.allclose(batch.log_probs[4:], fresh, atol=1e-6)
    assert not torch.allclose(batch.log_probs[4:], traj.log_probs[[1, 3]], atol=1e-3)  # not the stale ones
    # Joint standardisation over [0, 0, .5, .5 | 1, 1]: mean .5, std 1/√6 per ±.5 → advantages ∓√1.5, 0, +√1.5.
    assert rewards.tolist() == pytest.approx([0.0, 0.0, 0.5, 0.5, 1.0, 1.0])
    s = math.sqrt(1.5)
    assert standardise_advantages(rewards).tolist() == pytest.approx([-s, -s, 0, 0, s, s], abs=1e-6)


def test_a_reward_source_scores_the_relabel_prompt(tiny_pixel_pipeline):
    cfg = load_config(None, FAST + ["herd.replay_fraction=1.0"], algo="herd", prompt="two red squares",
                      feedback="reward:jpeg", budget=4, images_per_round=4)
    trainer = HerdTrainer(cfg, tiny_pixel_pipeline)
    traj = rollout(tiny_pixel_pipeline, [cfg.prompt] * 4, guidance_scale=2.0, num_steps=2, seed=0)
    traj = dataclasses.replace(traj, images=_scenes())
    fb = RoundFeedback(good=[True, False, False, False], best=0, source="reward:jpeg", scores=[0.0] * 4)
    replay, rewards, examined = trainer.hindsight(0, traj, fb, torch.Generator().manual_seed(0))
    assert examined == 3 and replay.prompts == ["three blue circles on white", "one green triangle on black"]
    assert rewards.tolist() == pytest.approx(trainer._reward_judge.scores("", traj.images[[1, 3]]).tolist())


def test_herd_refuses_the_web_page(tiny_pixel_pipeline):
    cfg = load_config(None, FAST, algo="herd", prompt="two red squares", feedback="web", budget=4,
                      images_per_round=4)
    with pytest.raises(ValueError, match="web"):
        HerdTrainer(cfg, tiny_pixel_pipeline)


def test_short_run_writes_a_loadable_lora_and_resumes(tmp_path, never_ask):
    cfg = load_config(None, FAST + ["herd.replay_fraction=0.5"], algo="herd", prompt="two red squares", budget=16,
                      images_per_round=8, out=str(tmp_path / "run"))
    run = train(cfg, show_progress=False)
    m = run.metrics()
    assert [r["round"] for r in m] == [0, 1] and m[0]["herd_replayed"] == 0
    assert m[1]["herd_replayed"] == m[0]["herd_relabelled"] > 0  # round 0's relabels trained in round 1
    assert m[1]["herd_relabel_feedback_total"] == m[0]["herd_relabel_feedback"] + m[1]["herd_relabel_feedback"]
    assert all(0 < r["herd_relabel_feedback"] <= 4 for r in m)  # at most replay_fraction × 8 feedback
    # The run's feedback column charges the relabels: 8 round images each round plus every image examined.
    assert [r["feedback"] for r in m] == [8 + m[0]["herd_relabel_feedback"], 16 + m[1]["herd_relabel_feedback_total"]]
    with FeedbackLog(run.feedback_db) as log:  # the relabels are in the log itself, one row per image examined
        assert [len(log.relabels(r)) for r in (0, 1)] == [m[0]["herd_relabel_feedback"], m[1]["herd_relabel_feedback"]]
        assert all(x.prompt is None or x.good is not None for r in (0, 1) for x in log.relabels(r))
        n_lines = log.export_jsonl(tmp_path / "export.jsonl")  # what `hero export` writes: every judgement
    lines = [json.loads(x) for x in (tmp_path / "export.jsonl").read_text().splitlines()]
    assert n_lines == len(lines) == m[1]["feedback"]
    assert sum(bool(x.get("relabel")) for x in lines) == m[1]["herd_relabel_feedback_total"]
    assert_lora_loads(run)
    # Resumed after round 0's checkpoint: round 1 trains on the replay loaded from it, to the same LoRA.
    final = load_file(run.path / "lora" / "pytorch_lora_weights.safetensors")
    shutil.rmtree(run.checkpoint_dir(1))  # as if the run had stopped after round 0's checkpoint
    run.mark_checkpoint(0)
    train(cfg, resume=True, source=never_ask, show_progress=False)
    again = load_file(run.path / "lora" / "pytorch_lora_weights.safetensors")
    assert all(torch.equal(final[k], again[k]) for k in final)
    assert_resume_reproduces_lora(run, cfg, never_ask)
