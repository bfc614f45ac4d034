"""How well does HERO's learned reward generalise? Held-out AUC (good vs not good) per encoder input.

    .venv/bin/hero sample --model tiny-shapes --prompt "three green triangles" --n 512 --seed 11 \
        --out runs/auc-data --judge
    .venv/bin/python benchmarks/reward_auc.py runs/auc-data --train 64,128 --splits 3

For each random split: the first ``--train`` judged images train the embedding exactly as a HERO round does
(``train_encoder``: triplets with anchor = the highest-scored training image, which the simulated human would
pick as best), and the reward r = (1 + cos(E f, E f_best))/2 of every *other* image is scored against its
verdict. AUC 0.5 = chance, 1.0 = the reward ranks every good image above every bad one. Compared: the paper's
CNN over the final latent ("latent") and the MLP over frozen UNet features ("features", HERO's default), the
latter with the reward's cosine taken on the embedding E (the paper) or on the projection g(E) the triplet
loss trains ("features, projection"; ``hero.reward_space``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hero.algorithms.hero import FeatureTripletEncoder, FeedbackMemory, TripletEncoder, hero_rewards, train_encoder
from hero.models import load_pipeline
from hero.models.features import FrozenFeatures


def auc(scores: np.ndarray, good: np.ndarray) -> float:
    """P(score of a good image > score of a bad one), ties counted half."""
    pos, neg = scores[good], scores[~good]
    return float((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())


def held_out_auc(inputs: torch.Tensor, good: np.ndarray, score: np.ndarray, make_encoder, n_train: int,
                 split: int, lr: float, epochs: int, space: str) -> float:
    order = np.random.default_rng(split).permutation(len(good))
    train, test = order[:n_train], order[n_train:]
    best = int(train[np.argmax(score[train])])
    torch.manual_seed(split)
    encoder = make_encoder()
    memory = FeedbackMemory()
    memory.add_round(inputs[train], inputs[train], good[train].tolist(), int(np.where(train == best)[0][0]))
    train_encoder(encoder, torch.optim.Adam(encoder.parameters(), lr=lr), memory, epochs=epochs, margin=0.5,
                  batch_size=2048, last_round_only=False, generator=torch.Generator().manual_seed(split))
    return auc(hero_rewards(encoder, inputs[test], inputs[best], space).numpy(), good[test])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sample_dir", help="a folder written by `hero sample --judge`")
    ap.add_argument("--model", default="tiny-shapes")
    ap.add_argument("--train", default="64,128", help="training set sizes (judged images)")
    ap.add_argument("--splits", type=int, default=3)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--epochs", type=int, default=100)
    args = ap.parse_args()
    folder = Path(args.sample_dir)
    verdicts = [json.loads(line) for line in (folder / "verdicts.jsonl").read_text().splitlines()]
    pixels = np.stack([np.asarray(Image.open(folder / "images" / v["image"]).convert("RGB")) for v in verdicts])
    latents = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1  # pixel model: latent = image
    good = np.array([v["good"] for v in verdicts])
    score = np.array([v["score"] for v in verdicts])
    phi = FrozenFeatures(load_pipeline(args.model)).batched(latents)
    phi = (phi - phi.mean(0)) / (phi.std(0) + 1e-6)
    inputs = {"latent": (latents, lambda: TripletEncoder(latents.shape[1], embed_dim=64), "embedding"),
              "features": (phi, lambda: FeatureTripletEncoder(phi.shape[1], embed_dim=64), "embedding"),
              "features, projection": (phi, lambda: FeatureTripletEncoder(phi.shape[1], embed_dim=64), "projection")}
    print(f"{len(good)} judged images, {good.mean():.3f} good")
    rows = []
    for n_train in (int(n) for n in args.train.split(",")):
        for name, (x, make, space) in inputs.items():
            aucs = [held_out_auc(x, good, score, make, n_train, s, args.lr, args.epochs, space)
                    for s in range(args.splits)]
            rows.append({"encoder_input": name, "train": n_train, "auc": [round(a, 3) for a in aucs],
                         "mean": round(float(np.mean(aucs)), 3)})
            print(f"| {name} | {n_train} | {' / '.join(f'{a:.2f}' for a in aucs)} | {np.mean(aucs):.2f} |", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
