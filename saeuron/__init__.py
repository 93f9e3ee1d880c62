"""saeuron: concept unlearning in diffusion models with sparse autoencoders."""
