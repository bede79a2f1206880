"""What one timed sample is: prefill, decode with a KV cache, adapter switching, memory.

Each `*_sampler` returns a zero-argument callable that does its untimed setup, times
its measured part with a Clock and returns milliseconds; timing.round_robin interleaves
them across variants.
"""

from __future__ import annotations

import atexit
import dataclasses
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zflora.harness.profiling.timing import Clock
from zflora.harness.profiling.variants import ADAPTERS, VariantSet
from zflora.method.adapter_file import write_adapter
from zflora.method.fusion import swap_adapter


def _cache_keyword() -> str:
    """transformers >= 5.x names the KV-cache argument `cache`; earlier 5.x releases `past_key_values`."""
    import inspect

    from transformers import LlamaModel

    return "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


CACHE_KW = _cache_keyword()


def _step(model: nn.Module, token: torch.Tensor, cache: Any) -> tuple[Any, torch.Tensor]:
    """One decode step: feed `token` with the KV cache; returns (cache, next greedy token)."""
    out = model(input_ids=token, use_cache=True, **{CACHE_KW: cache})
    return _cache_of(out), out.logits[:, -1:].argmax(-1)


def _cache_of(output: Any) -> Any:
    return output["cache"] if CACHE_KW == "cache" else output["past_key_values"]


def prefill_sampler(model: nn.Module, input_ids: torch.Tensor, clock: Clock) -> Callable[[], float]:
    """Time to first token: one forward over the prompt (KV cache filled, logits of the last position) + argmax."""

    def run() -> torch.Tensor:
        out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].argmax(-1)

    return lambda: clock.measure(run)


def decode_sampler(
    model: nn.Module, prompt_ids: torch.Tensor, tokens: int, clock: Clock
) -> Callable[[], float]:
    """Milliseconds per token of greedy decoding with a KV cache, after an untimed prefill of `prompt_ids`."""

    def sample() -> float:
        out = model(input_ids=prompt_ids, use_cache=True, logits_to_keep=1)
        state = {"cache": _cache_of(out), "token": out.logits[:, -1:].argmax(-1)}

        def steps() -> None:
            for _ in range(tokens):
                state["cache"], state["token"] = _step(model, state["token"], state["cache"])

        elapsed = clock.measure(steps)
        state.clear()
        return elapsed / tokens

    return sample


def greedy_tokens(model: nn.Module, prompt_ids: torch.Tensor, tokens: int) -> torch.Tensor:
    """The `tokens` greedy continuations of `prompt_ids` (the same loop the decode timing runs)."""
    out = model(input_ids=prompt_ids, use_cache=True, logits_to_keep=1)
    cache, token = _cache_of(out), out.logits[:, -1:].argmax(-1)
    generated = [token]
    for _ in range(tokens - 1):
        cache, token = _step(model, token, cache)
        generated.append(token)
    return torch.cat(generated, dim=-1)


def switch_samplers(vs: VariantSet, clock: Clock) -> dict[str, Callable[[], float]]:
    """One sampler per switching method; each switches to the other of two preloaded adapters per call.

    - zflora-swap: swap_adapter on the fused model (adapters preloaded, E·P cached after first use)
    - zflora-swap-first-use: the same with a fresh AdapterWeights object (includes computing E·P)
    - zflora-swap-from-disk: swap_adapter with the adapter's directory (read, check, E·P, copy)
    - lora-merged-switch: PEFT unmerge_adapter + set_adapter + merge_adapter
    - lora-set-adapter: PEFT set_adapter on the unmerged model
    - zflora-set-adapter: ZFLoRAModel.set_adapter (training form)
    """
    samplers: dict[str, Callable[[], float]] = {}

    def toggler(action: Callable[[str], Any]) -> Callable[[], float]:
        state = {"current": ADAPTERS[0]}

        def sample() -> float:
            target = ADAPTERS[1] if state["current"] == ADAPTERS[0] else ADAPTERS[0]
            elapsed = clock.measure(lambda: action(target))
            state["current"] = target
            return elapsed

        return sample

    if vs.fused is not None:
        fused, adapters = vs.fused, vs.adapters
        samplers["zflora-swap"] = toggler(lambda name: swap_adapter(fused, adapters[name]))

        def first_use() -> Callable[[], float]:
            state = {"current": ADAPTERS[0]}

            def sample() -> float:
                target = ADAPTERS[1] if state["current"] == ADAPTERS[0] else ADAPTERS[0]
                fresh = dataclasses.replace(adapters[target], cache={})  # nothing cached yet
                elapsed = clock.measure(lambda: swap_adapter(fused, fresh))
                state["current"] = target
                return elapsed

            return sample

        samplers["zflora-swap-first-use"] = first_use()
        folder = Path(tempfile.mkdtemp(prefix="zflora-switch-"))  # removed at exit
        atexit.register(shutil.rmtree, folder, True)
        paths = {name: write_adapter(folder / name, weights) for name, weights in adapters.items()}
        samplers["zflora-swap-from-disk"] = toggler(lambda name: swap_adapter(fused, paths[name]))
    if vs.peft_merged is not None:
        merged = vs.peft_merged

        def merged_switch(name: str) -> None:
            merged.unmerge_adapter()
            merged.set_adapter(name)
            merged.merge_adapter()

        samplers["lora-merged-switch"] = toggler(merged_switch)
    if vs.peft_unmerged is not None:
        samplers["lora-set-adapter"] = toggler(vs.peft_unmerged.set_adapter)
    if vs.zflora is not None:
        samplers["zflora-set-adapter"] = toggler(vs.zflora.set_adapter)
    return samplers


def reset_adapters(vs: VariantSet) -> None:
    """Put every switchable model back on the first adapter (after the switch benchmark)."""
    if vs.fused is not None:
        swap_adapter(vs.fused, vs.adapters[ADAPTERS[0]])
    if vs.peft_merged is not None and vs.peft_merged.active_adapter != ADAPTERS[0]:
        vs.peft_merged.unmerge_adapter()
        vs.peft_merged.set_adapter(ADAPTERS[0])
        vs.peft_merged.merge_adapter()
    if vs.peft_unmerged is not None:
        vs.peft_unmerged.set_adapter(ADAPTERS[0])
    if vs.zflora is not None:
        vs.zflora.set_adapter(ADAPTERS[0])


def peak_activation_bytes(model: nn.Module, input_ids: torch.Tensor, device: torch.device) -> int:
    """Peak bytes allocated above the weights during one prefill of `input_ids`.

    CUDA: the caching allocator's peak. CPU: the running sum of the profiler's allocation
    events (torch.profiler with profile_memory), which sees every tensor allocation.
    """

    def run() -> None:
        model(input_ids=input_ids, use_cache=True, logits_to_keep=1).logits[:, -1].argmax(-1)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return int(peak)


def max_relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both are zero)."""
    scale = b.abs().max().clamp_min(1e-12)
    return float((a.float() - b.float()).abs().max() / scale.float())


@torch.no_grad()
def check_variants(vs: VariantSet, prompt_ids: torch.Tensor, tokens: int = 4) -> dict[str, Any]:
    """Evidence that each variant computes what it claims (recorded with every profile).

    Pairs that must compute the same function: lora-merged vs lora, every fused model vs
    zflora (training form). Reports the relative logit difference and whether greedy
    tokens agree, plus how far each adapted variant is from the base (non-zero adapters).
    """

    # the training form is the reference of every fused model, timed or not
    models = {**vs.models, **({"zflora": vs.zflora} if vs.zflora is not None else {})}

    def logits(name: str) -> torch.Tensor:
        return models[name](input_ids=prompt_ids, logits_to_keep=1).logits[:, -1]

    results: dict[str, Any] = {}
    base = logits("base")
    pairs = {"lora-merged": "lora", **{name: "zflora" for name in models if name.startswith("zflora-fused")}}
    for name in vs.models:
        if name == "base":
            continue
        entry = {"differs_from_base": max_relative_difference(logits(name), base)}
        reference = pairs.get(name)
        if reference in models:
            entry["equals"] = reference
            entry["relative_logit_difference"] = max_relative_difference(logits(name), logits(reference))
            entry["same_greedy_tokens"] = bool(
                torch.equal(
                    greedy_tokens(models[name], prompt_ids, tokens),
                    greedy_tokens(models[reference], prompt_ids, tokens),
                )
            )
        results[name] = entry
    return results
