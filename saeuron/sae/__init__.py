"""Sparse autoencoders in the published SAeUron format (plain torch: no Ray, no MLflow)."""

from .config import SaeConfig
from .geometric_median import geometric_median
from .model import EncoderOutput, ForwardOutput, Sae
from .sparse import SparseCode

__all__ = ["EncoderOutput", "ForwardOutput", "Sae", "SaeConfig", "SparseCode", "geometric_median"]
