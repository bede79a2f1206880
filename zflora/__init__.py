"""zflora: zero-latency fused low-rank adapters (zFLoRA) for transformers causal LMs.

import zflora
zm = zflora.get_zflora_model(model, zflora.ZFLoRAConfig(r=16, blocks=("attn", "mlp")))
...train zm like any HF model...
zm.save_adapter("adapters/math")
fused = zm.fuse()                       # same class, hidden size d + r, no extra kernels
zflora.swap_adapter(fused, "adapters/chat")   # switch tasks in place
"""

from .adapter_file import AdapterWeights, read_adapter
from .architectures import SUPPORTED as SUPPORTED_ARCHITECTURES
from .config import ZFLoRAConfig
from .errors import ZFLoRAError
from .fusion import fused_width, swap_adapter
from .model import ZFLoRAModel, get_zflora_model

__version__ = "0.1.0"

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
