"""`deephedge benchmark kfac-vs-adam` on a tiny config: output structure, consistency, argument errors.

No timing assertions: speed is reported by the benchmark itself (BENCHMARKS.md), never tested.
"""

import argparse
import json

import numpy as np
import pytest
import yaml

from optimizer_bench.protocol import (add_benchmark_parser, first_at_or_below, kfac_vs_adam, main, paired_difference,
                                    results_markdown,
                                    run_benchmark)
from deephedge_tf.errors import ConfigError

TINY = {
    "seed": 0,
    "market": {"model": "gbm"},
    "time": {"steps": 2},
    "policy": {"num_blocks": 1, "width": 4},
    "objective": {"gamma": 10.0},
    "training": {"batch_size": 128, "batches_per_epoch": 3, "validation_paths": 256, "warmup_steps": 2,
                 "decay_rate": 0.5, "decay_steps": 10, "clipnorm": 1.0},
}


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def tiny_results(tiny_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "out"
    kfac_vs_adam(tiny_config, out, seeds=[0, 1], adam_steps=6, kfac_steps=6, sweep_steps=2, eval_every=2,
                 target_factor=1.5, lrs=[0.01, 0.03], kfac_overrides=["training.kfac.inverse_period=2"])
    return out, json.loads((out / "results.json").read_text())


def test_results_json_structure(tiny_results):
    _, r = tiny_results
    assert r["benchmark"] == "kfac-vs-adam" and r["seeds"] == [0, 1]
    assert set(r["sweep"]["final_val_loss"]) == {"0.01", "0.03"}
    assert r["sweep"]["best_lr"] in (0.01, 0.03)
    assert {(x["optimizer"], x["seed"]) for x in r["runs"]} == {("adam", 0), ("adam", 1), ("dhkfac", 0), ("dhkfac", 1)}
    for name in ("adam", "dhkfac"):
        assert r["first_call"][name]["first_call_s"] > 0
        assert r["summary"]["per_step_time"][name]["step_median_s"] > 0
    for run in r["runs"]:
        for key in ("steps_to_target", "wall_s_to_target", "target", "reached", "curve", "step_time_s",
                    "data_time_s", "steps_run", "best_val_loss", "skipped_steps"):
            assert key in run, key
        assert run["curve"][0]["step"] == 0 and run["curve"][0]["wall_s"] == 0.0
        steps = [p["step"] for p in run["curve"]]
        assert steps == sorted(steps) and steps[-1] == run["steps_run"]
        assert run["skipped_steps"] == 0
    assert "dhkfac" in r["kfac_overrides"][0] and "training.kfac.inverse_period=2" in r["kfac_overrides"]
    assert [row["seed"] for row in r["summary"]["per_seed"]] == [0, 1]
    assert set(r["summary"]["goal"]) >= {"steps", "wall", "met"}


def test_targets_and_steps_to_target_follow_the_curves(tiny_results):
    _, r = tiny_results
    adam = {x["seed"]: x for x in r["runs"] if x["optimizer"] == "adam"}
    kfac = {x["seed"]: x for x in r["runs"] if x["optimizer"] == "dhkfac"}
    for seed in (0, 1):
        a, k = adam[seed], kfac[seed]
        assert a["steps_run"] == 6  # Adam always runs its full budget: its best loss sets the target
        assert a["target"] == pytest.approx(1.5 * min(p["val_loss"] for p in a["curve"]))
        assert k["target"] == a["target"]
        for run in (a, k):
            hit = next((p for p in run["curve"][1:] if p["val_loss"] <= run["target"]), None)
            if hit is None:
                assert not run["reached"] and run["steps_to_target"] is None
            else:
                assert run["reached"]
                assert run["steps_to_target"] == hit["step"] and run["wall_s_to_target"] == hit["wall_s"]
        assert a["reached"]
        if k["reached"]:  # DH-KFAC stops at its first evaluation at or below the target
            assert k["steps_run"] == k["steps_to_target"]
        row = next(x for x in r["summary"]["per_seed"] if x["seed"] == seed)
        assert row["adam_steps_to_target"] == a["steps_to_target"]
        assert row["kfac_steps_to_target"] == k["steps_to_target"]
        if k["reached"]:
            assert row["step_ratio"] == pytest.approx(k["steps_to_target"] / a["steps_to_target"])


def test_the_sweep_rerun_reproduces_the_full_run(tiny_results):
    """Weights and optimizer state are restored between runs (one traced step reused): the best sweep
    run and the full run of the same seed and learning rate agree at the sweep's end."""
    _, r = tiny_results
    best = r["sweep"]["runs"][repr(r["sweep"]["best_lr"])]["curve"][-1]
    full = next(x for x in r["runs"] if x["optimizer"] == "adam" and x["seed"] == 0)
    same_step = next(p for p in full["curve"] if p["step"] == best["step"])
    assert same_step["val_loss"] == pytest.approx(best["val_loss"], rel=1e-5)


def test_learning_curve_plot_is_written(tiny_results):
    out, _ = tiny_results
    png = out / "learning_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_table_has_a_row_per_seed(tiny_results):
    _, r = tiny_results
    table = results_markdown(r)
    assert table.count("\n| 0 |") == 1 and table.count("\n| 1 |") == 1 and "DH-KFAC" in table


def test_paired_margin_is_recorded_for_every_seed(tiny_results):
    _, r = tiny_results
    kfac = {x["seed"]: x for x in r["runs"] if x["optimizer"] == "dhkfac"}
    for row in r["summary"]["per_seed"]:
        paired = kfac[row["seed"]]["paired_vs_adam_best"]
        # 256 validation paths: at least 8 chunks of 32 paths.
        assert paired["step"] == kfac[row["seed"]]["steps_run"] and paired["chunks"] == 8
        assert paired["se"] > 0
        assert row["target_margin_in_paired_se"] == pytest.approx(0.5 * row["adam_best_val_loss"] / paired["se"])


def test_paired_difference_hand_computation():
    a = np.array([1.0, 2.0, 4.0, 3.0])
    b = np.array([1.5, 2.1, 4.6, 3.0])  # d = 0.5, 0.1, 0.6, 0.0
    mean, se = paired_difference(a, b)
    d = np.array([0.5, 0.1, 0.6, 0.0])
    assert mean == pytest.approx(0.3)
    assert se == pytest.approx(np.sqrt(((d - 0.3) ** 2).sum() / 3) / 2)
    # Noise common to both optimizers cancels: a constant shift has zero paired standard error,
    # however large the spread of the losses themselves.
    mean, se = paired_difference(a * 100.0, a * 100.0 + 0.25)
    assert mean == pytest.approx(0.25) and se == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(paired_difference(a[:1], b[:1])[1])


def test_first_at_or_below_skips_the_initial_point():
    curve = [{"step": 0, "val_loss": 0.1}, {"step": 2, "val_loss": 0.5}, {"step": 4, "val_loss": 0.1}]
    assert first_at_or_below(curve, 0.2)["step"] == 4
    assert first_at_or_below(curve, 0.01) is None


@pytest.mark.parametrize("args, key", [
    (["--target-factor", "1.0"], "--target-factor"),
    (["--target-factor", "nan"], "--target-factor"),
    (["--seeds", "0", "0"], "--seeds"),
    (["--seeds", "-1"], "--seeds"),
    (["--eval-every", "50", "--adam-steps", "10"], "--eval-every"),
    (["--lrs", "0.01", "-0.1"], "--lrs"),
    (["--kfac-steps", "0"], "--kfac-steps"),
    (["--kfac-lr", "0"], "--kfac-lr"),
    (["--kfac-set", "training.batch_size=64"], "--kfac-set"),
    (["--kfac-set", "training.optimizer=adam"], "--kfac-set"),
    (["--set", "training.fresh_paths=false"], "training.fresh_paths"),
    (["--set", "training.kfac.damping=-1"], "training.kfac.damping"),
])
def test_bad_arguments_exit_2_naming_the_argument(tiny_config, tmp_path, capsys, args, key):
    out = tmp_path / "o"
    code = main(["kfac-vs-adam", "--config", str(tiny_config), "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert key in err and "Traceback" not in err
    assert not out.exists()  # nothing written for bad arguments


def test_parser_wiring_for_the_cli(tiny_config, tmp_path, capsys):
    """The two functions the `deephedge` command line wires: its subparsers plus run_benchmark."""
    parser = argparse.ArgumentParser(prog="deephedge")
    add_benchmark_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["benchmark", "kfac-vs-adam", "--config", str(tiny_config), "--out",
                              str(tmp_path / "o"), "--lrs", "0.0"])
    assert args.command == "benchmark" and args.seeds == [0, 1, 2]
    assert run_benchmark(args) == 2 and "--lrs" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --config and --out are required
        parser.parse_args(["benchmark", "kfac-vs-adam"])


def test_missing_config_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="<file>"):
        kfac_vs_adam(tmp_path / "nope.yaml", tmp_path / "o")
