"""Step 2 of the study: train one sparse autoencoder per hookpoint on the collected activations
with Ray Train, and register each in the MLflow model registry.

    python jobs/train.py --config configs/minicanvas/train.yaml
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/train.py --config ...
"""

from saeuron.config import parse_config
from saeuron.training.ray_train import TrainConfig, train

if __name__ == "__main__":
    train(parse_config(TrainConfig, description=__doc__))
