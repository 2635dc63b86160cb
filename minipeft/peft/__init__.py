"""PEFT methods, one file each, behind one API (api.py).

    from minipeft.peft import apply, LoraConfig
    pm = apply(model, LoraConfig(r=8))
"""
from . import adapter, api, bitfit, full, lora, prefix, prompt
from .api import PeftModel, apply, get_peft_model, routed_sum
from .adapter import AdapterConfig
from .bitfit import BitFitConfig
from .full import FullConfig
from .lora import LoraConfig
from .prefix import PrefixConfig
from .prompt import PromptConfig

for _m in (lora, adapter, bitfit, full, prefix, prompt):
    api.METHODS[_m.CONFIG.method] = _m

__all__ = ["PeftModel", "apply", "get_peft_model", "routed_sum", "LoraConfig", "AdapterConfig", "BitFitConfig", "FullConfig",
           "PrefixConfig", "PromptConfig"]
