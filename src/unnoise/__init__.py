"""unnoise: diffusion models on one mathematical core."""
