"""Step 5 of the study: sample the benchmark's evaluation prompts with a recipe applied.

python jobs/unlearn.py --recipe runs/minicanvas/recipes/Neon_Glow --num_inference_steps 20 --guidance_scale 7.5
"""

from saeuron.config import parse_config
from saeuron.method.sampling import UnlearnConfig, unlearn

if __name__ == "__main__":
    unlearn(parse_config(UnlearnConfig, description=__doc__))
