"""HERD: DDPO plus hindsight experience replay of trajectories relabelled with another prompt.

The HERD seed (TRL's DDPO trainer + a memory) does, per epoch: sample a batch, score it, pick some of its
trajectories, relabel each with another prompt (a sentence of the original, multi-sentence prompt), score the
image under that prompt with the reward model, and train the *next* epoch on the new batch plus these relabelled
trajectories, advantages standardised jointly over both; the memory then holds only the newest relabels.

Here, on the shared engine, per round r:

1. **Update.** The DDPO update (``policy_gradient_update``) on round r's trajectories (rewards as in DDPO:
   graded scores, or good = 1 / 0 with ``ddpo.reward = "good"``) *plus* the replay relabelled in round r − 1,
   advantages standardised jointly over the concatenated rewards (the seed's rule). The replay's old log-probs
   are **recomputed** first, under the relabel prompt and the current model (no grad): the seed kept the
   log-probs sampled under the *original* prompt, so its PPO ratio π_θ(·|new prompt) / π_old(·|old prompt) was
   not 1 at the first step and clipping acted on the prompt change, not on the policy change. With recomputed
   ones the ratio starts at exactly 1 and clipping bounds how far this update moves the policy, as in DDPO.
   (The replay stays off-policy, as in the seed: its latents were drawn under the original prompt.)
2. **Relabel.** Of round r's images *not* judged good, up to ``herd.replay_fraction`` × images are examined and
   relabelled with the goal they did achieve (Hindsight Experience Replay: a failure at "three green triangles"
   is a success at "two blue circles on white"). The relabel prompt is a *description* of the image: in the toy
   world the judge's perception (``analyse``) captioned like the training captions, with the background; an image it
   cannot describe (a blob, a speck, off-palette pixels) is not replayed. Images the toy world cannot describe
   (a real model's) fall back to the seed's rule: a random sentence of a multi-sentence prompt. Unlike the seed
   (any sample, drawn with replacement) only failures are relabelled: a good image is already a success for the
   round's own prompt.
3. **Judge the relabel.** The relabel reward is a *new judgement* of the image for the relabel prompt by the
   run's kind of source: the simulated human for the described task (with the run's hidden preference and
   forbidden colour: the person still wants them), or the reward model scoring the image with the new prompt.

Feedback accounting. One image judged = one feedback, and a description or a judgement for a new prompt is a new
look at an image, not something the round's good/best marks already said. So every image examined for a relabel
(described, or found indescribable) costs one feedback: ``herd_relabel_feedback`` in each round's metrics and
``herd_relabel_feedback_total`` over the run, and the run's per-round ``feedback`` column (which ``hero bench``
plots against) counts them too: the feedback log's round images plus the relabels. ``budget`` caps only the
round images, so at equal spend HERD runs with a lower ``budget``. The web page asks a person only for good/best
marks, never a description, so ``--algo herd`` refuses ``--feedback web``. Relabel judgements come from
automatic sources; the round loop writes each examined image (its relabel prompt, or none, and its judgement)
into the feedback log's ``relabels`` table before the round's checkpoint, so the log's ``n_feedback`` counts
them, and the checkpoint keeps the replay and its rewards: a run resumed from a checkpoint asks none again.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from hero.algorithms.base import LoraPolicy
from hero.algorithms.ddpo import ddpo_rewards
from hero.config import parse_feedback
from hero.distributed import SINGLE, Dist
from hero.feedback.base import RoundFeedback
from hero.feedback.sources import make_feedback_source
from hero.models.denoiser import Denoiser
from hero.models.families import as_denoiser
from hero.policy_gradient import policy_gradient_update
from hero.rollout import Trajectories, step_log_prob
from hero.runs.feedback_log import Relabel
from hero.toyworld.judge import analyse
from hero.toyworld.scenes import caption

__all__ = ["HerdTrainer", "describe", "recompute_log_probs", "relabel", "relabel_prompt"]


def describe(image: np.ndarray) -> str | None:
    """What a toy-world image shows, as a prompt ("two blue circles on white"), or None if it is not describable.

    Groups are (colour, shape) in reading order; an image that is not well formed or shows more than 4 shapes has
    no caption the toy world's grammar (and the simulated human) accepts.
    """
    seen = analyse(image)
    if not seen.well_formed or not 1 <= len(seen.objects) <= 4:
        return None
    counts: dict[tuple[str, str], int] = {}
    for o in seen.objects:
        counts[(o.colour, o.shape)] = counts.get((o.colour, o.shape), 0) + 1
    return caption([(n, colour, shape) for (colour, shape), n in counts.items()], seen.background)


def relabel_prompt(image: np.ndarray, prompt: str, generator: torch.Generator) -> str | None:
    """The hindsight prompt of one image: its description, else (the seed's rule) a sentence of the prompt."""
    described = describe(image)
    if described is not None:
        return described
    sentences = [s.strip() for s in prompt.split(".") if s.strip()]
    if len(sentences) < 2:
        return None
    return sentences[int(torch.randint(len(sentences), (1,), generator=generator))]


def relabel(model: Denoiser, traj: Trajectories, prompts: list[str]) -> Trajectories:
    """The same denoising trajectories under new prompts: their embeddings encoded as the rollout encodes them.

    The log-probs become NaN: those sampled under the old prompt are stale for the new one, and a NaN cannot be
    used by mistake (``recompute_log_probs`` fills them in when the replay is trained on).
    """
    if len(prompts) != len(traj):
        raise ValueError(f"{len(prompts)} prompts for {len(traj)} trajectories")
    cond, _ = as_denoiser(model).encode(prompts)
    return dataclasses.replace(traj, prompts=list(prompts), log_probs=torch.full_like(traj.log_probs, float("nan")),
                               prompt_embeds=cond.to(device=traj.prompt_embeds.device,
                                                     dtype=traj.prompt_embeds.dtype))


@torch.no_grad()
def recompute_log_probs(model: Denoiser, traj: Trajectories, batch_size: int = 8) -> torch.Tensor:
    """(N, T) log-probs of every stored transition under the trajectories' (new) prompts and the current weights.

    The same code path as the rollout's (``step_log_prob``), so for the prompt the trajectory was sampled with
    and unchanged weights this reproduces the sampler's own log-probs.
    """
    model, out = as_denoiser(model), torch.empty(traj.log_probs.shape, dtype=torch.float32)
    for lo in range(0, len(traj), batch_size):
        idx = torch.arange(lo, min(lo + batch_size, len(traj)))
        for s in range(traj.num_steps):
            out[idx, s] = step_log_prob(model, traj, idx, s).float().cpu()
    return out.to(traj.log_probs.device)


class HerdTrainer:
    """DDPO on each round plus, in the next round's update, hindsight-relabelled replays of its failures."""

    name = "herd"

    def __init__(self, cfg, pipe, dist: Dist = SINGLE):
        if parse_feedback(cfg.feedback)[0] == "web":
            raise ValueError("--algo herd judges each replayed image again for its relabel prompt, which the web "
                             "page cannot ask a person: use --feedback sim or reward:<name>")
        self.cfg = cfg
        self.use_scores = cfg.ddpo.reward == "score"
        self.policy = LoraPolicy(cfg, pipe, dist=dist)
        self.model = self.policy.model  # the round loop samples with it
        self.best_image: np.ndarray | None = None
        self.replay: Trajectories | None = None  # round r − 1's relabelled trajectories (log-probs: NaN)
        self.replay_rewards: torch.Tensor | None = None
        self.relabel_feedback_total = 0
        self.relabels: dict[int, Relabel] = {}  # the last learn()'s, by image: the round loop logs them
        self._reward_judge = None  # one reward-model source, loaded on first use, scores any prompt

    def start_noise(self, round_index: int, n: int, generator: torch.Generator) -> torch.Tensor | None:
        return None  # plain N(0, I) every round, as in DDPO

    def current_best_image(self) -> np.ndarray | None:
        return self.best_image  # shown beside the round only; HERD does not use the best pick

    def learn(self, round_index: int, traj: Trajectories, feedback: RoundFeedback,
              generator: torch.Generator) -> dict[str, float]:
        t0 = time.perf_counter()
        if feedback.best is not None:
            self.best_image = traj.images[feedback.best]
        rewards = ddpo_rewards(feedback, self.use_scores)
        batch, all_rewards, n_replay = traj, rewards, 0
        if self.replay is not None:
            replay = dataclasses.replace(self.replay, log_probs=recompute_log_probs(
                self.model, self.replay, self.cfg.sampler.batch_size))
            batch = Trajectories.concat([traj.to("cpu"), replay.to("cpu")])
            all_rewards, n_replay = torch.cat([rewards, self.replay_rewards]), len(replay)
        t1 = time.perf_counter()
        stats = policy_gradient_update(self.model, batch, all_rewards, self.policy.optimizer, self.policy.pg,
                                       generator, dist=self.policy.dist)
        t2 = time.perf_counter()
        self.replay, self.replay_rewards, examined = self.hindsight(round_index, traj, feedback, generator)
        self.relabel_feedback_total += examined
        t3 = time.perf_counter()
        replay_mean = {"herd_replay_reward_mean": float(all_rewards[len(rewards):].mean())} if n_replay else {}
        return {**{f"pg_{k}": v for k, v in stats.items()}, "reward_std": float(rewards.std(unbiased=False)),
                "herd_replayed": n_replay, **replay_mean,
                "herd_relabelled": 0 if self.replay is None else len(self.replay), "herd_relabel_feedback": examined,
                "herd_relabel_feedback_total": self.relabel_feedback_total,
                "seconds_representation": (t1 - t0) + (t3 - t2), "seconds_update": t2 - t1}

    def hindsight(self, round_index: int, traj: Trajectories, feedback: RoundFeedback,
                  generator: torch.Generator) -> tuple[Trajectories | None, torch.Tensor | None, int]:
        """Examine up to replay_fraction × N of the round's failures (the feedback it costs is bounded), relabel
        those that have a hindsight prompt and judge them for it; return (replay or None, rewards, images examined)."""
        want = int(round(self.cfg.herd.replay_fraction * len(traj)))
        chosen: list[tuple[int, str]] = []
        examined, self.relabels = 0, {}
        for i in torch.randperm(len(traj), generator=generator).tolist():
            if examined == want:
                break
            if feedback.good[i]:
                continue  # already trained on as a success for the round's own prompt
            examined += 1  # a look at the image: one feedback, described or not
            prompt = relabel_prompt(traj.images[i], self.cfg.prompt, generator)
            if prompt is not None and prompt != self.cfg.prompt:
                chosen.append((i, prompt))
            else:  # looked at and not described: still one feedback, so still in the log
                self.relabels[i] = Relabel(i, None, None, None, self.cfg.feedback)
        if not chosen:
            return None, None, examined
        idx, prompts = [i for i, _ in sorted(chosen)], [p for _, p in sorted(chosen)]
        rewards = torch.zeros(len(idx), dtype=torch.float32)
        for j, prompt in enumerate(dict.fromkeys(prompts)):  # one judgement call per distinct relabel prompt
            rows = [k for k, p in enumerate(prompts) if p == prompt]
            images = traj.images[[idx[k] for k in rows]]
            judged = self._judge(round_index, j, prompt).judge_round(round_index, prompt, images, None)
            rewards[rows] = ddpo_rewards(judged, self.use_scores)
            for n, k in enumerate(rows):
                self.relabels[idx[k]] = Relabel(idx[k], prompt, judged.good[n],
                                                None if judged.scores is None else judged.scores[n], judged.source)
        return relabel(self.model, traj.to("cpu").subset(idx), prompts), rewards, examined

    def _judge(self, round_index: int, j: int, prompt: str):
        """The run's kind of source, asked about ``prompt``: a simulated human for that task, or the reward model."""
        cfg = self.cfg
        if parse_feedback(cfg.feedback)[0] == "reward":
            if self._reward_judge is None:
                self._reward_judge = make_feedback_source(cfg.feedback, cfg.prompt, cfg.seed, cfg.task_options(),
                                                          cfg.reward_options())
            return self._reward_judge
        # Its own seed per (round, prompt): a noisy person's flips are independent draws, and a resume repeats them.
        seed = cfg.seed * 1_000_003 + round_index * 101 + 50 + j
        return make_feedback_source(cfg.feedback, prompt, seed, cfg.task_options())

    def save(self, folder: Path) -> None:
        replay = None if self.replay is None else {f.name: getattr(self.replay, f.name)
                                                    for f in dataclasses.fields(self.replay)}
        self.policy.save(folder, {"best_image": self.best_image, "replay": replay,
                                  "replay_rewards": self.replay_rewards,
                                  "relabel_feedback_total": self.relabel_feedback_total})

    def load(self, folder: Path) -> None:
        state = self.policy.load(folder)
        self.best_image = state["best_image"]
        self.replay = None if state["replay"] is None else Trajectories(**state["replay"])
        self.replay_rewards = state["replay_rewards"]
        self.relabel_feedback_total = state["relabel_feedback_total"]
