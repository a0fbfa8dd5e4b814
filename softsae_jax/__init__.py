"""softsae_jax: sparse autoencoders in JAX, with SoftSAE's adaptive per-input k."""
