"""The PEFT API in one import, for code written against its first layout (one file):
`minipeft.peft.api.PeftModel`, `api.method_of`, `api.METHODS`, `api.copy_module`, ...

The API now lives by concern: model.py (PeftModel: adapters' lifecycle, forward, merging,
counting), routing.py (which adapter acts on which sample), io.py (adapter files) and
registry.py (the methods, and the contract a method file follows).
"""
from .common import block_indices
from .io import ADAPTER_CONFIG, ADAPTER_WEIGHTS, config_from_json, config_to_json
from .model import PeftModel, apply, copy_module, get_peft_model
from .registry import METHODS, method_of
from .routing import AdapterLayer, ModulesToSave, routed_sum

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "METHODS", "AdapterLayer", "ModulesToSave", "PeftModel",
           "apply", "block_indices", "config_from_json", "config_to_json", "copy_module", "get_peft_model",
           "method_of", "routed_sum"]
