"""Export a checkpoint (fused or not) as one GGUF file that llama.cpp and transformers read.

    summary = export_gguf("models/fused-math", "fused-math.gguf", tensor_type="f16")

The fused model has head_dim != hidden_size / heads, so export writes the head size
explicitly: `attention.key_length` / `value_length` (read by llama.cpp) and
`rope.dimension_count` (read as head_dim by transformers' loader). The tokenizer is the
source GGUF's (sidecar) or a converted one (`zflora.method.gguf.tokenizer`).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zflora.errors import ZFLoRAError
from zflora.method.atomic import atomic_path
from zflora.method.gguf.sidecar import SIDECAR, read_sidecar, sidecar_tokens, write_fields
from zflora.method.gguf.tokenizer import write_converted_tokenizer

# model types zflora writes as GGUF, and the llama.cpp architecture each is written as
EXPORT_ARCHITECTURES = {"llama": "llama", "mistral": "llama"}
# matrix storage: f16 / f32 everywhere; q8_0 where a row is whole 32-value blocks (else f16); source: each
# tensor in the type the source GGUF stored it in, where the (widened) row is whole blocks (else f16)
TENSOR_TYPES = ("f16", "f32", "q8_0", "source")
F16_MAX = 65504.0


def _permute_qk(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's q/k row order (rotary halves interleaved per head); transformers' loader undoes it."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def _check_exportable(config: Any, where: str) -> str:
    """The llama.cpp architecture to write, or ZFLoRAError saying what GGUF cannot express."""
    model_type = getattr(config, "model_type", None)
    if model_type not in EXPORT_ARCHITECTURES:
        raise ZFLoRAError(
            f"{where}: model_type {model_type!r} cannot be exported as GGUF by zflora; "
            f"supported: {', '.join(EXPORT_ARCHITECTURES)}"
        )
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ZFLoRAError(
            f"{where}: projection biases (attention_bias / mlp_bias) have no place in a llama GGUF"
        )
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in (None, "default"):
        raise ZFLoRAError(
            f"{where}: rope scaling {rope_type!r} is not written by zflora's GGUF export (only plain RoPE)"
        )
    window = getattr(config, "sliding_window", None)
    if model_type == "mistral" and window is not None and window < config.max_position_embeddings:
        raise ZFLoRAError(
            f"{where}: sliding-window attention ({window} < context {config.max_position_embeddings}) "
            "cannot be expressed in a llama GGUF"
        )
    return EXPORT_ARCHITECTURES[model_type]


def _rope_theta(config: Any) -> float:
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and "rope_theta" in rope:
        return float(rope["rope_theta"])
    return float(getattr(config, "rope_theta", 10000.0))


def _encode_matrix(array: Any, mode: str, source_type: str | None, label: str) -> tuple[Any, Any]:
    """(data, GGML type) of one matrix in export mode `mode`; see TENSOR_TYPES."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    wanted = {"f32": Q.F32, "f16": Q.F16, "q8_0": Q.Q8_0}.get(mode)
    if mode == "source":
        wanted = Q[source_type] if source_type in Q.__members__ else Q.F16
        if wanted == Q.BF16:
            wanted = Q.F16
    if wanted not in (Q.F32, Q.F16):
        block = gguf.GGML_QUANT_SIZES[wanted][0]
        if array.shape[-1] % block == 0:
            try:
                return gguf.quants.quantize(array, wanted), wanted
            except NotImplementedError:  # a type gguf-py can read but not write (i-quants...)
                pass
        wanted = Q.F16  # the widened row is not whole blocks
    if wanted == Q.F16:
        peak = float(np.abs(array).max()) if array.size else 0.0
        if not peak <= F16_MAX:
            raise ZFLoRAError(f"{label} holds {peak:g}, beyond float16's range; export with --dtype f32")
        return array.astype(np.float16), Q.F16
    return array, Q.F32


def _describe_types(mode: str, tensors: list[tuple[str, Any, Any]]) -> str:
    """float16 / float32 for a uniform export, else the matrix types with counts (Q8_0 x14, F16 x6)."""
    if mode in ("f16", "f32"):
        return {"f16": "float16", "f32": "float32"}[mode]
    counts = Counter(qtype.name for _, data, qtype in tensors if data.ndim >= 2)
    return ", ".join(f"{name} x{count}" for name, count in counts.most_common())


# which side of each weight runs along the residual stream (padded by export_gguf's pad_multiple)
_STREAM_INPUT = ("embed_tokens", "q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "lm_head")
_STREAM_OUTPUT = ("o_proj", "down_proj")


def _pad_stream(hf_name: str, weight: torch.Tensor, hidden: int, width: int) -> torch.Tensor:
    """`weight` for a residual stream of `width` channels instead of `hidden`: zero rows or
    columns for the new channels, and RMSNorm gains scaled by sqrt(hidden / width) so that the
    norm over the zero-padded stream gives the same output (eps is scaled in the header)."""
    if width == hidden:
        return weight
    module = hf_name.rpartition(".")[0].rpartition(".")[2]
    if weight.dim() == 1:  # an RMSNorm gain
        return torch.cat([weight * math.sqrt(hidden / width), weight.new_zeros(width - hidden)])
    if module in _STREAM_INPUT:
        return torch.cat([weight, weight.new_zeros(weight.shape[0], width - hidden)], dim=1)
    if module in _STREAM_OUTPUT:
        return torch.cat([weight, weight.new_zeros(width - hidden, weight.shape[1])], dim=0)
    raise ZFLoRAError(f"{hf_name}: cannot pad a weight of unknown role along the residual stream")


def export_gguf(
    model_dir: str | os.PathLike,
    out_file: str | os.PathLike,
    tensor_type: str = "f16",
    pad_multiple: int = 1,
) -> dict[str, Any]:
    """Write the checkpoint at `model_dir` (fused or not) as one GGUF file; returns a summary.

    Matrices are stored as `tensor_type` says (TENSOR_TYPES: f16, f32, q8_0 or source); norm
    weights always in f32, as llama.cpp expects. The tokenizer is the source GGUF's (sidecar)
    or a converted one. `pad_multiple` > 1 widens the residual stream with zero channels to a
    multiple of it (norm gains and eps rescaled: the same logits up to rounding): llama.cpp's
    CPU matrix kernels are much slower on a width such as 594 than on 608 (see docs/gguf.md).
    The padded width need not divide by the head count, which llama.cpp allows and
    transformers' GGUF reader does not.
    """
    import gguf

    from zflora.method.loading import check_model_dir, load_causal_lm

    if tensor_type not in TENSOR_TYPES:
        raise ZFLoRAError(f"GGUF tensor type must be one of {list(TENSOR_TYPES)}, got {tensor_type!r}")
    if isinstance(pad_multiple, bool) or not isinstance(pad_multiple, int) or pad_multiple < 1:
        raise ZFLoRAError(f"pad multiple must be a positive integer (e.g. 32), got {pad_multiple!r}")
    out_file = Path(out_file)
    if out_file.suffix.lower() != ".gguf":
        raise ZFLoRAError(f"output {str(out_file)!r} must end in .gguf")
    model_dir = check_model_dir(model_dir)
    where = str(model_dir)
    sidecar = read_sidecar(model_dir)
    from transformers import AutoConfig

    arch = _check_exportable(AutoConfig.from_pretrained(model_dir), where)  # before loading any weight
    model, _ = load_causal_lm(model_dir, dtype="float32", with_tokenizer=False)
    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    vocab_size = model.get_input_embeddings().weight.shape[0]
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    hidden = config.hidden_size
    width = -(-hidden // pad_multiple) * pad_multiple

    if sidecar is None and not any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        raise ZFLoRAError(f"{where}: no tokenizer files (tokenizer.json or tokenizer.model); GGUF needs one")
    if sidecar is not None and len(sidecar_tokens(sidecar["fields"])) != vocab_size:
        raise ZFLoRAError(
            f"{where}: the source GGUF's tokenizer has {len(sidecar_tokens(sidecar['fields']))} tokens but the "
            f"model's embedding has {vocab_size} rows; delete {SIDECAR} to convert the HF tokenizer instead"
        )

    source_types = (sidecar or {}).get("tensor_types")
    if tensor_type == "source" and not source_types:
        raise ZFLoRAError(
            f"{where}: --dtype source needs a base that came from a GGUF (its {SIDECAR} lists the source "
            "tensor types); use f16, f32 or q8_0"
        )
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tensors: list[tuple[str, Any]] = []
    with torch.no_grad():
        for hf_name, param in model.named_parameters():
            if tied and hf_name.startswith("lm_head."):
                continue
            base, _, suffix = hf_name.rpartition(".")
            gguf_name = names.get_name(base)
            if gguf_name is None:
                raise ZFLoRAError(f"{where}: tensor {hf_name} has no GGUF name in a {arch} file")
            weight = _pad_stream(hf_name, param.detach().float(), hidden, width)
            if base.endswith("self_attn.q_proj"):
                weight = _permute_qk(weight, heads)
            elif base.endswith("self_attn.k_proj"):
                weight = _permute_qk(weight, kv_heads)
            full_name = f"{gguf_name}.{suffix}"
            array = weight.numpy()
            if weight.dim() >= 2:
                source = (source_types or {}).get(full_name)
                data, qtype = _encode_matrix(array, tensor_type, source, f"{where}: {hf_name}")
            else:
                data, qtype = array.astype(np.float32), gguf.GGMLQuantizationType.F32
            tensors.append((full_name, data, qtype))

    with atomic_path(out_file) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        name = getattr(config, "_name_or_path", "") or model_dir.name
        label = Path(str(name)).name or model_dir.name
        # A Mistral model (no sliding window) is written as llama, as llama.cpp does; transformers reads it
        # back as a LlamaForCausalLM, which needs hidden_size % heads == 0 (llama.cpp does not).
        writer.add_name(label)
        file_type = {"f32": gguf.LlamaFileType.ALL_F32, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}.get(
            tensor_type, gguf.LlamaFileType.MOSTLY_F16
        )
        if tensor_type == "source" and isinstance(sidecar.get("file_type"), int):
            file_type = sidecar["file_type"]
        writer.add_file_type(file_type)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(width)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(heads)
        writer.add_head_count_kv(kv_heads)
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(_rope_theta(config))
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps) * hidden / width)
        writer.add_vocab_size(vocab_size)
        meta = getattr(config, "zflora", None)
        if isinstance(meta, dict):
            writer.add_string("zflora.adapter", str(meta.get("adapter") or "none"))
            writer.add_uint32(
                "zflora.base_hidden_size", int(meta.get("base_hidden_size", config.hidden_size))
            )
            writer.add_uint32("zflora.width", int(meta.get("width", 0)))
        if sidecar is not None:
            write_fields(writer, sidecar["fields"])
            tokenizer_note = f"from {sidecar.get('source', 'the source GGUF')}"
        else:
            tokenizer_note = write_converted_tokenizer(writer, model_dir, vocab_size)
        for tensor_name, data, qtype in tensors:
            quantized = qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
            writer.add_tensor(tensor_name, data, raw_dtype=qtype if quantized else None)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return {
        "out_file": str(out_file),
        "architecture": arch,
        "tensor_type": _describe_types(tensor_type, tensors),
        "tensor_types": dict(Counter(qtype.name for _, _, qtype in tensors)),
        "tensors": len(tensors),
        "hidden_size": width,
        "padding": width - hidden,
        "head_dim": head_dim,
        "vocab_size": vocab_size,
        "tokenizer": tokenizer_note,
        "bytes": out_file.stat().st_size,
    }
