"""Two processes on the CPU (gloo), started by ``accelerate launch``, against one process with the same seed.

A tiny HERO run on the built-in model (2 rounds of 4 images, 3 sampler steps). Each process saves its own LoRA
weights at the end; the test asserts that
- both processes hold identical LoRA weights (every step applied the same averaged gradient),
- those weights are the one-process run's up to float rounding (the averaged gradient is the one-process one),
- the feedback log (every SQLite row but the wall-clock time) is the one-process run's, and so are the images
  shown: sampling is split by images but the noise is drawn for the whole round, so round 0 is identical bit
  for bit; later rounds follow weights equal up to rounding, so a pixel may differ by a level or two (seen: one
  value of 3072 in round 1), which leaves the judge's verdicts as they were,
- a two-process ``--resume`` from round 0's checkpoint asks for no judgement again and ends with the same weights.

Those launch processes (``slow``). The pieces they rest on are checked in-process first: shares of a round,
sharded rollouts that concatenate to the unsharded one, and the update schedule's split over processes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from peft.utils import get_peft_model_state_dict
from PIL import Image

import hero.train as train_module
from hero.config import PolicyGradientSettings, load_config
from hero.distributed import SINGLE, Dist, shard_range
from hero.policy_gradient import accumulation_schedule
from hero.rollout import Trajectories, rollout

ACCELERATE = Path(sys.executable).parent / "accelerate"
OVERRIDES = ["sampler.steps=3", "sampler.batch_size=2", "hero.encoder_epochs=3", "pg.timesteps_per_traj=2",
             "pg.batch_size=2", "pg.grad_accum=2", "hero.update=policy_gradient"]  # the data-parallel policy gradient
VALUES = dict(prompt="two red squares", algo="hero", budget=8, images_per_round=4, seed=3)

# Run by every process: train, then save this process's LoRA (the run folder has rank 0's only).
WORKER = """
import json, os, sys
import torch
from peft.utils import get_peft_model_state_dict
import hero.policy_gradient as PG
import hero.train as T
from hero.config import load_config

args = json.loads(sys.argv[1])
pipes, work = [], {"images_sampled": 0, "log_prob_passes": 0}
make, rollout, step_log_prob = T.make_algorithm, T.rollout, PG.step_log_prob


def count_rollout(pipe, prompts, **kw):
    traj = rollout(pipe, prompts, **kw)
    work["images_sampled"] += len(traj)
    return traj


def count_passes(*a, **kw):
    work["log_prob_passes"] += 1
    return step_log_prob(*a, **kw)


def capture(cfg, pipe, dist):
    pipes.append(pipe)
    work["world_size"] = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    return make(cfg, pipe, dist)


T.make_algorithm, T.rollout, PG.step_log_prob = capture, count_rollout, count_passes


class NeverAsk:
    name = "sim"

    def judge_round(self, *a, **kw):
        raise AssertionError("a judged round was asked again")

    judge_pairs = judge_round


cfg = load_config(None, args["overrides"], **args["values"])
T.train(cfg, resume=args["resume"], source=NeverAsk() if args["resume"] else None, show_progress=False)
rank = int(os.environ.get("RANK", "0"))
torch.save(get_peft_model_state_dict(pipes[0].unet), os.path.join(args["save"], f"lora_rank{rank}.pt"))
with open(os.path.join(args["save"], f"work_rank{rank}.json"), "w") as f:
    json.dump(work, f)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path: Path, out: Path, save: Path, resume: bool = False) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    save.mkdir(parents=True, exist_ok=True)
    args = json.dumps({"overrides": OVERRIDES, "values": {**VALUES, "out": str(out)}, "save": str(save),
                       "resume": resume})
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           str(script), args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": ""}  # the CPU and gloo, even on a machine with GPUs
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]


def _rows(db: Path) -> dict[str, list[tuple]]:
    with sqlite3.connect(db) as con:
        rows = {t: list(con.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3")) for t in ("judgements", "scores", "pairs")}
        rows["rounds"] = list(con.execute("SELECT round, prompt, n_images, best, source FROM rounds ORDER BY round"))
        return rows


def _images(run: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(run)): np.asarray(Image.open(p), dtype=np.int16)
            for p in sorted(run.glob("rounds/*/images/*.png"))}


def test_shares_cover_a_round_in_rank_order():
    for n in range(0, 10):
        for world in (1, 2, 3, 4):
            shares = [shard_range(n, r, world) for r in range(world)]
            assert [i for s in shares for i in s] == list(range(n))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_sharded_rollouts_concatenate_to_the_unsharded_one(tiny_sd_pipeline):
    prompts = ["a red circle", "a blue square", "big"]
    kw = dict(guidance_scale=3.0, num_steps=3, batch_size=1)
    whole = rollout(tiny_sd_pipeline, prompts, seed=5, **kw)
    parts = [rollout(tiny_sd_pipeline, prompts, seed=5, shard=(r, 2), **kw) for r in range(2)]
    assert [len(p) for p in parts] == [2, 1]
    joined = Trajectories.concat(parts)
    for name in ("start_noise", "latents", "log_probs", "prompt_embeds"):
        assert torch.equal(getattr(joined, name), getattr(whole, name)), name
    assert np.array_equal(joined.images, whole.images) and joined.prompts == prompts
    with pytest.raises(ValueError, match="empty"):
        rollout(tiny_sd_pipeline, prompts[:1], seed=5, shard=(1, 2), **kw)


def test_the_update_schedule_is_split_over_processes_with_the_same_draws():
    cfg = PolicyGradientSettings(timesteps_per_traj=3, batch_size=2, grad_accum=2)

    def schedule(dist: Dist) -> list:
        return list(accumulation_schedule(7, 5, cfg, torch.Generator().manual_seed(0), dist))

    whole = schedule(SINGLE)
    default = list(accumulation_schedule(7, 5, cfg, torch.Generator().manual_seed(0)))  # SINGLE: the default
    assert [[(mb.tolist(), s.tolist(), w) for mb, s, w in g] for g in default] == [
        [(mb.tolist(), s.tolist(), w) for mb, s, w in g] for g in whole]
    shares = [schedule(Dist(rank=r, world_size=2)) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == len(whole)  # every process takes every optimiser step
    for step, (a, b) in enumerate(zip(*shares, strict=True)):
        mine = sorted(((mb.tolist(), s.tolist(), w / 2) for mb, s, w in a + b), key=str)
        assert mine == sorted(((mb.tolist(), s.tolist(), w) for mb, s, w in whole[step]), key=str)
        assert abs(len(a) - len(b)) <= 1


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not ACCELERATE.is_file():
        pytest.skip("accelerate's launcher is not installed in this environment")
    tmp = tmp_path_factory.mktemp("mp")
    pipes = []
    make = train_module.make_algorithm
    train_module.make_algorithm = lambda cfg, pipe, dist: pipes.append(pipe) or make(cfg, pipe, dist)
    try:
        one = train_module.train(load_config(None, OVERRIDES, **VALUES, out=str(tmp / "one")), show_progress=False)
    finally:
        train_module.make_algorithm = make
    one_lora = {k: v.clone() for k, v in get_peft_model_state_dict(pipes[0].unet).items()}
    _launch(tmp, tmp / "two", tmp / "two_weights")
    return tmp, one.path, one_lora


def _load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_the_two_processes_split_the_sampling_and_the_update_passes(runs):
    tmp, _, _ = runs
    work = [json.loads((tmp / "two_weights" / f"work_rank{r}.json").read_text()) for r in (0, 1)]
    assert [w["world_size"] for w in work] == [2, 2]
    assert [w["images_sampled"] for w in work] == [4, 4]  # 2 rounds × 2 of the round's 4 images each
    # 2 rounds × 1 optimiser step × (2 minibatches × 2 timesteps): one process does 8 passes, here 4 each
    assert [w["log_prob_passes"] for w in work] == [4, 4]


@pytest.mark.slow
def test_both_processes_hold_the_same_lora_after_the_updates(runs):
    tmp, _, _ = runs
    rank0, rank1 = _load(tmp / "two_weights" / "lora_rank0.pt"), _load(tmp / "two_weights" / "lora_rank1.pt")
    assert rank0.keys() == rank1.keys() and rank0
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)


@pytest.mark.slow
def test_two_processes_learn_what_one_process_learns(runs):
    tmp, _, one = runs
    two = _load(tmp / "two_weights" / "lora_rank0.pt")
    assert two.keys() == one.keys()
    moved = max(float(one[k].abs().max()) for k in one if "lora_B" in k)  # B starts at zero
    assert moved > 0
    # The same gradients summed in another order: equal up to float rounding, not bit for bit.
    diff = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert diff <= 1e-3 * moved, (diff, moved)


@pytest.mark.slow
def test_the_feedback_log_and_the_images_are_the_one_process_runs(runs):
    tmp, one, _ = runs
    two = tmp / "two"
    assert _rows(two / "feedback.sqlite") == _rows(one / "feedback.sqlite")
    assert len(_rows(one / "feedback.sqlite")["judgements"]) == 8
    shown_one, shown_two = _images(one), _images(two)
    assert shown_two.keys() == shown_one.keys() and len(shown_one) == 8
    for name, image in shown_one.items():
        if name.startswith("rounds/round_000/"):  # the same weights: the same images, bit for bit
            assert np.array_equal(shown_two[name], image), name
        diff = np.abs(shown_two[name] - image)
        assert diff.max() <= 2 and (diff > 0).mean() < 0.01, name
    metrics = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [0, 1] and metrics[-1]["feedback"] == 8  # one line per round: rank 0's
    assert (two / "lora" / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.slow
def test_two_processes_resume_from_a_checkpoint_without_asking_again(runs):
    tmp, _, _ = runs
    run = tmp / "resumed"
    shutil.copytree(tmp / "two", run)
    shutil.rmtree(run / "checkpoints" / "round_001")  # as if the run had stopped after round 0's checkpoint
    (run / "checkpoints" / "latest").write_text("0")
    _launch(tmp, run, tmp / "resumed_weights", resume=True)  # round 1 is in the log: asking would fail
    for rank in (0, 1):
        resumed, uninterrupted = (_load(tmp / d / f"lora_rank{rank}.pt") for d in ("resumed_weights", "two_weights"))
        assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
    assert _rows(run / "feedback.sqlite") == _rows(tmp / "two" / "feedback.sqlite")
    assert [json.loads(line)["round"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1]
