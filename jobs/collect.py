"""Step 1 of the study: run the base model over the training prompts and store the output of the
hooked blocks at every denoising step as Parquet activations.

    python jobs/collect.py --config configs/minicanvas/collect.yaml
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/collect.py --config ...
"""

from saeuron.collection.collect import CollectConfig, collect_tracked
from saeuron.config import parse_config

if __name__ == "__main__":
    collect_tracked(parse_config(CollectConfig, description=__doc__))
