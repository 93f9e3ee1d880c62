"""The feature atlas: one page per latent of a recipe (or a list) — its top images with activation bands and patch
maps, its activation per timestep against the other concepts with the recipe's thresholds, its specificity, and
the same seeds sampled with it ablated and amplified — plus an index sorted by specificity.

    python jobs/atlas.py --recipe runs/minicanvas/recipes/Neon_Glow --grid.seeds 188 --num_inference_steps 10 --guidance_scale 7.5
"""

from saeuron.atlas.job import AtlasConfig, atlas_tracked
from saeuron.config import parse_config

if __name__ == "__main__":
    atlas_tracked(parse_config(AtlasConfig, description=__doc__))
