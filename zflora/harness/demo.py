"""A two-minute tour of zflora on a tiny model built in code (no downloads).

    python -m zflora.harness.demo [--out demo_out]

Builds a small random Llama, trains two zFLoRA adapters on two toy sequence tasks
(count up / count down), fuses one into a standard checkpoint, reloads it with stock
transformers, switches tasks in place with swap_adapter, restores the exact base, and
times a swap against PEFT's merged-LoRA switch (unmerge + merge).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from zflora import ZFLoRAConfig, get_zflora_model, swap_adapter

VOCAB = 40


def build_base(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return LlamaForCausalLM(config).eval()


def task_batch(direction: int, size: int = 32, length: int = 12, seed: int = 0) -> torch.Tensor:
    """Rows of consecutive tokens going up (+1) or down (-1), wrapping inside [2, VOCAB)."""
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(2, VOCAB, (size, 1), generator=generator)
    steps = torch.arange(length).unsqueeze(0) * direction
    return (starts - 2 + steps) % (VOCAB - 2) + 2


def train_adapter(zm, name: str, direction: int, steps: int) -> tuple[float, float]:
    zm.add_adapter(name, ZFLoRAConfig(r=8, seed=len(name)))
    zm.set_adapter(name)
    optimizer = torch.optim.AdamW([p for p in zm.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for step in range(steps):
        batch = task_batch(direction, seed=step)
        loss = zm(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses[0], losses[-1]


def greedy(model, prompt: list[int], n: int = 6) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, pad_token_id=1
    )
    return out[0, len(prompt) :].tolist()


def time_call(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="where the fused checkpoint and adapters go")
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args(argv)
    out = Path(args.out)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    base = build_base()
    prompt = [10, 11, 12, 13]
    print(
        f"base model: Llama, d={base.config.hidden_size}, {sum(p.numel() for p in base.parameters()):,} params"
    )
    print(f"  base continues {prompt} with {greedy(base, prompt)}")
    zm = get_zflora_model(base, ZFLoRAConfig(r=8), adapter_name="scratch")
    for name, direction in (("up", 1), ("down", -1)):
        first, last = train_adapter(zm, name, direction, args.steps)
        print(
            f"adapter {name!r}: trained {args.steps} steps, loss {first:.3f} -> {last:.3f}; continues with {greedy(zm, prompt)}"
        )
        zm.save_adapter(out / "adapters" / name, adapter_name=name)

    fused = zm.fuse("up")
    fused.save_pretrained(out / "fused-up")
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out / "fused-up").eval()
    zm.set_adapter("up")
    ids = task_batch(1, size=4)
    diff = (reloaded(input_ids=ids).logits - zm(input_ids=ids).logits).abs().max().item()
    print(
        f"fused 'up' -> {type(reloaded).__name__} hidden {reloaded.config.hidden_size} (stock reload), max |logit diff| vs unfused {diff:.2e}"
    )
    print(f"  fused continues {prompt} with {greedy(reloaded, prompt)}")

    down, up = zm.adapter_weights("down"), zm.adapter_weights("up")
    swap_adapter(reloaded, down)
    print(f"swap_adapter -> 'down': continues with {greedy(reloaded, prompt)}")
    swap_adapter(reloaded, None)
    with zm.disable_adapters():
        base_logits = zm(input_ids=ids).logits
    diff = (reloaded(input_ids=ids).logits - base_logits).abs().max().item()
    print(f"swap_adapter -> None: base model again, max |logit diff| vs base {diff:.2e}")

    swap_ms = 1e3 * time_call(lambda: (swap_adapter(reloaded, up), swap_adapter(reloaded, down))) / 2
    peft_ms = _peft_switch_ms()
    print(
        f"switch time (median of 5): zflora swap_adapter {swap_ms:.2f} ms, PEFT merged-LoRA unmerge+merge {peft_ms:.2f} ms "
        f"({peft_ms / swap_ms:.1f}x); {torch.get_num_threads()} threads"
    )
    print(f"outputs under {out}/")


def _peft_switch_ms() -> float:
    from peft import get_peft_model

    from zflora.harness.methods import AdapterSettings, lora_config

    model = build_base()
    lora = lora_config(AdapterSettings(r=8), model)
    peft_model = get_peft_model(model, lora, adapter_name="up")
    peft_model.add_adapter("down", lora)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    peft_model.set_adapter("up")
    peft_model.merge_adapter()
    state = {"active": "up"}

    def switch():
        target = "down" if state["active"] == "up" else "up"
        peft_model.unmerge_adapter()
        peft_model.set_adapter(target)
        peft_model.merge_adapter()
        state["active"] = target

    return 1e3 * time_call(switch, repeats=10)


if __name__ == "__main__":
    main()
