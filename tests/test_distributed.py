"""DH-KFAC under tf.distribute.MirroredStrategy on two logical CPU devices and MultiWorkerMirroredStrategy on
two worker processes: gradients, curvature statistics and the Gauss-Newton rows are combined across
replicas, so the weights after a few steps match a single-device run on the same global batches.  Runs in
subprocesses: logical devices must be configured before TensorFlow initialises them, which the rest of the
suite has done already."""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import json
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from deephedge_tf.optimizers import DHKFAC, with_curvature

    # float64: the finite-difference line model divides output differences by a 1e-3 relative move, so
    # float32 summation-order differences (1e-7) would reach the step size at 1e-4.
    keras.config.set_floatx("float64")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(192, 4))
    y = np.sin(2 * x[:, :1]) + x[:, 1:2] * x[:, 2:3]
    RULES = {
        # the paper's rule with the exact (forward-mode) line model
        "kronecker": dict(preconditioner="kronecker", inverse_period=2, momentum=0.5, jvp_method="forward_mode"),
        # the defaults: Gauss-Newton rows (40: more than one replica's 32 paths, fewer than the batch's 64),
        # the finite-difference line model (it moves every replica's weights, once, mid-step)
        "gauss_newton": dict(jacobian_rows=40),
    }

    def run(strategy, rule):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="tanh"),
                                    keras.layers.Dense(1)])
            model = with_curvature(net)
            model.compile(optimizer=DHKFAC(**RULES[rule]), loss="mse")
        history = model.fit(x, y, batch_size=64, epochs=2, shuffle=False, verbose=0)
        return [v.numpy() for v in model.trainable_variables], history.history["loss"], \\
            int(model.optimizer.iterations.numpy()), list(model.optimizer.active_blocks)

    out = {}
    one, two = tf.distribute.OneDeviceStrategy("/cpu:0"), tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    for rule in RULES:  # one strategy object for both runs: a second one would reuse the collectives' keys
        single, mirrored = run(one, rule), run(two, rule)
        out[rule] = {"losses": [single[1], mirrored[1]], "iterations": [single[2], mirrored[2]],
                     "blocks": [single[3], mirrored[3]],
                     "weights": [[w.tolist() for w in single[0]], [w.tolist() for w in mirrored[0]]]}
    # Each replica's first paths are not the batch's: a curvature subset is refused, not silently changed.
    with two.scope():
        subset = with_curvature(keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)]), curvature_paths=16)
        subset.compile(optimizer=DHKFAC(), loss="mse")
    try:
        subset.fit(x, y, batch_size=64, epochs=1, verbose=0)
        out["curvature_paths_error"] = None
    except ValueError as err:
        out["curvature_paths_error"] = str(err)
    print(json.dumps(out))
''')


def test_mirrored_two_replicas_match_one_device():
    """A plain Keras model (`with_curvature`, MSE) under both DH-KFAC rules."""
    import numpy as np

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "curvature_paths" in (results.pop("curvature_paths_error") or "no error")
    for rule, out in results.items():
        assert out["iterations"] == [6, 6], rule
        assert [len(b) for b in out["blocks"]] == [2, 2], rule  # both Dense layers have curvature
        # Six steps of the same global batches: summation order is the only difference.
        for a, b in zip(*out["weights"]):
            np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-8, atol=1e-10, err_msg=rule)
        np.testing.assert_allclose(out["losses"][1], out["losses"][0], rtol=1e-10, err_msg=rule)
        assert out["losses"][0][1] < 0.8 * out["losses"][0][0], rule  # it trained: not two idle runs


HEDGER_SCRIPT = textwrap.dedent('''
    import json, sys
    import tensorflow as tf
    distribute = sys.argv[1]
    if distribute == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from deephedge_tf.config import from_dict
    from deephedge_tf.training import build_parts, distribution_strategy, fit_hedger, make_hedger

    def run(optimizer, objective, distribute, kfac):
        # float64: Adam divides by the root of small second moments, which turns float32 summation-order
        # differences into visible weight differences; in float64 the runs must agree to rounding.  tanh: the
        # ReLU's dead units give Kronecker factors repeated zero eigenvalues, whose eigenvectors rounding
        # rotates at will, and DH-KFAC's direction along them with them.
        cfg = from_dict({"dtype": "float64", "time": {"steps": 5}, "market": {"model": "gbm", "s0": 1.0},
                         "derivative": {"kind": "european", "strike": 1.0},
                         "hedges": {"spot": {"enabled": True, "cost": 1.0e-3}},
                         "policy": {"kind": "mlp", "num_layers": 1, "width": 8, "activation": "tanh"},
                         "objective": {"kind": objective},
                         "training": {"optimizer": optimizer, "learning_rate": 1.0e-2, "distribute": distribute,
                                      "kfac": kfac,
                                      "batch_size": 256, "batches_per_epoch": 3, "epochs": 2,
                                      "validation_paths": 512}})
        parts = build_parts(cfg)
        hedger = make_hedger(cfg, parts)
        history = fit_hedger(cfg, hedger, parts, verbose=0)
        return {"replicas": distribution_strategy(cfg).num_replicas_in_sync,
                "steps": int(hedger.optimizer.iterations.numpy()), "history": history.history,
                "weights": [v.numpy().tolist() for v in hedger.trainable_variables]}

    if distribute == "multi_worker":  # before any TensorFlow computation (the collectives' start-up)
        from deephedge_tf.distribute import strategy_for
        strategy_for(distribute)
    def kfac_of(rule):
        if rule == "kronecker":  # the paper's rule, with the exact (forward-mode) line model
            return {"preconditioner": "kronecker", "jvp_method": "forward_mode"}
        # the defaults (Gauss-Newton, finite-difference line model), with rows: 256 > one replica's 128
        # paths, the rows span both replicas' shares; 64, they are replica 0's alone
        return {} if rule == "defaults" else {"jacobian_rows": int(rule.split("=")[1])}

    results = {}
    for run_name in sys.argv[2:]:
        optimizer, objective, *rule = run_name.split(":")
        results[run_name] = run(optimizer, objective, distribute, kfac_of(rule[0]) if rule else {})
    print(json.dumps(results))
''')
# optimizer:objective[:DH-KFAC rule].  The expected shortfall's curvature takes the batch's quantile, the
# entropic one its softmax weights, the costs' majorizer its mean trade: DH-KFAC's curvature must see the
# whole batch too; the Gauss-Newton rows are the global batch's first paths, whichever replicas hold them.
RUNS = ("adam:expected_shortfall", "adam:mean_variance", "dhkfac:expected_shortfall:kronecker",
        "dhkfac:entropic:kronecker", "dhkfac:expected_shortfall:defaults", "dhkfac:entropic:rows=64")
# The worker processes run the DH-KFAC runs whose combination across replicas differs (the Kronecker
# statistics, the Gauss-Newton rows spanning both workers, the rows of worker 0 alone); the gradients'
# all-reduce is in each of them.  The mirrored run covers every run: the collectives are the same
# operations, and four processes of six runs each on a 2-core machine took ~170 s.
WORKER_RUNS = ("dhkfac:expected_shortfall:kronecker", "dhkfac:expected_shortfall:defaults",
               "dhkfac:entropic:rows=64")


def _start_hedgers(distribute, workers=1, runs=RUNS):
    """The processes of one run of HEDGER_SCRIPT (``workers`` of them with a TF_CONFIG on localhost)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    command = [sys.executable, "-c", HEDGER_SCRIPT, distribute, *runs]
    if workers == 1:
        return [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)]
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(workers)]}
    return [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(env, TF_CONFIG=json.dumps({"cluster": cluster,
                                                                 "task": {"type": "worker", "index": i}})))
            for i in range(workers)]


def _results(procs):
    outs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    return outs


def _free_ports(n):
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _assert_same_run(single, distributed, replicas, runs=RUNS):
    import numpy as np

    assert set(distributed) == set(runs)
    for run in runs:
        a, b = single[run], distributed[run]
        assert (a["replicas"], b["replicas"]) == (1, replicas), run
        assert a["steps"] == b["steps"] == 6, run
        for key in ("loss", "val_loss", "pnl_mean"):  # the metrics are of the whole batch too
            np.testing.assert_allclose(b["history"][key], a["history"][key], rtol=1e-6, err_msg=f"{run} {key}")
        assert a["history"]["loss"][1] != a["history"]["loss"][0]  # the second epoch drew new paths
        # DH-KFAC: eigendecompositions and a division by small curvatures amplify rounding (~1e-10 seen).
        rtol, atol = (1e-9, 1e-12) if run.startswith("adam") else (1e-6, 1e-8)
        for wa, wb in zip(a["weights"], b["weights"]):
            np.testing.assert_allclose(np.array(wb), np.array(wa), rtol=rtol, atol=atol, err_msg=run)


def test_training_distribute_mirrored_and_multi_worker_match_one_device():
    """`training.distribute` on two logical CPUs (mirrored) and on two worker processes on localhost
    (multi_worker, TF_CONFIG): each global batch sharded by path index, the objective and DH-KFAC's
    curvature of the whole batch (the expected shortfall, the variance and the entropic risk couple the
    paths), six steps over two epochs of fresh paths end at the one-device run's weights and losses:
    Adam and both DH-KFAC rules mirrored, the DH-KFAC runs (`WORKER_RUNS`) on the workers."""
    runs = [_start_hedgers("none"), _start_hedgers("mirrored"),
            _start_hedgers("multi_worker", workers=2, runs=WORKER_RUNS)]
    [single], [mirrored], workers = (_results(procs) for procs in runs)
    _assert_same_run(single, mirrored, replicas=2)
    for worker in workers:
        _assert_same_run(single, worker, replicas=2, runs=WORKER_RUNS)


def test_distribute_refuses_what_would_not_be_the_one_device_run():
    import pytest

    from deephedge_tf.config import from_dict
    from deephedge_tf.errors import ConfigError

    for distribute in ("mirrored", "multi_worker"):
        for training, key in (({"optimizer": "dhlnn"}, "training.distribute"),
                              ({"optimizer": "dhkfac", "kfac": {"curvature_paths": 128}},
                               "training.kfac.curvature_paths"),
                              ({"optimizer": "dhkfac", "kfac": {"preconditioner": "kronecker", "curvature_paths": 128}},
                               "training.kfac.curvature_paths")):
            with pytest.raises(ConfigError, match=f"config key '{key}'"):
                from_dict({"training": {**training, "distribute": distribute}})
        for kfac in ({}, {"preconditioner": "kronecker"}):  # both rules, with their default line models
            cfg = from_dict({"training": {"optimizer": "dhkfac", "kfac": kfac, "distribute": distribute}})
            assert cfg.training.distribute == distribute
    assert from_dict({"training": {"distribute": "mirrored"}}).training.distribute == "mirrored"


def test_tf_config_errors_name_the_field():
    import pytest

    from deephedge_tf.distribute import check_tf_config, replica_batch_size, strategy_for
    from deephedge_tf.errors import ConfigError

    cluster = '"cluster": {"worker": ["a:1", "b:2"]}'
    assert check_tf_config('{' + cluster + ', "task": {"type": "worker", "index": 0}}')["cluster"]["worker"] == [
        "a:1", "b:2"]
    for raw, key in ((None, "training.distribute"), ("{not json", "TF_CONFIG"),
                     ('{"cluster": {"ps": ["a:1"]}, "task": {"type": "worker", "index": 0}}',
                      "TF_CONFIG.cluster.worker"),
                     ('{' + cluster + ', "task": {"type": "worker", "index": 2}}', "TF_CONFIG.task"),
                     ('{' + cluster + ', "task": {"type": "chief", "index": 0}}', "TF_CONFIG.task")):
        with pytest.raises(ConfigError, match=f"config key '{key}'"):
            check_tf_config(raw)
    with pytest.raises(ConfigError, match="training.distribute.*one of"):
        strategy_for("horovod")

    class TwoReplicas:
        num_replicas_in_sync = 2

    assert replica_batch_size(256, TwoReplicas()) == 128
    with pytest.raises(ConfigError, match="training.batch_size.*a multiple of the 2 replicas"):
        replica_batch_size(255, TwoReplicas())


def test_deephedge_train_on_two_workers_writes_the_run_on_worker_0(tmp_path):
    """`deephedge train` with `training.distribute: multi_worker` on two processes (TF_CONFIG on localhost):
    worker 0 writes OUT, worker 1 its copy in OUT/worker-1, and both trained the same weights."""
    import shutil

    config = tmp_path / "tiny.yaml"
    config.write_text(textwrap.dedent("""\
        time: {steps: 5}
        market: {model: gbm, s0: 1.0}
        derivative: {kind: european, strike: 1.0}
        hedges: {spot: {enabled: true, cost: 1.0e-3}}
        policy: {kind: mlp, num_layers: 1, width: 8}
        objective: {kind: expected_shortfall}
        training: {optimizer: adam, distribute: multi_worker, batch_size: 256, batches_per_epoch: 2, epochs: 2,
                   validation_paths: 256}
        evaluation: {paths: 1024, plots: false}
        """))
    out = tmp_path / "run"
    deephedge = shutil.which("deephedge", path=os.path.dirname(sys.executable))
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    procs = [subprocess.Popen([deephedge, "train", str(config), "--out", str(out)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps(
                                  {"cluster": cluster, "task": {"type": "worker", "index": i}})))
             for i in range(2)]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
    chief, other = (json.loads((d / "report.json").read_text()) for d in (out, out / "worker-1"))
    assert chief["train"]["steps"] == other["train"]["steps"] == 4
    assert chief["train"]["final_loss"] == other["train"]["final_loss"]
    assert (out / "saved_model").is_dir() and not (out / "worker-0").exists()


def test_a_multi_worker_strategy_after_tensorflow_started_is_a_clear_error():
    """TensorFlow configures the multi-worker collectives at start-up: asking for the strategy after any
    TensorFlow computation names what to do instead of TensorFlow's bare RuntimeError."""
    script = textwrap.dedent('''
        import tensorflow as tf
        from deephedge_tf.distribute import strategy_for
        tf.constant(1.0) + 1.0
        try:
            strategy_for("multi_worker")
        except RuntimeError as err:
            print(err)
    ''')
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "must be created before any TensorFlow computation" in proc.stdout
    assert "strategy_for('multi_worker')" in proc.stdout
