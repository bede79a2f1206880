"""Timing harness: a device-aware clock, round-robin interleaving and robust statistics.

A noisy machine (other processes, frequency scaling, a shared VM) drifts over minutes.
Timing variant A for a minute and then variant B for a minute turns that drift into a
fake difference; timing every variant once per repeat, in rotating order, spreads it
evenly. Ratios to the base model are reported as ratios of medians with a paired
bootstrap interval over repeats (each repeat holds one sample of every variant).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from zflora.harness.profiling.settings import CLOCKS


class Clock:
    """Milliseconds of a callable.

    kind="wall": elapsed real time (on CUDA: synchronised, measured with CUDA events).
    kind="cpu": CPU time of this process (CPU devices only). On a machine shared with
    other busy processes it leaves out the time the scheduler gave to them; with more
    than one thread it also counts threads spinning at OpenMP barriers, so use it with
    threads=1.
    """

    def __init__(self, device: torch.device | str, kind: str = "wall") -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        if kind not in CLOCKS or (kind == "cpu" and self.cuda):
            raise ValueError(f"clock must be one of {CLOCKS} ('cpu' only on CPU devices), got {kind!r}")
        self.kind = kind

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def measure(self, fn: Callable[[], Any]) -> float:
        """Run `fn` once and return its duration in milliseconds (device work included)."""
        if self.cuda:
            self.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
        now = time.process_time_ns if self.kind == "cpu" else time.perf_counter_ns
        started = now()
        fn()
        return (now() - started) / 1e6


def rotated(names: Sequence[str], repeat: int) -> list[str]:
    """The order of repeat `repeat`: `names` rotated left by `repeat` places (each name leads in turn)."""
    names = list(names)
    if not names:
        return []
    shift = repeat % len(names)
    return names[shift:] + names[:shift]


def round_robin(
    samplers: dict[str, Callable[[], float]],
    repeats: int,
    warmup: int = 1,
    on_sample: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Warm every sampler up, then call each once per repeat in rotating order.

    A sampler does its own untimed setup and returns the milliseconds of its timed part.
    Returns the samples of each sampler, in repeat order (index i of every list comes
    from the same repeat, which makes paired statistics possible).
    """
    names = list(samplers)
    for _ in range(warmup):
        for name in names:
            samplers[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection in the middle of one sample is noise, not latency
    try:
        for repeat in range(repeats):
            for name in rotated(names, repeat):
                samples[name].append(samplers[name]())
                if on_sample is not None:
                    on_sample()
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """Median, quartiles, min and max of a list of milliseconds (plus the samples themselves)."""
    if not samples:
        raise ValueError("summarize needs at least one sample")
    values = sorted(float(s) for s in samples)
    q1, q3 = np.percentile(values, [25, 75]).tolist() if len(values) > 1 else (values[0], values[0])
    return {
        "median_ms": statistics.median(values),
        "q1_ms": q1,
        "q3_ms": q3,
        "min_ms": values[0],
        "max_ms": values[-1],
        "n": len(values),
        "samples_ms": [float(s) for s in samples],
    }


def ratio_interval(
    samples: Sequence[float],
    base_samples: Sequence[float],
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Ratio of medians (samples / base) with a paired bootstrap interval over repeats.

    Sample i of both lists must come from the same repeat. Also returns the median, min
    and max of the per-repeat ratios (drift between repeats cancels in them) and the
    ratio of the minimums.
    """
    a = np.asarray(samples, dtype=np.float64)
    b = np.asarray(base_samples, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"ratio_interval needs paired samples of equal length, got {a.size} and {b.size}")
    ratio = float(np.median(a) / np.median(b))
    paired = a / b
    if a.size == 1:
        low = high = ratio
    else:
        rng = np.random.default_rng(seed)
        index = rng.integers(0, a.size, size=(resamples, a.size))
        boot = np.median(a[index], axis=1) / np.median(b[index], axis=1)
        tail = (1.0 - level) / 2.0
        low, high = (float(v) for v in np.quantile(boot, [tail, 1.0 - tail]))
    return {
        "ratio": ratio,
        "ci_low": low,
        "ci_high": high,
        "level": level,
        "paired_median": float(np.median(paired)),
        "paired_min": float(paired.min()),
        "paired_max": float(paired.max()),
        # noise from other processes only ever adds time: the fastest samples show the least of it
        "min_ratio": float(a.min() / b.min()),
    }


def cell_summary(
    samples: dict[str, list[float]], base: str = "base", seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Per-variant summaries of one cell, each with its ratio to `base` (when timed)."""
    out: dict[str, dict[str, Any]] = {}
    for name, values in samples.items():
        summary = summarize(values)
        if base in samples:
            summary["ratio_to_base"] = ratio_interval(values, samples[base], seed=seed)
        out[name] = summary
    return out
