"""The feature atlas: what each latent draws, when it fires, and what removing it does."""
