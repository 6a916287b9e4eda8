"""picnn_ext: class-specific filters for CNNs and ViTs, on a fused C++/CUDA gating op.

Importing never fails because of the compiled part: where it is missing, the ops fall back to pure
PyTorch (`python -m picnn_ext.info` says what was built and why a part is missing).
"""
from . import ops
from .ops import bernoulli_gate, sample_class

__version__ = "0.1.0"
__all__ = ["ops", "bernoulli_gate", "sample_class", "__version__"]
