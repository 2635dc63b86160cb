"""PEFT methods, one file each, behind one API (api.py).

    from minipeft.peft import apply, LoraConfig
    pm = apply(model, LoraConfig(r=8))
"""
from . import api, lora
from .api import PeftModel, apply, get_peft_model, routed_sum
from .lora import LoraConfig

for _m in (lora,):
    api.METHODS[_m.CONFIG.method] = _m

__all__ = ["PeftModel", "apply", "get_peft_model", "routed_sum", "LoraConfig"]
