"""One module per algorithm, each a self-contained trainer on the shared engine."""

from __future__ import annotations

from hero.distributed import SINGLE, Dist

ALGORITHMS = {
    "hero": "HERO: feedback-guided noise + triplet-learned reward + DDPO (Hiranaka et al., ICLR 2025)",
    "ddpo": "DDPO: clipped policy gradient on per-image rewards/scores from the feedback (Black et al., 2023)",
    "d3po": "D3PO: pairwise preferences on noise-sharing pairs, per-step DPO loss, no reward model "
            "(Yang et al., CVPR 2024)",
    "dpok": "DPOK: policy gradient with a value baseline and a KL penalty to the pretrained model "
            "(Fan et al., NeurIPS 2023)",
    "seiko": "SEIKO: ridge reward on frozen UNet features with optimism (UCB, bootstrap, Thompson; greedy and "
             "non-adaptive baselines), backpropagated through the sampler with a KL to the previous round "
             "(Uehara et al., \"Feedback Efficient Online Fine-Tuning of Diffusion Models\", ICML 2024)",
    "herd": "HERD: DDPO + hindsight replay of failures relabelled with what they show, log-probs recomputed "
            "(HERD: Hindsight Experience Replay for Diffusion models; HER: Andrychowicz et al., NeurIPS 2017)",
    "raft": "RAFT: the denoising loss on every image judged good so far, pulled towards the base model "
            "(Dong et al., 'RAFT: Reward rAnked FineTuning', TMLR 2023)",
    "kto": "Diffusion-KTO (experimental: diverges at its defaults, docs/learning.md): per-image good/not-good "
           "labels, a KTO utility of the implicit reward against the base model (Li et al., 'Aligning Diffusion "
           "Models by Optimizing Human Utility', NeurIPS 2024)",
    "nft": "DiffusionNFT: the denoising loss on every judged image, good ones towards and not-good ones away, as "
           "a bounded step from the base model (Zheng et al., 'DiffusionNFT: Online Diffusion Reinforcement with "
           "Forward Process', 2025)",
}


def make_algorithm(cfg, pipe, dist: Dist = SINGLE):
    """The trainer for ``cfg.algo``; its updates average their gradients over ``dist``'s processes."""
    # Imported here, not at the top: the CLI reads ALGORITHMS for its help text, and only the chosen trainer's
    # module (diffusers, peft) needs loading. No import circle depends on it.
    if cfg.algo == "hero":
        from hero.algorithms.hero import HeroTrainer

        return HeroTrainer(cfg, pipe, dist)
    if cfg.algo == "ddpo":
        from hero.algorithms.ddpo import DDPOTrainer

        return DDPOTrainer(cfg, pipe, dist)
    if cfg.algo == "d3po":
        from hero.algorithms.d3po import D3POTrainer

        return D3POTrainer(cfg, pipe, dist)
    if cfg.algo == "dpok":
        from hero.algorithms.dpok import DPOKTrainer

        return DPOKTrainer(cfg, pipe, dist)
    if cfg.algo == "seiko":
        from hero.algorithms.seiko import SeikoTrainer

        return SeikoTrainer(cfg, pipe, dist)
    if cfg.algo == "herd":
        from hero.algorithms.herd import HerdTrainer

        return HerdTrainer(cfg, pipe, dist)
    if cfg.algo == "raft":
        from hero.algorithms.raft import RaftTrainer

        return RaftTrainer(cfg, pipe, dist)
    if cfg.algo == "kto":
        from hero.algorithms.kto import KtoTrainer

        return KtoTrainer(cfg, pipe, dist)
    if cfg.algo == "nft":
        from hero.algorithms.nft import NftTrainer

        return NftTrainer(cfg, pipe, dist)
    raise ValueError(f"algo {cfg.algo!r} is not available yet; available: {', '.join(ALGORITHMS)}")
