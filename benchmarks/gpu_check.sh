#!/usr/bin/env bash
# The GPU check of the model families (issue 18), prepared to fit in 8 minutes of one H100/H200:
#
#   bash benchmarks/gpu_check.sh [OUT]
#
# Runs `hero bench compute` on the GPU with random weights at each family's native resolution: the built-in
# tiny-shapes (CPU), the SD 1.5 architecture at 512 px (8 images per timing), the SDXL base architecture,
# SD 3.5 Medium's (without T5-XXL) and FLUX.1-dev's (its T5 cut to 2 layers) at 1024 px (4 images each), in bf16. Per family it writes, to OUT/compute.json (default runs/gpu-check):
# rollout images/s with per-step log-probs beside the plain diffusers pipeline's, one policy-gradient update's
# steps/s (LoRA rank 8, 5 timesteps per trajectory), the achieved TFLOP/s and its fraction of the GPU's bf16
# peak, and the peak GPU memory. A HERO round of N images costs about N / (rollout images/s) to sample plus its
# update steps / (update steps/s); the embedding net's training is small beside both (docs/speed.md).
set -euo pipefail
out=${1:-runs/gpu-check}
hero=${HERO:-.venv/bin/hero}
timeout 480 "$hero" bench compute --sd15 --sdxl --sd35 --flux --device cuda --steps 20 --repeats 2 --out "$out"
