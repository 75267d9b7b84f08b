"""`deephedge benchmark suite`: the shipped manifest and task configs, a tiny two-task suite end to end,
and manifest errors that name the key.  No timing assertions (speed is reported, never tested)."""

import json

import pytest
import yaml

from optimizer_bench.protocol import compare_rules, main
from optimizer_bench.suite import DEFAULT_MANIFEST, core_slots, load_manifest, run_suite
from deephedge_tf.config import load_config
from deephedge_tf.errors import ConfigError

TINY = {
    "seed": 0, "market": {"model": "gbm"}, "time": {"steps": 2},
    "policy": {"num_blocks": 1, "width": 4}, "objective": {"gamma": 10.0},
    "training": {"batch_size": 128, "batches_per_epoch": 3, "validation_paths": 256},
}


def test_shipped_suite_covers_the_required_tasks_without_kfac_overrides():
    m = load_manifest(DEFAULT_MANIFEST)
    assert len(m.tasks) >= 5
    kinds = {}
    for task in m.tasks.values():
        cfg = load_config(task.config)
        assert "kfac" not in (yaml.safe_load(task.config.read_text())["training"]), task.name
        assert cfg.training.optimizer == "adam"
        kinds[task.name] = (cfg.market.model, cfg.derivative.kind, cfg.policy.kind, cfg.objective.kind)
    values = set(kinds.values())
    assert ("gbm", "european", "no_transaction_band", "entropic") in values
    assert ("heston", "european", "mlp", "expected_shortfall") in values
    assert any(k[1] == "cliquet" for k in values)
    assert any(k[1] in ("lookback", "call_spread") and k[2] == "recurrent" for k in values)
    assert m.goal_for("cliquet_small")["step_ratio"] == 0.20 and m.goal_for("quickstart")["wall_ratio"] == 0.5


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    (root / "a.yaml").write_text(yaml.safe_dump(TINY))
    (root / "b.yaml").write_text(yaml.safe_dump({**TINY, "objective": {"kind": "entropic", "a": 1.0},
                                                 "policy": {"kind": "mlp", "num_layers": 1, "width": 4}}))
    task = dict(adam_steps=4, kfac_steps=4, sweep_steps=2, lrs=[0.01], eval_every=2)
    manifest = root / "suite.yaml"
    manifest.write_text(yaml.safe_dump({"seeds": [0, 1], "target_factor": 1.5,
                                        "goal": {"step_ratio": 0.25, "wall_ratio": 0.5},
                                        "tasks": {"a": {"config": "a.yaml", **task},
                                                  "b": {"config": "b.yaml", **task, "goal": {"step_ratio": 1.0},
                                                        "target_factor": 1.2}}}))
    return root, manifest


def test_tiny_suite_writes_one_table_over_tasks_seeds_and_rules(tiny_suite):
    root, manifest = tiny_suite
    out = root / "out"
    paper = ["training.kfac.preconditioner=kronecker"]
    summary = run_suite(out, manifest=manifest, seeds=[0, 1], compare={"paper": paper})
    assert [(r["task"], r["rule"], r["seed"]) for r in summary["rows"]] == [
        (t, rule, s) for t in ("a", "b") for rule in ("default", "paper") for s in (0, 1)]
    on_disk = json.loads((out / "suite.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(summary["rows"]))
    for r in summary["rows"]:
        per_task = json.loads((out / r["task"] / "results.json").read_text())
        judged = per_task["summary"] if r["rule"] == "default" else per_task["compare"]["paper"]["summary"]
        row = next(x for x in judged["per_seed"] if x["seed"] == r["seed"])
        assert r["kfac_steps"] == row["kfac_steps_to_target"] and r["adam_steps"] == row["adam_steps_to_target"]
        goal = {"a": 0.25, "b": 1.0}[r["task"]]
        assert r["goal_steps"] == (r["step_ratio"] is not None and r["step_ratio"] <= goal)
        # Each rule's runs really used its step rule, against the same Adam target.
        run = next(x for x in per_task["runs"] if x.get("rule") == r["rule"] and x["seed"] == r["seed"])
        adam = next(x for x in per_task["runs"] if x["optimizer"] == "adam" and x["seed"] == r["seed"])
        assert run["target"] == adam["target"] == r["target"]
    for task in ("a", "b"):
        per_task = json.loads((out / task / "results.json").read_text())
        assert per_task["protocol"]["dhkfac"]["preconditioner"] == "gauss_newton"
        assert per_task["compare"]["paper"]["protocol"]["dhkfac"]["preconditioner"] == "kronecker"
        assert per_task["compare"]["paper"]["kfac_overrides"][-1] == paper[0]
    assert summary["tasks"]["b"]["goal"] == {"step_ratio": 1.0, "wall_ratio": 0.5}
    assert summary["tasks"]["a"]["target_factor"] == 1.5 and summary["tasks"]["b"]["target_factor"] == 1.2
    assert summary["goal_met"] == all(r["goal_met"] for r in summary["rows"] if r["rule"] == "default")
    table = (out / "suite.md").read_text()
    for task in ("a", "b"):
        assert all(f"\n| {task} | {rule} | {seed} | " in table for seed in (0, 1) for rule in ("default", "paper"))
        assert table.count(f"\n| {task} | ") == 6  # two seeds x two rules, and each rule's per-step time
    assert (out / "learning_curves.png").stat().st_size > 1000


def _sequential_run(root, manifest) -> dict:
    """suite.json of the tiny suite's run in one process (seeds 0 and 1, the paper's rule compared),
    made by the first test that needs it."""
    out = root / "out"
    if not (out / "suite.json").exists():
        run_suite(out, manifest=manifest, seeds=[0, 1], compare={"paper": ["training.kfac.preconditioner=kronecker"]})
    return json.loads((out / "suite.json").read_text())


def test_assemble_rebuilds_the_table_of_a_run_stopped_early(tiny_suite, tmp_path, capsys):
    import shutil

    root, manifest = tiny_suite
    out = root / "out"
    full = _sequential_run(root, manifest)
    # A run stopped after its first task: only a/results.json exists.
    stopped = tmp_path / "stopped"
    shutil.copytree(out / "a", stopped / "a")
    assert main(["suite", "--out", str(stopped), "--suite", str(manifest), "--assemble"]) == 0
    part = json.loads((stopped / "suite.json").read_text())
    assert part["rows"] == [r for r in full["rows"] if r["task"] == "a"]
    assert part["missing"] == ["b"] and part["goal_met"] is False
    assert part["seeds"] == [0, 1] and part["compare"] == {"paper": ["training.kfac.preconditioner=kronecker"]}
    assert "Not run (no results): b." in (stopped / "suite.md").read_text()
    # Training options make no sense without training; an empty directory has nothing to assemble.
    capsys.readouterr()
    assert main(["suite", "--out", str(stopped), "--suite", str(manifest), "--assemble", "--seeds", "0"]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main(["suite", "--out", str(tmp_path / "empty"), "--suite", str(manifest), "--assemble"]) == 2
    assert "results.json" in capsys.readouterr().err


def test_jobs_run_the_tasks_in_pinned_processes_and_give_the_same_table(tiny_suite):
    """--jobs 2: each task in its own process (its log beside its results), the same rows and Adam
    targets as the tasks run one after the other."""
    root, manifest = tiny_suite
    one = _sequential_run(root, manifest)  # seeds 0 and 1, in one process
    two = run_suite(root / "two", manifest=manifest, seeds=[0], jobs=2)
    one_rows = [r for r in one["rows"] if r["seed"] == 0 and r["rule"] == "default"]
    key = [(r["task"], r["rule"], r["seed"]) for r in one_rows]
    assert key == [(r["task"], r["rule"], r["seed"]) for r in two["rows"]] == [("a", "default", 0), ("b", "default", 0)]
    for r1, r2 in zip(one_rows, two["rows"]):
        assert r2["target"] == pytest.approx(r1["target"], rel=1e-4)
    for task in ("a", "b"):
        assert "suite task" in (root / "two" / f"{task}.log").read_text()
    with pytest.raises(ConfigError, match="--jobs"):
        run_suite(root / "three", manifest=manifest, jobs=0)


def test_core_slots_split_the_cores_without_overlap():
    import os

    cores = sorted(os.sched_getaffinity(0))
    for jobs in (1, 2, 3):
        slots = core_slots(jobs)
        assert len(slots) == min(jobs, len(cores))
        assert sorted(c for slot in slots for c in slot) == cores


@pytest.mark.parametrize("groups, key", [
    ([["default", "training.kfac.damping=0.5"]], "--compare"),
    ([["adam", "training.kfac.damping=0.5"]], "--compare"),
    ([["paper"]], "--compare paper"),
    ([["paper", "damping"]], "--compare paper"),
    ([["p", "training.kfac.damping=0.5"], ["p", "training.kfac.damping=0.3"]], "--compare"),
])
def test_compare_rules_are_checked(groups, key):
    with pytest.raises(ConfigError, match=key):
        compare_rules(groups)


@pytest.mark.parametrize("compare, flag", [({"wide": ["policy.width=8"]}, "--compare wide"),
                                           ({"default": ["training.kfac.damping=0.5"]}, "--compare"),
                                           ({"p": "training.kfac.damping=0.5"}, "--compare p")])
def test_a_compared_rule_is_checked_before_any_task_trains(tiny_suite, tmp_path, compare, flag):
    root, manifest = tiny_suite
    with pytest.raises(ConfigError, match=flag):
        run_suite(tmp_path / "o", manifest=manifest, compare=compare)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("edit, key", [
    ({"seeds": []}, "suite.seeds"),
    ({"target_factor": 1.0}, "suite.target_factor"),
    ({"goal": {"steps": 0.2}}, "suite.goal"),
    ({"tasks": {"a": {"config": "missing.yaml"}}}, "suite.tasks.a.config"),
    ({"tasks": {"a": {"config": "a.yaml", "adam_steps": 0}}}, "suite.tasks.a.adam_steps"),
    ({"tasks": {"a": {"config": "a.yaml", "lrs": [-1]}}}, "suite.tasks.a.lrs"),
    ({"tasks": {"a": {"config": "a.yaml", "budget": 3}}}, "suite.tasks.a"),
    ({"tasks": {"a": {"config": "a.yaml", "target_factor": 0.9}}}, "suite.tasks.a.target_factor"),
])
def test_manifest_errors_name_the_key(tiny_suite, tmp_path, edit, key):
    root, manifest = tiny_suite
    raw = {**yaml.safe_load(manifest.read_text()), **edit}
    bad = root / f"bad_{tmp_path.name}.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_manifest(bad)


def test_a_task_config_with_kfac_settings_is_refused_and_cli_exits_2(tiny_suite, tmp_path, capsys):
    root, manifest = tiny_suite
    (root / "k.yaml").write_text(yaml.safe_dump({**TINY, "training": {**TINY["training"], "kfac": {"damping": 0.5}}}))
    raw = yaml.safe_load(manifest.read_text())
    raw["tasks"] = {"k": {"config": "k.yaml"}}
    bad = root / "with_kfac.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="training.kfac"):
        run_suite(tmp_path / "o", manifest=bad)
    assert main(["suite", "--out", str(tmp_path / "o2"), "--suite", str(manifest), "--tasks", "zzz"]) == 2
    assert "--tasks" in capsys.readouterr().err and not (tmp_path / "o2").exists()


def test_kfac_to_target_reads_variants_and_a_suite_runs_targets(tiny_suite):
    from kfac_to_target import parse_variant, suite_targets

    assert parse_variant("p075:metric_power=0.75,jacobian_rows=128") == (
        "p075", ["training.kfac.metric_power=0.75", "training.kfac.jacobian_rows=128"])
    assert parse_variant("default:") == ("default", [])
    for bad in ("metric_power=0.75", "x:metric_power"):
        with pytest.raises(ConfigError):
            parse_variant(bad)
    root, manifest = tiny_suite
    _sequential_run(root, manifest)
    out = root / "out"
    per_seed = json.loads((out / "a" / "results.json").read_text())["summary"]["per_seed"]
    assert suite_targets(out, "a") == {r["seed"]: (r["target"], r["adam_steps_to_target"]) for r in per_seed}
    assert sorted(suite_targets(out, "a")) == [0, 1]
    with pytest.raises(ConfigError, match="--targets"):
        suite_targets(root / "nowhere", "a")
