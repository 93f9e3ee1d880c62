"""Step 4 of the study: select the latents of the concepts to forget and write the recipe.

    python jobs/recipe.py --statistics runs/minicanvas/statistics/style-unet.up_blocks.1.attentions.2 \
        --concepts Neon_Glow --percentile 99 --multiplier -5
    # or steer toward the unstyled rendering (statistics gathered with --unstyled_reference true) instead of scaling:
    python jobs/recipe.py --statistics ... --concepts Checkerboard --percentile 97 --contrast max --anchor none --strength 5
    # or edit the conditional CFG half only (the guidance scale multiplies the edit there: a much smaller γ)
    python jobs/recipe.py --statistics ... --concepts Flat_Pop --percentile 99 --contrast max --multiplier -0.25 --halves cond
"""

from saeuron.config import parse_config
from saeuron.method.make_recipe import RecipeConfig, make_recipe

if __name__ == "__main__":
    make_recipe(parse_config(RecipeConfig, description=__doc__))
