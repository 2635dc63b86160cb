"""minipeft: parameter-efficient fine-tuning built from scratch, for learning.

    import minipeft
    minipeft.use("numpy")          # or "cupy" (GPU) or "auto"
    x = minipeft.tensor([[1.0, 2.0]], requires_grad=True)
"""
from . import backend
from .backend import use, manual_seed, to_numpy, to_device
from .autograd import Tensor, Function, tensor, no_grad, is_grad_enabled
from . import ops

__version__ = "0.1.0"
__all__ = ["backend", "use", "manual_seed", "to_numpy", "to_device", "Tensor", "Function", "tensor",
           "no_grad", "is_grad_enabled", "ops"]
