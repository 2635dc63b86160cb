"""PEFT methods, one file each, behind one API.

    from minipeft.peft import apply, LoraConfig
    pm = apply(model, LoraConfig(r=8))

Every file here that defines CONFIG is a method (registry.py: the method contract); its config
class is importable from this package under its own name (LoraConfig, PrefixConfig, ...).
"""
from . import registry
from .model import PeftModel, apply, get_peft_model
from .routing import routed_sum

METHODS = registry.discover()
for _m in METHODS.values():
    globals()[_m.CONFIG.__name__] = _m.CONFIG        # LoraConfig, AdapterConfig, ...

__all__ = ["PeftModel", "apply", "get_peft_model", "routed_sum", "METHODS"]
__all__ += [m.CONFIG.__name__ for m in METHODS.values()]
