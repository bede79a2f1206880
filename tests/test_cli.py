"""The `zflora` console script: fuse, swap and generate, and one-line errors for user mistakes."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import randomize_adapter, tiny_model

import zflora
from zflora.cli import main
from zflora.method.loading import load_causal_lm

PROMPT = "the cat sat"


@pytest.fixture
def adapter_dir(model_dir, tmp_path):
    base, _ = load_causal_lm(model_dir)
    zm = zflora.get_zflora_model(base, zflora.ZFLoRAConfig(r=6), adapter_name="task")
    randomize_adapter(zm, std=0.3)
    return zm.save_adapter(tmp_path / "adapter")


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_fuse_generate_and_swap_round_trip(model_dir, adapter_dir, tmp_path, capsys):
    fused_dir = tmp_path / "fused"
    code, out, _ = run(
        capsys, "fuse", "--base", str(model_dir), "--adapter", str(adapter_dir), "--out", str(fused_dir)
    )
    assert code == 0 and "hidden 64 -> 72" in out
    config = json.loads((fused_dir / "config.json").read_text())
    assert config["hidden_size"] == 72 and config["zflora"]["adapter"] == "task"
    assert (fused_dir / "tokenizer.json").exists()

    _, fused_text, _ = run(
        capsys, "generate", "--model", str(fused_dir), "--prompt", PROMPT, "--max-new-tokens", "8"
    )
    _, unfused_text, _ = run(
        capsys,
        "generate",
        "--model",
        str(model_dir),
        "--adapter",
        str(adapter_dir),
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        "8",
    )
    _, base_text, _ = run(
        capsys, "generate", "--model", str(model_dir), "--prompt", PROMPT, "--max-new-tokens", "8"
    )
    assert fused_text == unfused_text
    assert fused_text != base_text  # the adapter changes the greedy continuation

    code, out, _ = run(
        capsys, "swap", "--model", str(fused_dir), "--adapter", "none", "--out", str(tmp_path / "as-base")
    )
    assert code == 0 and "base model" in out
    _, swapped_text, _ = run(
        capsys, "generate", "--model", str(tmp_path / "as-base"), "--prompt", PROMPT, "--max-new-tokens", "8"
    )
    assert swapped_text == base_text
    code, _, _ = run(capsys, "swap", "--model", str(tmp_path / "as-base"), "--adapter", str(adapter_dir))
    assert code == 0
    _, back_text, _ = run(
        capsys, "generate", "--model", str(tmp_path / "as-base"), "--prompt", PROMPT, "--max-new-tokens", "8"
    )
    assert back_text == fused_text


def test_generate_applies_an_adapter_to_a_fused_model_by_swapping(model_dir, adapter_dir, tmp_path, capsys):
    run(
        capsys,
        "fuse",
        "--base",
        str(model_dir),
        "--adapter",
        str(adapter_dir),
        "--out",
        str(tmp_path / "fused"),
    )
    run(capsys, "swap", "--model", str(tmp_path / "fused"), "--adapter", "none")
    _, via_swap, _ = run(
        capsys,
        "generate",
        "--model",
        str(tmp_path / "fused"),
        "--adapter",
        str(adapter_dir),
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        "6",
    )
    _, unfused, _ = run(
        capsys,
        "generate",
        "--model",
        str(model_dir),
        "--adapter",
        str(adapter_dir),
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        "6",
    )
    assert via_swap == unfused


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["fuse", "--base", "{tmp}/missing", "--adapter", "{adapter}", "--out", "{tmp}/o"],
            "model path .* does not exist",
        ),
        (
            ["fuse", "--base", "{base}", "--adapter", "{tmp}/missing", "--out", "{tmp}/o"],
            "adapter path .* does not exist",
        ),
        (["swap", "--model", "{base}", "--adapter", "none"], "not a zFLoRA-fused model"),
        (["generate", "--model", "{tmp}", "--prompt", "x"], "has no config.json"),
        (
            ["generate", "--model", "{base}", "--prompt", "x", "--max-new-tokens", "500"],
            "exceeds the model's context of 128",
        ),
        (
            ["generate", "--model", "models:/zflora-x@latest", "--prompt", "x"],
            # the message, not the echoed argument: what failed, where, why and what to do
            r"^zflora: error: cannot fetch models:/zflora-x@latest from the MLflow registry at "
            r"sqlite:///.*\(.*zflora-x.* not found\); check the name and alias",
        ),
    ],
)
def test_user_errors_are_one_line(argv, message, model_dir, adapter_dir, tmp_path, capsys, monkeypatch):
    # a registry lookup must not create the checkout's mlflow.db
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    argv = [a.format(tmp=tmp_path, base=model_dir, adapter=adapter_dir) for a in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2
    # progress bars of model loading may precede it; the error itself is one line
    last = err.rstrip("\n").split("\n")[-1].split("\r")[-1]
    assert last.startswith("zflora: error: ") and err.count("zflora: error") == 1, err
    assert "Traceback" not in err
    assert re.search(message, last), err


def test_adapter_for_another_base_fails_in_the_cli(model_dir, tmp_path, capsys):
    other = zflora.get_zflora_model(tiny_model("llama", seed=7, vocab=110), zflora.ZFLoRAConfig(r=6))
    other.save_adapter(tmp_path / "foreign")
    code, _, err = run(
        capsys,
        "fuse",
        "--base",
        str(model_dir),
        "--adapter",
        str(tmp_path / "foreign"),
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 2 and "another base model" in err
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_console_script_exits_nonzero_without_traceback(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "zflora.cli", "swap", "--model", str(tmp_path / "nope"), "--adapter", "none"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().startswith("zflora: error: model path")
