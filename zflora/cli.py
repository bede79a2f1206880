"""The `zflora` command line: fuse, swap, generate, export-gguf, tasks, profile.

    zflora fuse --base models/base --adapter adapters/math --out models/fused-math
    zflora swap --model models/fused-math --adapter adapters/chat      # in place; `none` -> base
    zflora generate --model models/fused-math --prompt "Q: 2+3? A:"
    zflora generate --model models:/zflora-tiny-math@latest --prompt "..."
    zflora generate --model models:/zflora-tiny@latest --task math --prompt "..."   # multi-task model
    zflora generate --model smollm2-135m-instruct --prompt "What is 2+3?"       # a GGUF preset or .gguf file
    zflora export-gguf --model models/fused-math --out fused-math.gguf

User errors print one line (`zflora: error: ...`) and exit with status 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from zflora.errors import ZFLoRAError


def _cmd_fuse(args: argparse.Namespace) -> int:
    from zflora.method.export import fuse_to_directory

    summary = fuse_to_directory(
        args.base,
        args.adapter,
        args.out,
        dtype=args.dtype,
        pad_multiple=args.pad_multiple,
        trust_remote_code=args.trust_remote_code,
    )
    print(
        f"fused adapter {summary['adapter']!r} (r={summary['r']}, blocks={'+'.join(summary['blocks'])}) into "
        f"{summary['architecture']} hidden {summary['base_hidden_size']} -> {summary['fused_hidden_size']}: {args.out}"
    )
    return 0


def _cmd_swap(args: argparse.Namespace) -> int:
    from zflora.method.atomic import atomic_dir
    from zflora.method.fusion import fused_meta, swap_adapter
    from zflora.method.gguf.sidecar import copy_sidecar
    from zflora.method.loading import check_model_dir, load_causal_lm

    check_model_dir(args.model)
    adapter = None if args.adapter.lower() == "none" else args.adapter
    model, tokenizer = load_causal_lm(args.model, trust_remote_code=args.trust_remote_code)
    fused_meta(model)
    swap_adapter(model, adapter)
    out = args.out or args.model
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        copy_sidecar(args.model, tmp)  # a GGUF base's tokenizer metadata, for export-gguf
    print(f"{out}: now serves adapter {model.config.zflora['adapter'] or '(none: base model)'}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from zflora.harness.generation import generate_text, load_for_generation, resolve_model_ref
    from zflora.method.multitask import MultiTaskModel, is_multitask_dir

    ref = resolve_model_ref(args.model)
    prompts = args.prompt
    if is_multitask_dir(ref):  # e.g. models:/zflora-tiny@latest: --task picks the adapter, none: the base
        if args.adapter is not None:
            raise ZFLoRAError(
                f"{args.model} is a multi-task model: pick one of its tasks with --task, not --adapter"
            )
        multitask = MultiTaskModel.from_directory(
            ref, dtype=args.dtype, trust_remote_code=args.trust_remote_code
        )
        completions = multitask.generate(
            prompts, args.task, max_new_tokens=args.max_new_tokens, chat=not args.raw
        )
    else:
        if args.task is not None:
            raise ZFLoRAError(
                f"--task needs a multi-task model (models:/<prefix>-<base>@latest or a MultiTaskModel.save "
                f"directory); {args.model} is a single model: use --adapter"
            )
        model, tokenizer = load_for_generation(
            ref, args.adapter, dtype=args.dtype, trust_remote_code=args.trust_remote_code
        )
        completions = generate_text(
            model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, chat=not args.raw
        )
    for prompt, completion in zip(prompts, completions):
        if len(prompts) > 1:
            print(f"--- {prompt}")
        print(completion)
    return 0


def _cmd_export_gguf(args: argparse.Namespace) -> int:
    from zflora.harness.generation import resolve_model_ref
    from zflora.method.gguf.export import export_gguf

    summary = export_gguf(
        resolve_model_ref(args.model), args.out, tensor_type=args.dtype, pad_multiple=args.pad_multiple
    )
    padding = f" ({summary['padding']} zero channels)" if summary["padding"] else ""
    print(
        f"wrote {summary['out_file']} ({summary['bytes'] / 2**20:.1f} MiB): {summary['architecture']}, hidden "
        f"{summary['hidden_size']}{padding}, head_dim {summary['head_dim']}, {summary['tensors']} tensors, matrices "
        f"{summary['tensor_type']} (norms float32), tokenizer {summary['tokenizer']}"
    )
    if summary["hidden_size"] % 32:
        print(
            f"note: llama.cpp's CPU kernels run a width of {summary['hidden_size']} slowly (SmolLM2 at 594: "
            "prefill 2-2.6x the base); --pad-multiple 32 (64 for f16) brings it near the base's speed"
        )
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow model code from the hub (off by default: it runs arbitrary code)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zflora", description="Zero-latency fused low-rank adapters (zFLoRA)."
    )
    parser.add_argument("--version", action="version", version=f"zflora {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fuse = sub.add_parser(
        "fuse", help="fold an adapter into its base: a standard model with hidden size d + r"
    )
    fuse.add_argument(
        "--base",
        required=True,
        help="base the adapter was trained on: a directory, hub id, .gguf file or GGUF preset (smollm2-135m-instruct)",
    )
    fuse.add_argument("--adapter", required=True, help="adapter directory written by save_adapter")
    fuse.add_argument("--out", required=True, help="output directory (written atomically)")
    fuse.add_argument("--dtype", default=None, help="load the base in this dtype: float32, bfloat16, float16")
    fuse.add_argument(
        "--pad-multiple", type=int, default=1, help="pad the fused width to a multiple of this (alignment)"
    )
    _common(fuse)
    fuse.set_defaults(func=_cmd_fuse)

    swap = sub.add_parser("swap", help="switch a fused model's adapter in place (O(adapter size))")
    swap.add_argument("--model", required=True, help="fused model directory")
    swap.add_argument(
        "--adapter", required=True, help="adapter directory, or 'none' for the exact base model"
    )
    swap.add_argument("--out", default=None, help="write here instead of replacing --model")
    _common(swap)
    swap.set_defaults(func=_cmd_swap)

    generate = sub.add_parser(
        "generate", help="greedy generation from a model directory or an MLflow models:/ URI"
    )
    generate.add_argument(
        "--model",
        required=True,
        help="model directory, hub id, models:/<name>@<alias>, .gguf file or GGUF preset (smollm2-135m-instruct)",
    )
    generate.add_argument("--adapter", default=None, help="optional zFLoRA adapter directory to apply first")
    generate.add_argument(
        "--task",
        default=None,
        help="task of a multi-task model (models:/<prefix>-<base>@...); default: the base",
    )
    generate.add_argument("--prompt", required=True, action="append", help="prompt text (repeat for a batch)")
    generate.add_argument("--max-new-tokens", type=int, default=64)
    generate.add_argument("--dtype", default=None, help="float32, bfloat16 or float16")
    generate.add_argument(
        "--raw", action="store_true", help="send the prompt as is, not through the model's chat template"
    )
    _common(generate)
    generate.set_defaults(func=_cmd_generate)

    export = sub.add_parser(
        "export-gguf", help="write a (fused) model as one GGUF file, for llama.cpp and other GGUF runtimes"
    )
    export.add_argument(
        "--model", required=True, help="model directory (e.g. a fused checkpoint) or models:/ URI"
    )
    export.add_argument("--out", required=True, help="output .gguf file (written atomically)")
    export.add_argument(
        "--dtype",
        default="f16",
        choices=("f16", "f32", "q8_0", "source"),
        help="matrix storage (norms are always f32): f16, f32, q8_0 where rows are whole 32-value blocks "
        "(else f16), or source: each tensor in the type of the GGUF the base came from, where rows allow",
    )
    export.add_argument(
        "--pad-multiple",
        type=int,
        default=1,
        help="pad the residual stream with zero channels to a multiple of this (e.g. 32: llama.cpp's CPU "
        "kernels are much faster at 608 than at 594); llama.cpp reads any width, transformers only widths "
        "divisible by the head count (default: 1, no padding)",
    )
    export.set_defaults(func=_cmd_export_gguf)

    from zflora.harness.data.cli import add_tasks_parser
    from zflora.harness.profiling.cli import add_profile_parser

    add_tasks_parser(sub)  # subcommands that live with their modules
    add_profile_parser(sub)
    return parser


def _version() -> str:
    from zflora import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ZFLoRAError as e:
        print(f"zflora: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zflora: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
