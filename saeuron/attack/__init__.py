"""Adversarial evaluation of unlearned models: UnlearnDiffAtk, its Ray job and its scores."""
