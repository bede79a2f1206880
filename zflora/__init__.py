"""zflora: zero-latency fused low-rank adapters (zFLoRA) for transformers causal LMs.

    import zflora
    zm = zflora.get_zflora_model(model, zflora.ZFLoRAConfig(r=16, blocks=("attn", "mlp")))
    ...train zm like any HF model...
    zm.save_adapter("adapters/math")
    fused = zm.fuse()                             # same class, hidden size d + r, no extra kernels
    zflora.swap_adapter(fused, "adapters/chat")   # switch tasks in place

Names are imported on first use, so `import zflora.harness.data` (task registry) or the CLI's
help do not pay for importing torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

from zflora.errors import ZFLoRAError

__version__ = "0.1.0"

_EXPORTS = {
    "AdapterWeights": ".method.adapter_file",
    "read_adapter": ".method.adapter_file",
    "SUPPORTED_ARCHITECTURES": ".method.architectures",
    "ZFLoRAConfig": ".method.config",
    "fused_width": ".method.fusion",
    "swap_adapter": ".method.fusion",
    "ZFLoRAModel": ".method.model",
    "MultiTaskModel": ".method.multitask",
    "get_zflora_model": ".method.model",
}

__all__ = [
    "AdapterWeights",
    "MultiTaskModel",
    "SUPPORTED_ARCHITECTURES",
    "ZFLoRAConfig",
    "ZFLoRAError",
    "ZFLoRAModel",
    "fused_width",
    "get_zflora_model",
    "read_adapter",
    "swap_adapter",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(_EXPORTS[name], __name__)
        value = getattr(module, "SUPPORTED" if name == "SUPPORTED_ARCHITECTURES" else name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'zflora' has no attribute {name!r}")
