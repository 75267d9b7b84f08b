"""The command line and the main job (`deephedge run`) on small configs."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

from deephedge_tf.cli import main
from deephedge_tf.config import from_dict
from deephedge_tf.run import simulate_job

REPO = Path(__file__).resolve().parents[1]


def test_config_show_applies_overrides(capsys):
    assert main(["config", "show", str(REPO / "configs/quickstart.yaml"), "--set", "market.heston.rho=-0.5"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["market"]["heston"]["rho"] == -0.5
    assert shown["time"]["steps"] == 30


def test_config_error_exits_2_and_names_the_key(capsys, tmp_path):
    code = main(["simulate", str(REPO / "configs/quickstart.yaml"), "--out", str(tmp_path / "o"),
                 "--set", "market.heston.xi=-1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "market.heston.xi" in err and "> 0.0" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing written for a bad config


def test_config_doc_write_replaces_only_the_table(tmp_path):
    doc = tmp_path / "c.md"
    doc.write_text("intro\n<!-- BEGIN GENERATED CONFIG REFERENCE -->\nold\n<!-- END GENERATED CONFIG REFERENCE -->\n"
                   "outro\n")
    assert main(["config", "doc", "--write", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    assert "`market.heston.rho`" in text


def test_run_job_gbm_matches_black_scholes(tmp_path):
    cfg = from_dict({"market": {"model": "gbm", "gbm": {"sigma": 0.2}}, "time": {"steps": 10, "dt": 0.01},
                     "simulation": {"paths": 20000}, "dtype": "float64",
                     "hedges": {"floating_grid": {"moneyness": [1.0], "maturities": [5]}}})
    report = simulate_job(cfg, tmp_path, echo=lambda *_: None)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["price"]["reference_method"] == "Black-Scholes"
    assert abs(report["price"]["z_score"]) < 3
    assert [r["name"] for r in on_disk["instruments"]] == ["spot", "C1x5"]
    assert all(abs(r["t_stat"]) < 3 for r in on_disk["instruments"])
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["market"]["model"] == "gbm"


def test_run_job_heston_quickstart_small(tmp_path):
    cfg = from_dict(yaml.safe_load((REPO / "configs/quickstart.yaml").read_text()),
                    ["simulation.paths=8192", "dtype=float64"])
    report = simulate_job(cfg, tmp_path, echo=lambda *_: None)
    assert report["price"]["reference_method"] == "Heston Fourier"
    assert abs(report["price"]["z_score"]) < 3
    assert report["premium_table"]["max_abs_error_premium_over_spot"] < 1e-5
    assert len(report["instruments"]) == 5


def test_run_job_on_historical_bootstrap(tmp_path):
    cfg = from_dict(yaml.safe_load((REPO / "configs/sp500_historical.yaml").read_text()),
                    ["simulation.paths=1024"])
    report = simulate_job(cfg, tmp_path, echo=lambda *_: None)
    assert report["price"]["reference"] is None
    assert report["simulation"]["paths"] == 1024


def test_console_script_runs_in_a_fresh_process(tmp_path):
    out = subprocess.run([sys.executable, "-m", "deephedge_tf.cli", "config", "show",
                          str(REPO / "configs/bs_call_ntb.yaml")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["market"]["model"] == "gbm"


def test_tensorflow_start_up_lines_only_with_verbose(tmp_path):
    """TensorFlow's C++ runtime writes oneDNN / CUDA / absl lines to stderr when it loads; the CLI keeps
    them out unless asked (the simulation touches TensorFlow, so the runtime is loaded in both runs)."""
    def run(*flags):
        return subprocess.run([sys.executable, "-m", "deephedge_tf.cli", *flags, "simulate",
                               str(REPO / "configs/bs_call_ntb.yaml"), "--out", str(tmp_path / "sim"),
                               "--set", "simulation.paths=256"], capture_output=True, text=True, timeout=300)

    quiet, verbose = run(), run("--verbose")
    assert quiet.returncode == 0 and verbose.returncode == 0, quiet.stderr + verbose.stderr
    assert quiet.stderr == "", quiet.stderr
    assert "Monte Carlo price" in quiet.stdout
    # The verbose run shows what the runtime logs (its exact lines depend on the machine).
    assert verbose.stderr.strip() != ""


def test_no_runtime_line_at_the_first_training_batches():
    """Training reads batches through a generator dataset, whose first use logs a malloc setting from
    the C++ runtime ("Memory patch applied"); after the CLI's quiet import nothing reaches stderr."""
    code = ("from deephedge_tf.cli import quiet_tensorflow; quiet_tensorflow()\n"
            "import tensorflow as tf\n"
            "spec = tf.TensorSpec([], tf.float32)\n"
            "print(sum(float(x) for x in tf.data.Dataset.from_generator(lambda: iter([1.0, 2.0]), "
            "output_signature=spec)))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "3.0", proc.stderr
    assert proc.stderr == "", proc.stderr


def test_train_with_dhkfac_on_a_band_policy_from_the_cli(tmp_path):
    """`deephedge train CONFIG --set training.optimizer=dhkfac` works for a policy other than the
    recurrent one (here the no-transaction band under expected shortfall)."""
    out = tmp_path / "run"
    code = main(["train", str(REPO / "configs/quickstart.yaml"), "--out", str(out),
                 "--set", "training.optimizer=dhkfac", "--set", "policy.kind=no_transaction_band",
                 "--set", "objective.kind=expected_shortfall", "--set", "time.steps=5",
                 "--set", "hedges.floating_grid.moneyness=[]", "--set", "hedges.floating_grid.maturities=[]",
                 "--set", "training.epochs=1", "--set", "training.batches_per_epoch=3",
                 "--set", "training.batch_size=256", "--set", "training.validation_paths=256",
                 "--set", "evaluation.paths=1024"])
    assert code == 0
    history = (out / "history.csv").read_text().splitlines()
    assert len(history) == 2 and "nan" not in history[1]
    # The Gauss-Newton rule's own state is logged next to the losses, and plotted.
    assert {"opt_damping", "opt_reduction_ratio", "opt_rejected_steps"} <= set(history[0].split(","))
    assert (out / "plots" / "optimizer.png").is_file()


def test_benchmark_command_without_the_source_trees_harness_says_so(tmp_path, monkeypatch, capsys):
    """An installation without benchmarks/ next to the package (the harness lives there, not in the
    library) keeps every other command and explains the benchmark one."""
    import deephedge_tf.cli as cli

    monkeypatch.setattr(cli, "HARNESS_DIR", tmp_path / "nowhere")
    assert cli.benchmark_harness() is None
    assert main(["benchmark"]) == 2
    assert "source tree's benchmarks/ folder" in capsys.readouterr().err
