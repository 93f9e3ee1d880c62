"""Step 3 of the study: run each concept's prompts through the pipeline with the hookpoint's SAE
and store the per-concept, per-timestep mean latent activations (safetensors + JSON).

    python jobs/gather.py --sae models:/saeuron-minicanvas-unet.up_blocks.1.attentions.2@current \
        --hookpoint unet.up_blocks.1.attentions.2 --kind style --num_inference_steps 20
"""

from saeuron.config import parse_config
from saeuron.method.gather import GatherConfig, gather_tracked

if __name__ == "__main__":
    gather_tracked(parse_config(GatherConfig, description=__doc__))
