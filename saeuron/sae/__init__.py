"""Sparse autoencoders in the published SAeUron format (plain torch: no Ray, no MLflow)."""

from saeuron.sae.config import SaeConfig
from saeuron.sae.geometric_median import geometric_median
from saeuron.sae.model import EncoderOutput, ForwardOutput, Sae
from saeuron.sae.sparse import SparseCode

__all__ = ["EncoderOutput", "ForwardOutput", "Sae", "SaeConfig", "SparseCode", "geometric_median"]
