"""zflora: zero-latency fused low-rank adapters (zFLoRA) for transformers causal LMs.

    import zflora
    zm = zflora.get_zflora_model(model, zflora.ZFLoRAConfig(r=16, blocks=("attn", "mlp")))
    ...train zm like any HF model...
    zm.save_adapter("adapters/math")
    fused = zm.fuse()                             # same class, hidden size d + r, no extra kernels
    zflora.swap_adapter(fused, "adapters/chat")   # switch tasks in place

Names are imported on first use, so `import zflora.data` (task registry) or the CLI's
help do not pay for importing torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import ZFLoRAError

__version__ = "0.1.0"

_EXPORTS = {
    "AdapterWeights": ".adapter_file",
    "read_adapter": ".adapter_file",
    "SUPPORTED_ARCHITECTURES": ".architectures",
    "ZFLoRAConfig": ".config",
    "fused_width": ".fusion",
    "swap_adapter": ".fusion",
    "ZFLoRAModel": ".model",
    "get_zflora_model": ".model",
}

__all__ = [
    "AdapterWeights",
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


if TYPE_CHECKING:  # for type checkers and IDEs
    from .adapter_file import AdapterWeights, read_adapter
    from .architectures import SUPPORTED as SUPPORTED_ARCHITECTURES
    from .config import ZFLoRAConfig
    from .fusion import fused_width, swap_adapter
    from .model import ZFLoRAModel, get_zflora_model
