"""profile(settings) -> dict of every figure; run_profile(settings, out_dir) also writes the report.

    from zflora.harness.profiling import ProfileSettings, run_profile
    result = run_profile(ProfileSettings(preset="llama-3.2-1b", layers=4), "out/profile")

Order of work: build all variants on one base; check that they compute what they
claim; time prefill (per batch size x prompt length) and decode (per batch size),
each cell round-robin over the variants; measure memory; time adapter switching last
(it changes which adapter the switchable models hold, then restores the first).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from zflora.harness.profiling.measure import (
    check_variants,
    decode_sampler,
    peak_activation_bytes,
    prefill_sampler,
    reset_adapters,
    switch_samplers,
)
from zflora.harness.profiling.settings import ProfileSettings
from zflora.harness.profiling.timing import Clock, cell_summary, round_robin, summarize
from zflora.harness.profiling.variants import VariantSet, build_variants, check_device, weight_bytes
from zflora.method.atomic import atomic_dir

SCHEMA = "zflora-profile/1"
MB = 1024 * 1024


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo, else platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    """Where the figures were measured: platform, CPU, accelerator and library versions."""
    import peft
    import transformers

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _shape(config: Any) -> dict[str, Any]:
    return {
        "model_type": config.model_type,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": getattr(config, "num_key_value_heads", config.num_attention_heads),
        "head_dim": getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        "intermediate_size": config.intermediate_size,
        "vocab_size": config.vocab_size,
        "tie_word_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
    }


def _load_average() -> list[float] | None:
    """1/5/15-minute load averages: how busy the machine was (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _random_ids(batch: int, length: int, vocab: int, seed: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=generator).to(device)


def _time_prefill(vs: VariantSet, settings: ProfileSettings, clock: Clock, bar: Any) -> list[dict[str, Any]]:
    """One round-robin cell per (batch size, prompt length)."""
    cells = []
    for batch in settings.batch_sizes:
        for length in settings.prompt_lengths:
            ids = _random_ids(
                batch, length, vs.base.config.vocab_size, settings.seed + 7 * batch + length, clock.device
            )
            bar.set_postfix_str(f"prefill b={batch} L={length}")
            samplers = {name: prefill_sampler(model, ids, clock) for name, model in vs.models.items()}
            samples = round_robin(samplers, settings.repeats, settings.warmup, bar.update)
            cells.append(
                {
                    "batch_size": batch,
                    "prompt_length": length,
                    "variants": cell_summary(samples, seed=settings.seed),
                }
            )
    return cells


def _time_decode(
    vs: VariantSet, settings: ProfileSettings, clock: Clock, bar: Any, prompts: dict[int, torch.Tensor]
) -> list[dict[str, Any]]:
    """One round-robin cell per batch size: ms per token after a prompt of settings.context_length."""
    cells = []
    for batch in settings.batch_sizes:
        bar.set_postfix_str(f"decode b={batch}")
        samplers = {
            name: decode_sampler(model, prompts[batch], settings.decode_tokens, clock)
            for name, model in vs.models.items()
        }
        samples = round_robin(samplers, settings.repeats, settings.warmup, bar.update)
        cells.append(
            {
                "batch_size": batch,
                "context_length": settings.context_length,
                "tokens": settings.decode_tokens,
                "variants": cell_summary(samples, seed=settings.seed),
            }
        )
    return cells


def _measure_memory(vs: VariantSet, settings: ProfileSettings, device: torch.device) -> dict[str, Any]:
    """Weights and peak activations of each variant during the largest prefill."""
    batch, length = max(settings.batch_sizes), max(settings.prompt_lengths)
    ids = _random_ids(batch, length, vs.base.config.vocab_size, settings.seed, device)
    variants = {}
    for name, model in vs.models.items():
        weights, activations = weight_bytes(model), peak_activation_bytes(model, ids, device)
        variants[name] = {
            "weights_mb": weights / MB,
            "peak_activation_mb": activations / MB,
            "peak_mb": (weights + activations) / MB,
        }
    return {"batch_size": batch, "prompt_length": length, "variants": variants}


def _time_switch(vs: VariantSet, settings: ProfileSettings, clock: Clock) -> dict[str, Any]:
    """Adapter switch methods, round-robin; then every switchable model goes back to its first adapter."""
    samplers = switch_samplers(vs, clock)
    if not samplers:
        return {}
    samples = round_robin(samplers, settings.switch_repeats, warmup=max(settings.warmup, 2))
    methods = {name: summarize(values) for name, values in samples.items()}
    reference = methods.get("zflora-swap", {}).get("median_ms")
    for summary in methods.values():
        summary["times_zflora_swap"] = summary["median_ms"] / reference if reference else None
    reset_adapters(vs)
    return {"repeats": settings.switch_repeats, "methods": methods}


def profile(settings: ProfileSettings, progress: bool = True) -> dict[str, Any]:
    """Build every variant, time prefill, decode and adapter switching, measure memory; return all figures."""
    from tqdm.auto import tqdm

    if not isinstance(settings, ProfileSettings):
        raise TypeError(f"profile takes a ProfileSettings, got {type(settings).__name__}")
    started = time.perf_counter()
    device = check_device(settings.device)
    previous_threads = torch.get_num_threads()
    threads = settings.threads or previous_threads
    torch.set_num_threads(threads)  # fixed for the whole run, recorded below
    clock = Clock(device, settings.clock)
    load_start = _load_average()
    try:
        with torch.no_grad():
            vs = build_variants(settings, device, getattr(torch, settings.dtype))
            build_s = time.perf_counter() - started
            vocab = vs.base.config.vocab_size
            prompts = {
                b: _random_ids(b, settings.context_length, vocab, settings.seed + b, device)
                for b in settings.batch_sizes
            }
            checks = check_variants(vs, prompts[min(settings.batch_sizes)])
            cells = len(settings.batch_sizes) * (len(settings.prompt_lengths) + 1)
            total = cells * settings.repeats * len(vs.models)
            with tqdm(
                total=total, desc="profile", unit="sample", disable=not progress, mininterval=2.0
            ) as bar:
                prefill = _time_prefill(vs, settings, clock, bar)
                decode = _time_decode(vs, settings, clock, bar, prompts)
            memory = _measure_memory(vs, settings, device) if settings.memory else {}
            switch = _time_switch(vs, settings, clock) if settings.switch else {}
    finally:
        torch.set_num_threads(previous_threads)

    return {
        "schema": SCHEMA,
        "settings": settings.to_dict(),
        "machine": machine_info(device),
        "run": {
            "device": str(device),
            "dtype": settings.dtype,
            "threads": threads,
            "r": settings.r,
            "repeats": settings.repeats,
            "warmup": settings.warmup,
            "batch_sizes": list(settings.batch_sizes),
            "prompt_lengths": list(settings.prompt_lengths),
            "decode_tokens": settings.decode_tokens,
            "decode_context": settings.context_length,
            "clock": settings.clock,
            "load_average_start": load_start,
            "load_average_end": _load_average(),
            "build_s": build_s,
            "elapsed_s": time.perf_counter() - started,
        },
        "model": {
            "source": settings.source,
            "layers": vs.base.config.num_hidden_layers,
            "shape": _shape(vs.base.config),
            "fused_widths": dict(vs.widths),
            "base_parameters": sum(p.numel() for p in vs.base.parameters()),
        },
        "variants": dict(vs.descriptions),
        "checks": checks,
        "prefill": prefill,
        "decode": decode,
        "memory": memory,
        "switch": switch,
    }


def run_profile(
    settings: ProfileSettings, out_dir: str | os.PathLike, progress: bool = True
) -> dict[str, Any]:
    """Profile, then write profile.json, profile.md, prefill.png, decode.png and switch.png into `out_dir`.

    The directory is replaced as a whole (atomic_dir): a killed run leaves the previous
    report or none, never a mix. Returns the profile dict with the file paths under "files".
    """
    from zflora.harness.profiling.report import write_report

    result = profile(settings, progress=progress)
    with atomic_dir(out_dir) as tmp:
        written = write_report(result, tmp)
    result["files"] = {key: str(Path(out_dir) / Path(path).name) for key, path in written.items()}
    return result
