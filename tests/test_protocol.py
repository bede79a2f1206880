"""The comparison protocol: equal-parameter-budget methods, learning-rate selection on a
validation split carved from the training data, and several seeds reported as mean and range."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model

from zflora.harness import methods
from zflora.harness.data import get_task
from zflora.harness.evaluate import EvaluateSettings, build_variants
from zflora.harness.train import TrainSettings, train_method
from zflora.harness.tune import select_learning_rate


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("tied", [True, False])
def test_eqparams_methods_match_the_other_methods_budget(tied):
    adapter = methods.AdapterSettings(r=8)
    count = {
        m: trainable(methods.prepare(m, tiny_model("llama", tied=tied), adapter))
        for m in methods.METHODS[1:3]
    }
    for method, reference in methods.EQUAL_BUDGET.items():
        base = tiny_model("llama", tied=tied)
        per_rank = methods.trainable_per_rank(method, base)
        matched = methods.prepare(method, base, adapter)
        # the closest rank: within half a rank's worth of parameters of the reference budget
        assert abs(trainable(matched) - count[reference]) <= per_rank / 2, (method, trainable(matched), count)
        assert methods.adapter_for(method, adapter, tiny_model("llama", tied=tied)).r != adapter.r
    # the per-rank counts are what training really makes trainable
    for method in ("lora", "zflora"):
        assert count[method] == methods.trainable_per_rank(method, tiny_model("llama", tied=tied)) * 8


@pytest.mark.parametrize("method", ["lora-eqparams", "zflora-eqparams"])
def test_eqparams_methods_train_save_and_serve_in_every_form(method, model_dir, tmp_path):
    examples = get_task("embedded-math").load("train", n=8, seed=0)
    settings = TrainSettings(max_steps=2, batch_size=4, save_steps=100)
    adapter = methods.AdapterSettings(r=4)
    summary = train_method(model_dir, examples, tmp_path / "out", method, settings, adapter, progress=False)
    assert summary["r"] == methods.adapter_for(method, adapter, tiny_model("llama", tied=True)).r != 4
    forms = build_variants(method, model_dir, tmp_path / "out")
    assert list(forms) == [method, f"{method}-{'merged' if method.startswith('lora') else 'fused'}"]
    ids = torch.randint(3, 90, (1, 10))
    (first, _), (second, _) = forms.values()
    with torch.no_grad():
        a, b = first(input_ids=ids).logits, second(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


def test_learning_rate_selection_reads_validation_and_skips_diverged_candidates(
    model_dir, tmp_path, capsys, monkeypatch
):
    import zflora.harness.tune as tune
    from zflora.harness.train import TrainingDiverged

    task = get_task("embedded-math")
    pool = task.load("train", n=24, seed=0)
    data = {"embedded-math": (pool[:16], pool[16:])}
    validation_seen = []
    real_train, real_evaluate = tune.train_method, tune.evaluate_examples

    def diverging_at_09(base, examples, out, method, settings, **kwargs):
        if settings.learning_rate(method) == 0.9:  # (training's own check is tested in test_reliability)
            raise TrainingDiverged("training diverged: loss is nan at step 3")
        return real_train(base, examples, out, method, settings, **kwargs)

    def recording(model, tokenizer, spec, examples, *args):
        validation_seen.append([e.prompt for e in examples])
        return real_evaluate(model, tokenizer, spec, examples, *args)

    monkeypatch.setattr(tune, "train_method", diverging_at_09)
    monkeypatch.setattr(tune, "evaluate_examples", recording)
    settings = TrainSettings(max_steps=4, batch_size=4, save_steps=100)
    result = select_learning_rate(
        model_dir,
        "zflora",
        [0.9, 1e-3, 3e-2],
        data,
        settings,
        evaluate=EvaluateSettings(max_new_tokens=8),  # the tiny model's context is 128 tokens
        work_dir=tmp_path / "tune",
        progress=False,
    )
    assert result["tuned"] and result["diverged"] == ["0.9"], result
    assert result["scores"]["0.9"] == {"mean": None}
    means = {float(k): v["mean"] for k, v in result["scores"].items() if v["mean"] is not None}
    assert set(means) == {1e-3, 3e-2}
    assert result["learning_rate"] in means  # which one wins: test_the_best_mean_validation_score_wins
    assert validation_seen == [[e.prompt for e in pool[16:]]] * 2  # scored on validation only
    assert not any((tmp_path / "tune").rglob("*.safetensors"))  # candidates are not kept
    assert "diverged" in capsys.readouterr().out


def test_trials_in_parallel_processes_select_what_one_process_selects(model_dir, tmp_path):
    """tune.jobs: the candidate x task trials run in spawned workers; scores, the selection and
    the kept runs are those of the serial loop."""
    tasks = ("embedded-math", "embedded-commonsense")
    data = {}
    for name in tasks:
        pool = get_task(name).load("train", n=12, seed=0)
        data[name] = (pool[:8], pool[8:])
    settings = TrainSettings(max_steps=3, batch_size=4, save_steps=100)
    results = {}
    for jobs in (1, 2):
        results[jobs] = select_learning_rate(
            model_dir,
            "zflora",
            [1e-3, 3e-2],
            data,
            settings,
            evaluate=EvaluateSettings(max_new_tokens=8),
            work_dir=tmp_path / f"work{jobs}",
            progress=False,
            keep_dir=tmp_path / f"keep{jobs}",
            jobs=jobs,
        )
    assert results[2] == results[1]
    assert set(results[1]["scores"]) == {"0.001", "0.03"}
    kept = {
        j: sorted(str(p.relative_to(tmp_path / f"keep{j}")) for p in (tmp_path / f"keep{j}").glob("*/*"))
        for j in (1, 2)
    }
    assert kept[2] == kept[1] and kept[1], kept
    assert not (tmp_path / "work2").exists()


# validation scores (percent) by task and learning rate: 3e-3 and 1e-2 tie on the mean (55.0), above
# the rest; 1e-3 is the best on the first task alone and 3e-2 would win if it had not diverged
SCORES = {
    "embedded-math": {1e-3: 90.0, 3e-3: 50.0, 1e-2: 60.0, 3e-2: 99.0, 1e-1: 20.0},
    "embedded-commonsense": {1e-3: 0.0, 3e-3: 60.0, 1e-2: 50.0, 3e-2: 99.0, 1e-1: 30.0},
}


@pytest.mark.parametrize(
    "candidates,winner",
    [
        ([1e-3, 3e-3, 1e-2, 3e-2, 1e-1], 3e-3),
        ([1e-1, 3e-2, 1e-2, 3e-3, 1e-3], 1e-2),  # the same tie, the other order: the earlier one wins
        ([1e-1, 1e-3], 1e-3),  # 45.0 beats 25.0
    ],
)
def test_the_best_mean_validation_score_wins(candidates, winner, tmp_path, monkeypatch):
    """Stub training and scoring: each rate gets the scores above, so the winner is known in advance."""
    import zflora.harness.tune as tune
    from zflora.harness.data import Example
    from zflora.harness.train import TrainingDiverged

    trained: list[tuple[float, str]] = []

    def train(base, examples, out, method, settings, **kwargs):
        rate = settings.learning_rate(method)
        if rate == 3e-2:
            raise TrainingDiverged("training diverged: loss is nan at step 2")
        trained.append((rate, out.name))

    def scored(model, tokenizer, spec, examples, *args):
        rate, task = trained[-1]
        assert task == spec.name and examples == data[task][1]  # scored on that task's validation split
        return {"accuracy": SCORES[task][rate] / 100}, []

    monkeypatch.setattr(tune, "train_method", train)
    monkeypatch.setattr(tune, "build_variants", lambda method, *args, **kwargs: {method: (None, None)})
    monkeypatch.setattr(tune, "evaluate_examples", scored)
    example = Example("0", "q", " a", "a")
    data = {task: ([example], [Example(task, "v", " a", "a")]) for task in SCORES}
    result = select_learning_rate("base", "zflora", candidates, data, work_dir=tmp_path, progress=False)
    assert result["learning_rate"] == winner, result
    assert result["scores"].get("0.03", {"mean": None}) == {"mean": None}  # diverged: no score, cannot win
    for rate in candidates:
        if rate != 3e-2:
            per_task = {task: SCORES[task][rate] for task in SCORES}
            assert result["scores"][f"{rate:g}"] == {**per_task, "mean": sum(per_task.values()) / 2}


def test_one_candidate_trains_nothing_and_no_validation_is_an_error(tmp_path):
    result = select_learning_rate("no-such-base", "lora", [2e-3], {}, work_dir=tmp_path)
    assert result == {**result, "learning_rate": 2e-3, "tuned": False, "scores": {}}
    from zflora.errors import ZFLoRAError

    with pytest.raises(ZFLoRAError, match="set data.validation_size > 0"):
        select_learning_rate(
            "no-such-base", "lora", [1e-3, 2e-3], {"embedded-math": ([], [])}, work_dir=tmp_path
        )


@pytest.mark.parametrize("task", ["embedded-math", "embedded-commonsense"])
def test_validation_is_held_out_from_training_and_test(task, tmp_path, monkeypatch):
    """No validation prompt is a training prompt: commonsense's small question space made a
    carved-off tail of the training pool 59/60 training prompts (selection for memorisation)."""
    from tasks.data import prepare_task

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # the default experiment's artifacts go to ./mlruns, not the checkout
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("prepare")  # not whichever experiment an earlier test left active
    params = {"train_size": 2000, "validation_size": 60, "test_size": 60, "seed": 0, "data_dir": None}
    with mlflow.start_run():
        stats = prepare_task.fn(task, params, str(tmp_path / "data"))
    rows = {
        split: {
            json.loads(line)["prompt"]
            for line in (tmp_path / "data" / f"{split}.jsonl").read_text().splitlines()
        }
        for split in ("train", "validation", "test")
    }
    assert len(rows["validation"]) == stats["validation_examples"] == 60
    assert stats["validation_prompts_seen_in_train"] == 0 and not rows["validation"] & rows["train"]
    assert not rows["validation"] & rows["test"]
    assert rows["validation"] == {e.prompt for e in get_task(task).load("validation", n=60, seed=0)}


def test_real_tasks_carve_validation_from_training_data_minus_training_prompts(tmp_path, monkeypatch):
    import mlflow

    import tasks.data as data
    from zflora.harness.data.example import Example

    pool = [Example(str(i), f"q{i % 7}", " a", "a") for i in range(12)]  # prompts repeat after 7
    test = [Example(f"t{i}", f"t{i}", " a", "a") for i in range(3)]

    class Spec:
        source, category, metric = "hub", "math", "accuracy"

        def load(self, split, **options):
            return list(pool if split == "train" else test)

    monkeypatch.setattr(data, "get_task", lambda name: Spec())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("prepare")
    params = {"train_size": 5, "validation_size": 7, "test_size": 3, "seed": 0, "data_dir": None}
    with mlflow.start_run():
        stats = data.prepare_task.fn("gsm8k", params, str(tmp_path / "data"))
    validation = [
        json.loads(line)["prompt"]
        for line in (tmp_path / "data" / "validation.jsonl").read_text().splitlines()
    ]
    assert validation == ["q5", "q6"]  # the pool's tail minus the prompts the five training rows hold
    assert stats["validation_prompts_seen_in_train"] == 0


def test_report_shows_seed_means_ranges_and_how_each_rate_was_chosen(tmp_path):
    from tasks.report import accuracy_markdown, collect, tune_markdown

    def put(path, data):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))

    put(
        tmp_path / "eval/t/base/metrics.json",
        {"metric": "accuracy", "accuracy": 0.1, "prediction_agreement": 1.0},
    )
    put(
        tmp_path / "eval/t/zflora/metrics.json",
        {
            "metric": "accuracy",
            "accuracy": 0.7,
            "prediction_agreement": 1.0,
            "seeds": {"0": 70.0, "1": 80.0},
            "score_mean": 75.0,
            "score_min": 70.0,
            "score_max": 80.0,
        },
    )
    put(tmp_path / "train/t/zflora/method.json", {"trainable_parameters": 1234, "r": 16})
    put(
        tmp_path / "tune/zflora/selection.json",
        {
            "learning_rate": 0.01,
            "tuned": True,
            "tasks": ["t"],
            "steps": -1,
            "scores": {
                "0.005": {"t": 60.0, "mean": 60.0},
                "0.01": {"t": 65.0, "mean": 65.0},
                "0.02": {"mean": None},
            },
        },
    )
    rows = collect(tmp_path / "eval", tmp_path / "train", tmp_path / "tune", ["t"], ["base", "zflora"])
    assert rows["zflora"]["scores"]["t"] == 75.0 and rows["zflora"]["ranges"]["t"] == [70.0, 80.0]
    table = accuracy_markdown(rows, ["t"], "title")
    assert "Mean over 2 training seeds" in table
    assert "| zflora | 16 | 75.0 [70.0, 80.0] | 75.0 | 1,234 | 0.01 (validation) | 100% |" in table
    assert "| base | - | 10.0 | 10.0 | 0 | - | 100% |" in table
    tuned = tune_markdown(tmp_path / "tune", ["base", "zflora"])
    assert "0.005: 60.0; **0.01: 65.0**; 0.02: diverged" in tuned and "| base |" not in tuned


def test_the_first_seed_reuses_the_tune_stages_winning_run_and_only_that(model_dir, tmp_path):
    """The winning candidate of a task is the train stage's first-seed run (same base, data,
    settings, adapter: training is deterministic): it is copied, not trained again. A run
    with other settings trains."""
    from zflora.harness.train import RUN_RECORD

    examples = get_task("embedded-math").load("train", n=8, seed=0)
    validation = get_task("embedded-math").load("validation", n=4, seed=0)
    settings = TrainSettings(max_steps=2, batch_size=4, save_steps=100, logging_steps=1)
    adapter = methods.AdapterSettings(r=4)
    kept = tmp_path / "kept"
    selection = select_learning_rate(
        model_dir,
        "zflora",
        [1e-3, 2e-3],
        {"embedded-math": (examples, validation)},
        settings=settings,
        adapter=adapter,
        work_dir=tmp_path / "work",
        evaluate=EvaluateSettings(max_new_tokens=8),
        progress=False,
        keep_dir=kept,
    )
    label = f"{selection['learning_rate']:g}"
    winner = kept / label / "embedded-math"
    assert (winner / RUN_RECORD).is_file() and not (tmp_path / "work").exists()
    chosen = settings.model_copy(update={"learning_rates": {"zflora": selection["learning_rate"]}})
    reused = train_method(
        model_dir, examples, tmp_path / "seed0", "zflora", chosen, adapter, progress=False, reuse=winner
    )
    assert reused["reused_from"] == str(winner)
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (tmp_path / "seed0" / name).read_bytes() == (winner / name).read_bytes()
    # the same run trained again gives the same adapter (up to floating-point summation order:
    # kernels may pick other code paths for other allocations), so reusing it changes nothing
    fresh = train_method(model_dir, examples, tmp_path / "fresh", "zflora", chosen, adapter, progress=False)
    assert "reused_from" not in fresh
    assert [step for step, _ in fresh["loss_curve"]] == [step for step, _ in reused["loss_curve"]]
    assert all(abs(a[1] - b[1]) < 1e-4 for a, b in zip(fresh["loss_curve"], reused["loss_curve"]))
    from safetensors.torch import load_file

    weights = "adapter_model.safetensors"
    again, kept_weights = load_file(tmp_path / "fresh" / weights), load_file(winner / weights)
    assert again.keys() == kept_weights.keys()
    assert all(torch.allclose(again[k], kept_weights[k], rtol=1e-4, atol=1e-6) for k in again)
    # another run (another seed) does not take the winner's weights
    other = chosen.model_copy(update={"seed": 1})
    trained = train_method(
        model_dir, examples, tmp_path / "seed1", "zflora", other, adapter, progress=False, reuse=winner
    )
    assert "reused_from" not in trained
