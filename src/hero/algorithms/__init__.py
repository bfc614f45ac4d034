"""One module per algorithm, each a self-contained trainer on the shared engine."""

from __future__ import annotations

ALGORITHMS = {
    "hero": "HERO: feedback-guided noise + triplet-learned reward + DDPO (Hiranaka et al., ICLR 2025)",
}


def make_algorithm(cfg, pipe):
    """The trainer for ``cfg.algo``."""
    if cfg.algo == "hero":
        from hero.algorithms.hero import HeroTrainer

        return HeroTrainer(cfg, pipe)
    raise ValueError(f"algo {cfg.algo!r} is not available yet; available: {', '.join(ALGORITHMS)}")
