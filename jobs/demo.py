"""Demo of what exists so far: collect block activations from the embedded pipeline and train
an SAE on them, printing its metrics.

    python jobs/demo.py [--config demo.yaml] [--train_steps 300] [--hookpoint unet.up_blocks.1.attentions.2]
"""

from saeuron.config import parse_config
from saeuron.demo import DemoConfig, run_demo

if __name__ == "__main__":
    run_demo(parse_config(DemoConfig, description=__doc__))
