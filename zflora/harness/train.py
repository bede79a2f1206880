"""Fine-tune a prepared model on a task's examples with HF Trainer (loss on answer tokens only).

    from zflora.harness.train import TrainSettings, train_method
    metrics = train_method("models/base", examples, "out/adapter", "zflora", TrainSettings(max_steps=100))

Every method goes through the same entry point and the same Trainer, so `torchrun`
(DDP) and `accelerate launch` work unchanged. Checkpoints are written every
`save_steps` into a work directory next to the output; a rerun after a crash or a kill
resumes from the last complete checkpoint (same settings, same data) instead of starting
over. A non-finite loss stops training with an error that names the step.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from zflora.errors import ZFLoRAError
from zflora.harness.methods import adapter_for, prepare, save_trained
from zflora.harness.settings import AdapterSettings, TrainSettings, check_trainable
from zflora.method.atomic import write_text
from zflora.method.model import ZFLoRAModel

IGNORE_INDEX = -100
CHECKPOINT_PREFIX = "checkpoint-"


class TrainingDiverged(ZFLoRAError):
    """The loss became non-finite: nothing was saved (learning-rate selection scores it as lost)."""


class SupervisedDataset(Dataset):
    """prompt + target + EOS; labels cover the target and EOS only (prompt tokens are -100).

    With a chat template on the tokenizer, the prompt is one user turn rendered through it
    (exactly as evaluation and `zflora generate` render it) and the target is the
    assistant's answer up to the template's end of turn (EOS); otherwise the plain format.
    """

    def __init__(self, examples: list[Any], tokenizer: Any, max_seq_len: int) -> None:
        from zflora.harness.generation import has_chat_template, render_answer, render_prompt

        if not examples:
            raise ZFLoRAError("no training examples; check the task's data and the train size setting")
        self.rows = []
        eos = tokenizer.eos_token_id
        chat = has_chat_template(tokenizer)
        for example in examples:
            if chat:
                rendered = render_prompt(tokenizer, example.prompt)
                prompt = tokenizer(rendered, add_special_tokens=False)["input_ids"]
                answer = render_answer(tokenizer, example.prompt, example.target)
                target = tokenizer(answer, add_special_tokens=False)["input_ids"]
                # the turn ends at EOS (the template's end-of-turn token, when that is EOS): nothing after it
                target = target[: target.index(eos) + 1] if eos in target else [*target, eos]
            else:
                prompt = tokenizer(example.prompt)["input_ids"]
                target = tokenizer(example.target, add_special_tokens=False)["input_ids"] + [eos]
            target = target[:max_seq_len]
            prompt = prompt[-(max_seq_len - len(target)) :] if len(target) < max_seq_len else []
            ids = prompt + target
            self.rows.append((ids, [IGNORE_INDEX] * len(prompt) + target))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        ids, labels = self.rows[index]
        return {"input_ids": ids, "labels": labels}


class PadCollator:
    """Right-pads a batch; padding is masked out of attention and loss."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(row["input_ids"]) for row in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[i, :n] = torch.tensor(row["input_ids"])
            labels[i, :n] = torch.tensor(row["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def make_trainer_class():
    """A Trainer that checkpoints zFLoRA adapters (not the frozen base) and stops on a non-finite loss."""
    from transformers import Trainer

    class ZFLoRATrainer(Trainer):
        def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
            if not isinstance(self.model, ZFLoRAModel):
                return super()._save(output_dir, state_dict)
            output_dir = output_dir or self.args.output_dir
            if self.args.should_save:
                self.model.save_adapter(output_dir)

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
            target = model if model is not None else self.model
            if not isinstance(target, ZFLoRAModel):
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            target.load_adapter(resume_from_checkpoint, adapter_name=target.active_adapter)

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            if not torch.isfinite(loss).all():
                step = self.state.global_step + 1
                raise TrainingDiverged(
                    f"training diverged: loss is {loss.item()} at step {step}; lower the learning rate "
                    f"(now {self.args.learning_rate:g}) or check the data. No adapter was saved"
                )
            return loss

    return ZFLoRATrainer


def run_fingerprint(base: dict[str, Any], examples: list[Any], parts: dict[str, Any]) -> str:
    """Identifies a training run: a checkpoint is resumed only by the same run.

    Keyed on the base model's fingerprint (architecture, shapes, weights), not its path: a
    base replaced in place (another model saved to the same folder) starts over.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps({"base": base, **parts}, sort_keys=True, default=str).encode())
    for example in examples:
        digest.update(example.prompt.encode())
        digest.update(example.target.encode())
    return digest.hexdigest()[:16]


def checkpoint_is_complete(checkpoint: Path) -> bool:
    """Trainer writes trainer_state.json last: a checkpoint is whole once that file parses.

    A kill can land while the file is being written, leaving it empty or cut short; such a
    checkpoint is as incomplete as one without the file.
    """
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(state, dict) and "global_step" in state


def checkpoint_step(checkpoint: Path) -> int:
    suffix = checkpoint.name[len(CHECKPOINT_PREFIX) :]
    return int(suffix) if suffix.isdigit() else -1


def last_complete_checkpoint(work_dir: Path) -> Path | None:
    """The newest complete checkpoint (see `checkpoint_is_complete`)."""
    if not work_dir.is_dir():
        return None
    done = [p for p in work_dir.glob(f"{CHECKPOINT_PREFIX}*") if checkpoint_is_complete(p)]
    return max(done, key=checkpoint_step) if done else None


def prepare_work_dir(work_dir: Path, fingerprint: str) -> Path | None:
    """Keep checkpoints of the same run (returns the one to resume); wipe anything else.

    Idempotent: under DDP the main process runs it first and the others then find the
    directory already prepared for the same run (`TrainingArguments.main_process_first`).
    """
    stamp = work_dir / "run.json"
    if work_dir.exists():
        try:
            same = json.loads(stamp.read_text()).get("fingerprint") == fingerprint
        except (OSError, json.JSONDecodeError):
            same = False
        if same:
            resume = last_complete_checkpoint(work_dir)
            for partial in work_dir.glob(f"{CHECKPOINT_PREFIX}*"):
                if partial != resume and not checkpoint_is_complete(partial):
                    shutil.rmtree(partial, ignore_errors=True)  # a checkpoint cut off by a kill
            return resume
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    write_text(stamp, json.dumps({"fingerprint": fingerprint}))
    return None


def train_method(
    base_path: str | Path,
    examples: list[Any],
    out_dir: str | Path,
    method: str,
    settings: TrainSettings | None = None,
    adapter: AdapterSettings | None = None,
    dtype: str = "float32",
    work_dir: str | Path | None = None,
    progress: bool = True,
    trust_remote_code: bool = False,
    reuse: str | Path | None = None,
) -> dict[str, Any]:
    """Train `method` on `examples` from the base at `base_path`; save to `out_dir`.

    `reuse`: the output folder of a finished run. When it was this very run (its
    RUN_RECORD holds the same run fingerprint: base, examples, method, settings with the
    seed, adapter), it is copied instead of trained again: training it again would give the
    same weights up to floating-point summation order (the tune stage's winning candidate
    is the train stage's first seed). Otherwise it is ignored.

    The base is loaded in `dtype` (float32, bfloat16 or float16) and trained in it; zFLoRA
    and LoRA keep their adapter parameters in float32 on a half-precision base, as PEFT
    does. Returns metrics (losses, steps, seconds, trainable parameters,
    resumed_from_step). `out_dir` receives the adapter (lora, zflora*) or full model (fft)
    atomically.
    """
    from transformers import TrainingArguments, set_seed

    from zflora.method.fingerprint import base_fingerprint
    from zflora.method.loading import load_causal_lm

    check_trainable(method)
    settings = settings or TrainSettings()
    adapter = adapter or AdapterSettings()
    out_dir = Path(out_dir)
    work_dir = Path(work_dir) if work_dir is not None else out_dir.parent / f".{out_dir.name}.checkpoints"
    set_seed(settings.seed)
    model, tokenizer = load_causal_lm(base_path, dtype=dtype, trust_remote_code=trust_remote_code)
    if tokenizer is None:
        raise ZFLoRAError(f"base model {str(base_path)!r} has no tokenizer; save one next to it")
    fingerprint = run_fingerprint(
        base_fingerprint(model),
        examples,
        {"method": method, "dtype": dtype, "train": settings.to_dict(), "adapter": adapter.to_dict()},
    )
    reused = _reused_run(reuse, fingerprint, out_dir)
    if reused is not None:
        return reused
    rank = None if method == "fft" else adapter_for(method, adapter, model).r
    model = prepare(method, model, adapter, seed=settings.seed)
    dataset = SupervisedDataset(examples, tokenizer, settings.max_seq_len)

    args = TrainingArguments(
        output_dir=str(work_dir),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        learning_rate=settings.learning_rate(method),
        weight_decay=settings.weight_decay,
        warmup_steps=settings.warmup_ratio,  # a float < 1 is a ratio of the total steps
        lr_scheduler_type=settings.lr_scheduler,
        logging_steps=settings.logging_steps,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=2,
        seed=settings.seed,
        data_seed=settings.seed,
        report_to=[],
        disable_tqdm=not progress,
        gradient_checkpointing=settings.gradient_checkpointing,
        use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    # DDP: the main process prepares (or wipes) the checkpoint folder, then the others read it
    with args.main_process_first(local=False, desc="checkpoint folder"):
        resume = prepare_work_dir(work_dir, fingerprint)
    trainer = make_trainer_class()(
        model=model, args=args, train_dataset=dataset, data_collator=PadCollator(tokenizer.pad_token_id)
    )
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - start
    losses = [(row["step"], row["loss"]) for row in trainer.state.log_history if "loss" in row]
    if trainer.args.should_save:
        save_trained(method, model, out_dir, tokenizer=tokenizer)
        shutil.rmtree(work_dir, ignore_errors=True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    summary = {
        "method": method,
        "dtype": dtype,
        "steps": trainer.state.global_step,
        "resumed_from_step": int(resume.name[len(CHECKPOINT_PREFIX) :]) if resume else 0,
        "train_seconds": round(seconds, 2),
        "train_examples": len(dataset),
        "learning_rate": settings.learning_rate(method),
        "seed": settings.seed,
        "trainable_parameters": trainable,
        **({} if rank is None else {"r": rank}),
        "final_loss": losses[-1][1] if losses else math.nan,
        "first_loss": losses[0][1] if losses else math.nan,
        "loss_curve": losses,
        "world_size": args.world_size,
        "is_main_process": trainer.is_world_process_zero(),
    }
    if trainer.args.should_save:
        write_text(out_dir / RUN_RECORD, json.dumps({"fingerprint": fingerprint, "summary": summary}) + "\n")
    return summary


RUN_RECORD = "run.json"  # next to a finished run's adapter / weights: what run made them


def _reused_run(reuse: str | Path | None, fingerprint: str, out_dir: Path) -> dict[str, Any] | None:
    """The summary of `reuse` copied to `out_dir`, if `reuse` is a finished run with `fingerprint`."""
    if reuse is None or int(os.environ.get("WORLD_SIZE", "1")) > 1:  # DDP ranks train together
        return None
    try:
        record = json.loads((Path(reuse) / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return None
    if record.get("fingerprint") != fingerprint:
        return None
    from zflora.method.atomic import atomic_dir

    with atomic_dir(out_dir) as tmp:
        shutil.copytree(reuse, tmp, dirs_exist_ok=True)
    return {**record["summary"], "reused_from": str(reuse), "is_main_process": True}
