"""Adversarial evaluation: UnlearnDiffAtk against an unlearned model, the original model and the baselines, one
Ray task per (variant, concept, target image); scores, adversarial prompts and before/after pairs to MLflow.

    python jobs/attack.py --recipe runs/minicanvas/recipes/Neon_Glow --indices 0 1 \
        --variants original sae sae_blocked --num_inference_steps 20 --guidance_scale 7.5
"""

from saeuron.attack.job import AttackConfig, attack
from saeuron.config import parse_config

if __name__ == "__main__":
    attack(parse_config(AttackConfig, description=__doc__))
