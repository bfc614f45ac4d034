"""hero: online fine-tuning of text-to-image diffusion models from human feedback."""
