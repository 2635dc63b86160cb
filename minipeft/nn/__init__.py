"""Neural-network modules: the Module bookkeeping, basic layers and the Transformer."""
from .module import Module, ModuleDict, ModuleList, Parameter
from .layers import Dropout, Embedding, LayerNorm, Linear
from .transformer import MLP, Block, SelfAttention, Transformer, TransformerConfig

__all__ = ["Module", "ModuleDict", "ModuleList", "Parameter", "Dropout", "Embedding", "LayerNorm", "Linear", "MLP",
           "Block", "SelfAttention", "Transformer", "TransformerConfig"]
