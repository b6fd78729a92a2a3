"""Layer 3: neural primitives (activations, normalisation, RoPE)."""
from .activations import ACTIVATIONS, gelu_erf, gelu_tanh, geglu, relu, sigmoid, silu, swiglu
from .normalization import layer_norm, rms_norm
from .rope import apply_rope, rope_angles

__all__ = ["ACTIVATIONS", "gelu_erf", "gelu_tanh", "geglu", "relu", "sigmoid", "silu", "swiglu",
           "layer_norm", "rms_norm", "apply_rope", "rope_angles"]
