"""Tests of the latency profiler's logic (never of timings): ordering, statistics, variants, switching, writers.

.venv/bin/pytest tests/test_profiling.py -q
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

import zflora
from zflora.harness.profiling import (
    ProfileSettings,
    add_profile_parser,
    build_variants,
    markdown_report,
    ratio_interval,
    rotated,
    round_robin,
    run_profile,
    summarize,
)
from zflora.harness.profiling.measure import (
    check_variants,
    greedy_tokens,
    peak_activation_bytes,
    switch_samplers,
)
from zflora.harness.profiling.settings import ModelShape
from zflora.harness.profiling.timing import Clock, cell_summary
from zflora.harness.profiling.variants import ADAPTERS, randomize_, share_weights, weight_bytes
from zflora.settings import settings_from_args

SHAPE = ModelShape(64, 2, 4, 2, 96, 128, tie_word_embeddings=True, head_dim=16, max_position_embeddings=256)


def tiny_base(tied: bool = True) -> torch.nn.Module:
    from transformers import LlamaForCausalLM

    shape = ModelShape(**{**SHAPE.__dict__, "tie_word_embeddings": tied})
    return randomize_(LlamaForCausalLM(shape.config()), seed=0, std=0.1).eval()


@pytest.fixture(scope="module")
def variants():
    settings = ProfileSettings(preset="tiny", r=8, pad_multiples=(16,))
    with torch.no_grad():
        yield build_variants(settings, torch.device("cpu"), torch.float32, base=tiny_base())


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(0, SHAPE.vocab_size, (2, 6), generator=torch.Generator().manual_seed(1))


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


# ---------------------------------------------------------------- interleaving and statistics
def test_rotated_order_lets_each_variant_lead_in_turn():
    names = ["base", "lora", "zflora"]
    assert [rotated(names, i) for i in range(4)] == [
        ["base", "lora", "zflora"],
        ["lora", "zflora", "base"],
        ["zflora", "base", "lora"],
        ["base", "lora", "zflora"],
    ]


def test_round_robin_warms_up_then_times_every_variant_once_per_repeat():
    calls: list[str] = []

    def sampler(name: str):
        def sample() -> float:
            calls.append(name)
            return float(len(calls))

        return sample

    samples = round_robin({n: sampler(n) for n in "abc"}, repeats=3, warmup=2)
    warm, timed = calls[:6], calls[6:]
    assert warm == list("abcabc")
    assert timed == list("abc") + list("bca") + list("cab")
    assert {n: len(s) for n, s in samples.items()} == {"a": 3, "b": 3, "c": 3}
    assert samples["a"] == [7.0, 12.0, 14.0]  # the value each call returned, in repeat order


def test_summary_and_ratio_of_medians_with_interval():
    summary = summarize([3.0, 1.0, 2.0, 10.0, 2.5])
    assert (summary["median_ms"], summary["min_ms"], summary["max_ms"], summary["n"]) == (2.5, 1.0, 10.0, 5)
    base = [10.0, 11.0, 9.0, 10.5, 9.5, 10.0]
    slower = [12.0, 13.2, 10.8, 12.6, 11.4, 12.0]  # exactly 1.2x per repeat
    r = ratio_interval(slower, base)
    assert r["ratio"] == pytest.approx(1.2)
    assert r["ci_low"] <= 1.2 <= r["ci_high"]
    assert r["paired_min"] == pytest.approx(1.2) and r["paired_max"] == pytest.approx(1.2)
    noisy = [12.0, 20.0, 10.8, 12.6, 30.0, 12.0]
    wide = ratio_interval(noisy, base)
    assert wide["ci_high"] - wide["ci_low"] > r["ci_high"] - r["ci_low"]
    same = ratio_interval(base, base)
    assert (same["ratio"], same["ci_low"], same["ci_high"], same["min_ratio"]) == (1.0, 1.0, 1.0, 1.0)
    assert r["min_ratio"] == pytest.approx(10.8 / 9.0)
    with pytest.raises(ValueError):
        ratio_interval([1.0, 2.0], [1.0])
    cells = cell_summary({"base": base, "x": slower})
    assert cells["x"]["ratio_to_base"]["ratio"] == pytest.approx(1.2)


def test_clock_measures_milliseconds():
    import time

    assert Clock("cpu", "wall").measure(lambda: time.sleep(0.01)) >= 10
    assert Clock("cpu", "cpu").measure(lambda: sum(range(200_000))) > 0
    with pytest.raises(ValueError):
        Clock("cpu", "sundial")


# ---------------------------------------------------------------- variants compute what they claim
def test_share_weights_shares_all_tensors_but_the_cloned_ones():
    base = tiny_base()
    shell = share_weights(base, clone={"model.layers.0.self_attn.q_proj.weight"})
    assert shell.model.embed_tokens.weight is base.model.embed_tokens.weight
    assert shell.lm_head.weight is shell.model.embed_tokens.weight  # still tied
    assert shell.model.layers[0].self_attn.q_proj.weight is not base.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(
        shell.model.layers[0].self_attn.q_proj.weight, base.model.layers[0].self_attn.q_proj.weight
    )


def test_zflora_with_zero_adapter_gives_the_base_models_tokens(prompt):
    base = tiny_base()
    zm = zflora.get_zflora_model(share_weights(base), zflora.ZFLoRAConfig(r=8))  # writers start at zero
    fused = zm.fuse()
    with torch.no_grad():
        expected = greedy_tokens(base, prompt, 5)
        assert torch.equal(greedy_tokens(zm, prompt, 5), expected)
        assert torch.equal(greedy_tokens(fused, prompt, 5), expected)
    torch.testing.assert_close(logits(fused, prompt), logits(base, prompt), atol=1e-5, rtol=1e-4)


def test_variants_compute_the_claimed_functions(variants, prompt):
    assert list(variants.models) == [
        "base",
        "lora",
        "lora-merged",
        "zflora",
        "zflora-fused",
        "zflora-fused-pad16",
    ]
    assert variants.widths == {"zflora-fused": 8, "zflora-fused-pad16": 16}
    base = logits(variants.models["base"], prompt)
    torch.testing.assert_close(base, logits(tiny_base(), prompt))  # merging did not touch the base weights
    lora = logits(variants.models["lora"], prompt)
    torch.testing.assert_close(logits(variants.models["lora-merged"], prompt), lora, atol=1e-5, rtol=1e-4)
    unfused = logits(variants.models["zflora"], prompt)
    for name in ("zflora-fused", "zflora-fused-pad16"):
        torch.testing.assert_close(logits(variants.models[name], prompt), unfused, atol=1e-5, rtol=1e-4)
    # non-zero adapters: nothing is skipped, every adapted variant differs from the base
    assert not torch.allclose(lora, base, atol=1e-3) and not torch.allclose(unfused, base, atol=1e-3)
    checks = check_variants(variants, prompt, tokens=3)
    assert checks["lora-merged"]["same_greedy_tokens"] and checks["zflora-fused"]["same_greedy_tokens"]
    assert checks["zflora"]["differs_from_base"] > 1e-3


def test_every_timed_model_is_frozen_alike(variants):
    # a fused model built fresh requires grad, the base wrapped by PEFT/zFLoRA does not: torch.matmul
    # then takes different kernels for the LM head's last-position slice at batch > 1
    for name, model in variants.models.items():
        assert not any(p.requires_grad for p in model.parameters()), name


def test_memory_counts_shared_weights_once(variants, prompt):
    sizes = {name: weight_bytes(model) for name, model in variants.models.items()}
    assert sizes["lora-merged"] == sizes["base"]
    assert sizes["base"] < sizes["zflora-fused"] < sizes["zflora-fused-pad16"]
    assert sizes["lora"] > sizes["base"] and sizes["zflora"] > sizes["base"]
    with torch.no_grad():
        assert peak_activation_bytes(variants.models["base"], prompt, torch.device("cpu")) > 0


def test_switch_timing_really_switches_adapters(variants, prompt):
    models = variants.models
    before = {name: logits(models[name], prompt) for name in ("zflora-fused", "lora-merged")}
    from zflora.method.fusion import fused_meta

    def held() -> tuple:
        """Which adapter each switchable model holds now."""
        return (
            fused_meta(models["zflora-fused"])["adapter"],
            variants.peft_merged.active_adapter,
            variants.peft_unmerged.active_adapter,
            variants.zflora.active_adapter,
        )

    class SwitchClock(Clock):
        """The CPU clock, also noting what the models held before and after each timed call."""

        def __init__(self):
            super().__init__("cpu")
            self.calls: list[tuple[tuple, tuple, float]] = []

        def measure(self, fn):
            before = held()
            elapsed = super().measure(fn)
            self.calls.append((before, held(), elapsed))
            return elapsed

    clock = SwitchClock()
    samplers = switch_samplers(variants, clock)
    assert set(samplers) == {
        "zflora-swap",
        "zflora-swap-first-use",
        "zflora-swap-from-disk",
        "lora-merged-switch",
        "lora-set-adapter",
        "zflora-set-adapter",
    }
    try:
        with torch.no_grad():
            for position, name in enumerate(
                ("zflora-swap", "lora-merged-switch", "lora-set-adapter", "zflora-set-adapter")
            ):
                figure = samplers[name]()
                held_before, held_after, elapsed = clock.calls[-1]
                # the figure is the clock's reading of this call, and the switch happened inside it
                assert figure == elapsed and len(clock.calls) == position + 1, name
                assert (held_before[position], held_after[position]) == tuple(ADAPTERS), name
            assert variants.zflora.active_adapter == ADAPTERS[1]
            fused, unfused = logits(models["zflora-fused"], prompt), logits(models["zflora"], prompt)
            torch.testing.assert_close(fused, unfused, atol=1e-5, rtol=1e-4)
            assert not torch.allclose(fused, before["zflora-fused"], atol=1e-3)
            merged, unmerged = logits(models["lora-merged"], prompt), logits(models["lora"], prompt)
            torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-4)
            assert not torch.allclose(merged, before["lora-merged"], atol=1e-3)
            samplers["zflora-swap-first-use"]()  # toggles on its own: a fresh AdapterWeights of the second
            torch.testing.assert_close(logits(models["zflora-fused"], prompt), unfused, atol=1e-5, rtol=1e-4)
            samplers["zflora-swap-first-use"]()  # ... then of the first adapter
            torch.testing.assert_close(
                logits(models["zflora-fused"], prompt), before["zflora-fused"], atol=1e-5, rtol=1e-4
            )
            # toggles on its own: the second adapter, read from its folder
            samplers["zflora-swap-from-disk"]()
            torch.testing.assert_close(logits(models["zflora-fused"], prompt), unfused, atol=1e-5, rtol=1e-4)
    finally:
        from zflora.harness.profiling.measure import reset_adapters

        reset_adapters(variants)
    torch.testing.assert_close(
        logits(models["lora-merged"], prompt), before["lora-merged"], atol=1e-5, rtol=1e-4
    )


def test_a_local_model_directory_is_profiled_as_saved(tmp_path, prompt):
    from zflora.harness.profiling import build_base_model

    base = tiny_base(tied=False)
    base.save_pretrained(tmp_path / "tiny")
    settings = ProfileSettings(model=str(tmp_path / "tiny"), r=8)
    assert settings.source == str(tmp_path / "tiny")
    loaded = build_base_model(settings, torch.device("cpu"), torch.float32)
    torch.testing.assert_close(logits(loaded, prompt), logits(base, prompt))
    maps = Path("/proc/self/maps")
    if maps.is_file():  # Linux: no weight is read from the mapped safetensors file (see in_process_memory)
        mapped = [
            [int(a, 16) for a in line.split()[0].split("-")]
            for line in maps.read_text().splitlines()
            if line.endswith(".safetensors")
        ]
        assert not any(start <= p.data_ptr() < end for p in loaded.parameters() for start, end in mapped)
    with pytest.raises(zflora.ZFLoRAError, match="presets only"):
        ProfileSettings(model=str(tmp_path / "tiny"), layers=1)


# ---------------------------------------------------------------- settings
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"preset": "llama-9000"}, "unknown preset"),
        ({"r": 0}, "r: Input should be greater than 0"),
        ({"r": -4}, "r: Input should be greater than 0"),
        ({"prompt_lengths": ()}, "prompt_lengths: Tuple should have at least 1 item"),
        ({"batch_sizes": (1, 0)}, r"batch_sizes.1: Input should be greater than 0"),
        ({"dtype": "float8"}, "dtype"),
        ({"device": "tpu"}, "device"),
        ({"repeats": 0}, "repeats"),
        ({"layers": 0}, "layers"),
        ({"clock": "cpu", "device": "cuda"}, "clock"),
        ({"variants": ("lora",)}, "must include 'base'"),
        ({"variants": ("base", "dora")}, "must include 'base'"),
        ({"model": "/nonexistent/model"}, "not a model directory"),
    ],
)
def test_bad_settings_raise_zflora_errors(kwargs, message):
    with pytest.raises(zflora.ZFLoRAError, match=message):
        ProfileSettings(**kwargs)


def test_settings_round_trip_through_a_params_mapping():
    s = ProfileSettings(preset="tiny", layers=2, batch_sizes=(1, 4), pad_multiples=(64,))
    assert ProfileSettings.from_dict(s.to_dict()) == s
    with pytest.raises(zflora.ZFLoRAError, match=r"params.yaml profile: unknown key\(s\) \['repeat'\]"):
        ProfileSettings.from_dict({"repeat": 3}, source="params.yaml profile")
    with pytest.raises(zflora.ZFLoRAError, match="params.yaml profile: r: Input should be greater than 0"):
        ProfileSettings.from_dict({"r": 0}, source="params.yaml profile")


def test_settings_normalise_and_describe_themselves():
    s = ProfileSettings(
        preset="tiny", batch_sizes=[4, 1, 4], prompt_lengths=8, variants=("zflora-fused", "base")
    )
    assert s.batch_sizes == (4, 1) and s.prompt_lengths == (8,) and s.variants == ("base", "zflora-fused")
    assert s.context_length == 8 and s.source == "tiny"
    assert s.to_dict()["batch_sizes"] == [4, 1]


# ---------------------------------------------------------------- end to end: CLI, profile, writers
def test_cli_profile_writes_json_markdown_and_plots(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="zflora")
    add_profile_parser(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "profile"
    args = parser.parse_args(
        [
            "profile",
            "--preset",
            "tiny",
            "--layers",
            "1",
            "--r",
            "8",
            "--batch-sizes",
            "1",
            "2",
            "--prompt-lengths",
            "4",
            "--decode-tokens",
            "2",
            "--repeats",
            "2",
            "--warmup",
            "0",
            "--switch-repeats",
            "2",
            "--threads",
            "1",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "| variant | prefill b=1 L=4 |" in printed and str(out / "profile.json") in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "decode.png",
        "prefill.png",
        "profile.json",
        "profile.md",
        "switch.png",
    ]
    for png in ("prefill.png", "decode.png", "switch.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads((out / "profile.json").read_text())
    assert result["run"]["threads"] == 1 and result["model"]["layers"] == 1 and result["settings"]["r"] == 8
    assert {"platform", "cpu", "torch", "transformers", "peft"} <= set(result["machine"])
    assert [c["batch_size"] for c in result["decode"]] == [1, 2]
    cell = result["prefill"][0]["variants"]
    assert set(cell) == {"base", "lora", "lora-merged", "zflora", "zflora-fused"}
    assert len(cell["zflora-fused"]["samples_ms"]) == 2 and cell["base"]["ratio_to_base"]["ratio"] == 1.0
    assert set(result["switch"]["methods"]) >= {"zflora-swap", "lora-merged-switch", "lora-set-adapter"}
    assert (
        result["memory"]["variants"]["zflora-fused"]["weights_mb"]
        > result["memory"]["variants"]["base"]["weights_mb"]
    )
    assert all(c.get("same_greedy_tokens", True) for c in result["checks"].values())
    assert (out / "profile.md").read_text() == markdown_report(result)


def test_cli_rejects_bad_values_with_zflora_error():
    parser = argparse.ArgumentParser(prog="zflora")
    add_profile_parser(parser.add_subparsers(dest="command", required=True))
    with pytest.raises(zflora.ZFLoRAError, match="r: Input should be greater than 0"):
        settings_from_args(parser.parse_args(["profile", "--preset", "tiny", "--r", "0"]), ProfileSettings)


def test_run_profile_without_switch_or_memory_still_writes_every_file(tmp_path):
    settings = ProfileSettings(
        preset="tiny",
        layers=1,
        r=8,
        batch_sizes=(1,),
        prompt_lengths=(3,),
        decode_tokens=1,
        repeats=1,
        warmup=0,
        variants=("base", "zflora-fused"),
        memory=False,
        switch=False,
    )
    result = run_profile(settings, tmp_path / "p", progress=False)
    assert set(result["files"]) == {"json", "markdown", "prefill", "decode", "switch"}
    assert result["switch"] == {} and result["memory"] == {}
    assert "zflora-fused" in (tmp_path / "p" / "profile.md").read_text()


def test_the_profile_options_are_the_settings_fields():
    """`zflora profile` derives its options from ProfileSettings: every field, nothing copied by hand."""
    from zflora.cli import build_parser

    args = build_parser().parse_args(
        [
            "profile",
            "--preset",
            "tiny",
            "--batch-sizes",
            "1",
            "4",
            "--no-memory",
            "--variants",
            "base",
            "zflora-fused",
        ]
    )
    settings = settings_from_args(args, ProfileSettings)
    assert settings == ProfileSettings(
        preset="tiny", batch_sizes=(1, 4), memory=False, variants=("base", "zflora-fused")
    )
    options = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["profile"]._actions}
    assert set(ProfileSettings.model_fields) <= options
