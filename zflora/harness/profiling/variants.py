"""The models the profiler compares, built once on the same base weights.

    vs = build_variants(ProfileSettings(preset="tiny"), torch.device("cpu"), torch.float32)
    vs.models["zflora-fused"](input_ids=ids).logits

- base: the plain model.
- lora: HF PEFT LoRA on q,k,v,o,gate,up,down with rank r, unmerged (two adapters, the first active).
- lora-merged: the same LoRA merged into a private copy of the adapted weights; the timed
  model is a plain transformers model over those weights (what merge_and_unload gives),
  and a PEFT model over the same tensors serves the merged-adapter switch.
- zflora: ZFLoRAModel, the training form (two adapters, the first active).
- zflora-fused: ZFLoRAModel.fuse('task1'): a standard model of hidden size d + w.
- zflora-fused-padM: the same, its width padded up to a multiple of M.

Models that do not change weights share the base's parameter tensors (no copy): a
1B-shape model then costs its weights once, plus a copy of the LoRA-merged layers and
the widened fused model. Every adapter matrix is random and non-zero (PEFT's LoRA B and
zFLoRA's writers start at zero) so no variant can skip work. No parameter of a timed
model requires grad (the same inference state for all: see the end of build_variants).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from zflora.errors import ZFLoRAError
from zflora.harness.methods import AdapterSettings, lora_config, lora_target_modules
from zflora.harness.profiling.settings import PRESETS, ProfileSettings
from zflora.method.adapter_file import AdapterWeights
from zflora.method.architectures import layout_for
from zflora.method.config import ZFLoRAConfig
from zflora.method.fusion import fuse_adapter, fused_width
from zflora.method.loading import load_causal_lm
from zflora.method.model import ZFLoRAModel, get_zflora_model

INIT_STD = 0.02
ADAPTERS = ("task1", "task2")  # PEFT warns about names inside its "lora_" prefix


@dataclass
class VariantSet:
    """The timed models (by variant name) and the objects the switch benchmark needs."""

    base: nn.Module
    models: dict[str, nn.Module] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)
    peft_unmerged: Any = None
    peft_merged: Any = None
    zflora: ZFLoRAModel | None = None
    fused: nn.Module | None = None
    adapters: dict[str, AdapterWeights] = field(default_factory=dict)
    widths: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, model: nn.Module, description: str) -> None:
        model.eval()
        self.models[name] = model
        self.descriptions[name] = description


def randomize_(model: nn.Module, seed: int, std: float = INIT_STD) -> nn.Module:
    """Fill a model's weights in place: matrices N(0, std), 1-d weights (norms) 1, biases 0."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                param.normal_(0.0, std, generator=generator)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.fill_(1.0)
    return model


@torch.no_grad()
def in_process_memory(model: nn.Module) -> nn.Module:
    """Copy every parameter into memory of this process, in place (tied parameters stay tied).

    from_pretrained leaves CPU weights in a private mapping of the safetensors file; every
    variant built by copying (merged LoRA's layers, the fused model) lives in ordinary
    allocations. On SmolLM2-135M (decode b=4, 1 thread; benchmarks/base_memory.py) the mapped
    base ran 5 % slower than the same weights copied, so the base is copied too and all
    variants read the same kind of memory.
    """
    for param in model.parameters():  # a tied weight is one Parameter: copied once
        param.data = param.data.clone()
    return model


def build_base_model(settings: ProfileSettings, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The base causal LM: a preset with random weights (fast: no init pass), or a local directory."""
    if settings.model is not None:
        model, _ = load_causal_lm(settings.model, dtype=dtype, device=device, with_tokenizer=False)
        layout_for(model)  # an unsupported architecture fails here, naming the supported ones
        return (in_process_memory(model) if device.type == "cpu" else model).eval()
    from transformers import LlamaForCausalLM
    from transformers.initialization import no_init_weights

    config = PRESETS[settings.preset].config(settings.layers)
    with no_init_weights(), torch.device(device):  # skip transformers' slow init: values are set below
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    model.tie_weights()  # no_init_weights also skips tying
    randomize_(model, settings.seed)
    return model.eval()


def share_weights(model: nn.Module, clone: set[str] = frozenset()) -> nn.Module:
    """A second module tree over the same parameter tensors, except those named in `clone` (copied).

    Wrapping the copy (PEFT, zFLoRA) leaves `model` untouched; small buffers (rotary
    frequencies) are copied.
    """
    memo: dict[int, Any] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if name not in clone:
            memo[id(param)] = param
    return copy.deepcopy(model, memo)


def _lora_model(model: nn.Module, r: int) -> Any:
    """PEFT LoRA with two adapters (the first active), adapter weights in the base dtype.

    PEFT keeps adapters of a bf16/fp16 model in float32 by default (autocast_adapter_dtype)
    and casts activations around every LoRA product; zFLoRA's adapters use the base dtype,
    so LoRA does too here: the comparison is of the methods, not of a dtype choice.
    """
    from peft import get_peft_model

    config = lora_config(AdapterSettings(r=r), model, inference_mode=True)  # alpha 2r, as trained
    with warnings.catch_warnings():  # PEFT calls a transformers API deprecated in v5: not our users' concern
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(model, config, adapter_name=ADAPTERS[0], autocast_adapter_dtype=False)
        peft_model.add_adapter(ADAPTERS[1], config, autocast_adapter_dtype=False)
    peft_model.set_adapter(ADAPTERS[0])
    return peft_model.eval()


def _lora_state(peft_model: Any) -> dict[str, torch.Tensor]:
    return {name: param for name, param in peft_model.named_parameters() if ".lora_" in name}


def _target_weight_names(model: nn.Module) -> set[str]:
    targets = set(lora_target_modules(model))
    return {
        f"{name}.weight"
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets
    }


@torch.no_grad()
def build_variants(
    settings: ProfileSettings, device: torch.device, dtype: torch.dtype, base: nn.Module | None = None
) -> VariantSet:
    """Build every variant of `settings.variants` (plus padded fused ones) on one base model."""
    base = base if base is not None else build_base_model(settings, device, dtype)
    wanted = set(settings.variants)
    vs = VariantSet(base=base)
    d = base.config.hidden_size
    vs.add("base", base, f"the base model (hidden size {d})")
    seed = settings.seed + 1000

    lora_values: dict[str, torch.Tensor] | None = None
    if wanted & {"lora", "lora-merged"}:
        unmerged = _lora_model(share_weights(base), settings.r)
        lora_values = _lora_state(unmerged)
        generator = torch.Generator(device=device).manual_seed(seed)
        for param in lora_values.values():  # B starts at zero in PEFT: make both A and B non-zero
            param.normal_(0.0, INIT_STD, generator=generator)
        if "lora" in wanted:
            vs.peft_unmerged = unmerged
            vs.add(
                "lora",
                unmerged,
                f"HF PEFT LoRA r={settings.r} on {','.join(lora_target_modules(base))}, unmerged",
            )
    if "lora-merged" in wanted:
        plain = share_weights(base, clone=_target_weight_names(base))  # merging writes these weights
        merged = _lora_model(share_weights(plain), settings.r)
        targets = _lora_state(merged)
        for name, value in lora_values.items():
            targets[name].copy_(value)
        merged.merge_adapter()  # in place into `plain`'s tensors (shared with `merged`)
        vs.peft_merged = merged
        vs.add("lora-merged", plain, f"the same LoRA merged into the weights (plain model, r={settings.r})")
    if "lora" not in wanted:
        del lora_values

    if wanted & {"zflora", "zflora-fused"}:
        zm = get_zflora_model(share_weights(base), ZFLoRAConfig(r=settings.r, seed=seed), ADAPTERS[0])
        zm.add_adapter(ADAPTERS[1], ZFLoRAConfig(r=settings.r, seed=seed + 1))
        generator = torch.Generator(device=device).manual_seed(seed + 2)
        for name in ADAPTERS:  # zFLoRA writers start at zero: make every matrix non-zero
            for param in zm.adapter_state_dict(name).values():
                param.normal_(0.0, INIT_STD, generator=generator)
        zm.set_adapter(ADAPTERS[0])
        zm.eval()
        vs.zflora = zm
        vs.adapters = {name: zm.adapter_weights(name) for name in ADAPTERS}
        if "zflora" in wanted:
            vs.add("zflora", zm, f"zFLoRA r={settings.r}, training form (unfused ZFLoRAModel)")
        if "zflora-fused" in wanted:
            width = fused_width(base.config, settings.r)
            vs.fused = zm.fuse(ADAPTERS[0])
            vs.widths["zflora-fused"] = width
            vs.add("zflora-fused", vs.fused, f"zFLoRA fused: standard model of hidden size {d}+{width}")
            for multiple in settings.pad_multiples:
                padded = fused_width(base.config, settings.r, multiple)
                if padded in vs.widths.values():
                    continue  # the same model as one already built
                name = f"zflora-fused-pad{multiple}"
                vs.widths[name] = padded
                vs.add(
                    name,
                    fuse_adapter(zm, ADAPTERS[0], multiple=multiple),
                    f"zFLoRA fused, width padded to a multiple of {multiple}: hidden size {d}+{padded}",
                )
    # Inference state, the same for every timed model: no parameter requires grad. PEFT and
    # ZFLoRAModel freeze the base parameters they wrap (shared with the base), while a freshly
    # built fused model's require grad; torch.matmul folds the LM head's non-contiguous
    # (b, 1, d) input (the last-position slice of logits_to_keep=1 at b > 1) into one GEMM only
    # when the weight requires grad, else it runs b GEMVs: at SmolLM2-135M, b=4, the frozen
    # head took 40 ms against 17 ms (benchmarks/base_memory.py), a bias unrelated to zFLoRA.
    for model in vs.models.values():
        model.requires_grad_(False)
    return vs


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the distinct tensors (parameters and buffers) a model holds; shared storage counts once."""
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total


def check_device(device: str) -> torch.device:
    """The torch device for `device`, or a ZFLoRAError when CUDA is asked for but missing."""
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ZFLoRAError(f"device {device!r} asked for, but torch sees no CUDA GPU; use --device cpu")
    return resolved
