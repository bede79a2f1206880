"""HF Trainer drives zFLoRA and LoRA (via the methods factory) and lowers the loss on a toy batch."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from torch.utils.data import Dataset

import zflora
from zflora.harness import methods


class ToyBatch(Dataset):
    """Eight copies of two fixed sequences: a model that memorises them has near-zero loss."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.rows = torch.randint(3, 90, (2, 16)).repeat(4, 1)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.rows[index]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def run_trainer(model, tmp_path, steps: int = 20, lr: float = 2e-2, **extra):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=lr,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        **extra,
    )
    trainer = Trainer(model=model, args=args, train_dataset=ToyBatch())
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    return losses


@pytest.mark.parametrize("method", ["zflora", "zflora-mha", "lora"])
def test_trainer_lowers_loss_and_touches_only_adapters(method, tmp_path):
    base = tiny_model("llama", tied=False)
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    model = methods.prepare(method, base, methods.AdapterSettings(r=8), seed=0)
    losses = run_trainer(model, tmp_path)
    assert len(losses) == 20
    assert losses[-1] < 0.7 * losses[0], losses
    compared = 0
    for name, param in base.named_parameters():
        if "lora_" in name or name.split(".")[-2] in ("P", "A", "B", "Q"):
            continue
        original = frozen[name.replace(".base.", ".").replace(".base_layer.", ".")]  # every base weight maps
        assert torch.equal(param, original), name
        compared += 1
    assert compared == len(
        list(tiny_model("llama", tied=False).parameters())
    )  # the mapping matched every one


def test_gradient_checkpointing_gives_the_same_gradients():
    zm_plain = zflora.get_zflora_model(tiny_model("qwen2"), zflora.ZFLoRAConfig(r=4, seed=0))
    zm_ckpt = zflora.get_zflora_model(tiny_model("qwen2"), zflora.ZFLoRAConfig(r=4, seed=0))
    zm_ckpt.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    zm_ckpt.train()
    zm_plain.train()
    ids = torch.randint(3, 90, (2, 12))
    for zm in (zm_plain, zm_ckpt):
        zm(input_ids=ids, labels=ids).loss.backward()
    for (name, a), (_, b) in zip(zm_plain.named_parameters(), zm_ckpt.named_parameters()):
        if a.requires_grad:
            assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def test_trainer_with_gradient_checkpointing(tmp_path):
    model = methods.prepare("zflora", tiny_model("llama"), methods.AdapterSettings(r=8), seed=0)
    losses = run_trainer(model, tmp_path, steps=5, gradient_checkpointing=True)
    assert losses[-1] < losses[0]


def test_fft_trains_every_weight_and_base_trains_none():
    base = methods.prepare("base", tiny_model("llama"))
    assert not any(p.requires_grad for p in base.parameters())
    fft = methods.prepare("fft", tiny_model("llama"))
    assert all(p.requires_grad for p in fft.parameters())


def test_lora_targets_the_same_projections_as_zflora():
    model = tiny_model("llama")
    assert methods.lora_target_modules(model) == [
        "q_proj",
        "k_proj",
        "v_proj",
        "gate_proj",
        "up_proj",
        "o_proj",
        "down_proj",
    ]
    lora = methods.prepare("lora", model, methods.AdapterSettings(r=8))
    adapted = {n.split(".")[-2] for n, _ in lora.named_modules() if n.endswith("lora_A")}
    assert adapted == set(methods.lora_target_modules(tiny_model("llama")))
