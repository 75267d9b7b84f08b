"""Training from a config: resume after a kill, XLA on CPU, callbacks, the train job's outputs."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from deephedge_tf.config import from_dict
from deephedge_tf.data import PathBatches
from deephedge_tf.features import make_batch
from deephedge_tf.run import train_job
from deephedge_tf.errors import DeepHedgeError
from deephedge_tf.training import RunHistory, TargetLossStopping, build_parts, fit_hedger, make_hedger


def tiny_cfg(*extra):
    return from_dict({}, ["market.model=gbm", "time.steps=8", "policy.num_blocks=1", "policy.width=8",
                          "objective.gamma=100.0", "training.batch_size=256", "training.batches_per_epoch=3",
                          "training.epochs=4", "training.validation_paths=256", "training.learning_rate=0.01",
                          "evaluation.paths=512", *extra])


class KillAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt("simulated kill")


def weights(hedger):
    return [v.numpy() for v in hedger.trainable_variables]


def test_killed_and_resumed_run_ends_at_the_same_weights(tmp_path):
    cfg = tiny_cfg()
    parts = build_parts(cfg)
    straight = make_hedger(cfg, parts)
    fit_hedger(cfg, straight, parts, callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "a"))], verbose=0)

    first = make_hedger(cfg, parts)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "b"))
    with pytest.raises(KeyboardInterrupt):
        fit_hedger(cfg, first, parts, callbacks=[backup, KillAfterEpoch(1)], verbose=0)
    resumed = make_hedger(cfg, parts)  # a fresh process would rebuild everything from the config
    fit_hedger(cfg, resumed, parts, callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "b"))], verbose=0)

    assert int(resumed.optimizer.iterations.numpy()) == int(straight.optimizer.iterations.numpy()) == 12
    for a, b in zip(weights(straight), weights(resumed)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # and the interrupted run had really moved away from the final weights
    assert any(not np.allclose(a, b) for a, b in zip(weights(first), weights(straight)))


def test_history_of_a_killed_and_restarted_run_is_whole(tmp_path):
    """A kill after the history wrote epoch 2 but before the backup saved it: the restart repeats epoch 2,
    and history.csv ends with one row per epoch 0..3, the first two from the killed process (same
    values), wall time summed over both processes."""
    cfg = tiny_cfg()
    parts = build_parts(cfg)
    path = tmp_path / "history.csv"
    first = RunHistory(path)
    with pytest.raises(KeyboardInterrupt):
        fit_hedger(cfg, make_hedger(cfg, parts), parts, verbose=0,
                   callbacks=[first, KillAfterEpoch(2), keras.callbacks.BackupAndRestore(str(tmp_path / "b"))])
    killed = [dict(r) for r in first.rows]
    assert [int(r["epoch"]) for r in killed] == [0, 1, 2]
    again = RunHistory(path)
    fit_hedger(cfg, make_hedger(cfg, parts), parts, verbose=0,
               callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "b")), again])
    rows = RunHistory(path)._read()
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert rows[:2] == [{k: pytest.approx(v, rel=1e-12) for k, v in r.items()} for r in killed[:2]]
    assert rows[2]["wall_s"] > killed[1]["wall_s"] and all(a["wall_s"] < b["wall_s"] for a, b in zip(rows, rows[1:]))
    assert again.history()["loss"] == [r["loss"] for r in rows]


def test_train_job_refuses_a_directory_of_another_config(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("seed: 99\n")
    (out / "checkpoints").mkdir()
    with pytest.raises(DeepHedgeError, match="holds a run of another config.*--overwrite"):
        train_job(tiny_cfg("training.epochs=1"), out, echo=lambda *_: None, verbose=0)
    assert (out / "checkpoints").is_dir()  # nothing touched
    train_job(tiny_cfg("training.epochs=1", "evaluation.plots=false"), out, echo=lambda *_: None, verbose=0,
              overwrite=True)
    assert json.loads((out / "report.json").read_text())["train"]["epochs"] == 1


def test_xla_train_step_matches_plain_tf_function():
    """The GPU path (jit_compile=True) compiled and run on the CPU: same loss and update."""
    cfg = tiny_cfg("training.learning_rate=0.001")
    parts = build_parts(cfg)
    batch = make_batch(parts.market.simulate(256), parts.derivative, parts.instruments)
    results = []
    for jit in (False, True):
        hedger = make_hedger(cfg, parts, compile=False)
        hedger.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=jit)
        hedger.build_from_batch(batch)
        step = tf.function(hedger.train_step, jit_compile=jit)
        logs = step(batch)
        results.append((float(logs["loss"]), weights(hedger)))
    (loss_a, w_a), (loss_b, w_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for a, b in zip(w_a, w_b):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_callbacks_early_stopping_and_target(tmp_path):
    cfg = tiny_cfg("training.early_stopping_patience=1", "training.epochs=3")
    parts = build_parts(cfg)
    hedger = make_hedger(cfg, parts)
    target = TargetLossStopping(target=1e9)  # reached at once
    history = fit_hedger(cfg, hedger, parts, verbose=0,
                         callbacks=[target, keras.callbacks.TensorBoard(str(tmp_path / "tb"))])
    assert target.reached_at_step == 3 and len(history.history["loss"]) == 1
    assert any((tmp_path / "tb").rglob("events.out.tfevents*"))


def test_fixed_training_set_repeats_paths():
    cfg = tiny_cfg("training.fresh_paths=false")
    parts = build_parts(cfg)
    ds = PathBatches(parts.market, parts.derivative, parts.instruments, 64, 2, fresh=False)
    a = ds[1]["payoff"].numpy()
    ds.on_epoch_end()
    np.testing.assert_array_equal(a, ds[1]["payoff"].numpy())
    fresh = PathBatches(parts.market, parts.derivative, parts.instruments, 64, 2, fresh=True)
    b = fresh[1]["payoff"].numpy()
    fresh.on_epoch_end()
    assert not np.array_equal(b, fresh[1]["payoff"].numpy())


def test_path_batches_are_make_batch_of_the_same_paths_traced_once():
    # PathBatches runs make_batch as one traced graph: the same batch as the eager function, one trace.
    from deephedge_tf.features import make_batch

    cfg = tiny_cfg("hedges.floating_grid.moneyness=[0.9, 1.0]", "hedges.floating_grid.maturities=[4, 4]")
    parts = build_parts(cfg)
    ds = PathBatches(parts.market, parts.derivative, parts.instruments, 64, 3, fresh=True, seed=5)
    for i in range(3):
        got = ds[i]
        paths = parts.market.simulate(64, start=ds.start_of(i), seed=5)
        want = make_batch(paths, parts.derivative, parts.instruments)
        assert sorted(got) == sorted(want)
        for a, b in zip(tf.nest.flatten(got), tf.nest.flatten(want)):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    assert ds._assemble.experimental_get_tracing_count() == 1


def test_fit_on_path_batches_trains_on_each_epochs_fresh_paths():
    # Hedger.fit feeds PathBatches through its tf.data pipeline: the same weights as a fit on the batches
    # the epochs must see, drawn by hand (epoch e, item i: PathBatches.start_of after on_epoch_end).
    cfg = tiny_cfg("training.optimizer=adam")
    parts = build_parts(cfg)
    data = PathBatches(parts.market, parts.derivative, parts.instruments, 64, 2, fresh=True, seed=3)
    by_hand = PathBatches(parts.market, parts.derivative, parts.instruments, 64, 2, fresh=True, seed=3)
    batches = [by_hand[i] for i in range(2)]
    by_hand.on_epoch_end()
    batches += [by_hand[i] for i in range(2)]
    assert not np.array_equal(batches[0]["payoff"].numpy(), batches[2]["payoff"].numpy())
    explicit = tf.data.Dataset.from_tensors(batches[0])
    for batch in batches[1:]:
        explicit = explicit.concatenate(tf.data.Dataset.from_tensors(batch))

    a, b = make_hedger(cfg, parts), make_hedger(cfg, parts)
    a.build_from_batch(batches[0])
    b.build_from_batch(batches[0])
    b.set_weights(a.get_weights())
    history = a.fit(data, validation_data=data, epochs=2, verbose=0)
    b.fit(explicit, epochs=1, verbose=0)
    for x, y in zip(weights(a), weights(b)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    assert int(a.optimizer.iterations.numpy()) == 4 and len(history.history["val_loss"]) == 2
    # Hedger.evaluate takes the same pipeline: the loss of the batches themselves.
    held = PathBatches(parts.market, parts.derivative, parts.instruments, 64, 2, fresh=False, seed=9)
    by_batches = tf.data.Dataset.from_tensors(held[0]).concatenate(tf.data.Dataset.from_tensors(held[1]))
    assert a.evaluate(held, verbose=0) == pytest.approx(a.evaluate(by_batches, verbose=0), rel=1e-6)


def test_train_job_writes_the_run_directory(tmp_path):
    cfg = tiny_cfg("hedges.floating_grid.moneyness=[1.0]", "hedges.floating_grid.maturities=[4]",
                   "training.tensorboard=true")
    report = train_job(cfg, tmp_path, echo=lambda *_: None, verbose=0)
    for name in ("config.yaml", "report.json", "metrics.csv", "history.csv", "plots/pnl_histograms.png",
                 "plots/positions.png", "plots/learning_curves.png", "checkpoints/final.weights.h5",
                 "saved_model/saved_model.pb"):
        assert (tmp_path / name).is_file(), name
    # TensorBoard: per-epoch scalars of the losses and of the optimizer (here Adam's learning rate).
    tags = set()
    for events in (tmp_path / "tensorboard").rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            tags.update(v.tag for v in event.summary.value)
    assert {"epoch_loss", "epoch_opt_learning_rate"} <= tags, tags
    assert "opt_learning_rate" in (tmp_path / "history.csv").read_text().splitlines()[0]
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert set(on_disk["strategies"]) == {"hedged", "unhedged", "bs_delta"}
    for s in on_disk["strategies"].values():
        assert {"pnl_mean", "pnl_std", "es_95", "entropic", "cost_mean", "objective"} <= set(s)
    assert on_disk["train"]["steps"] == 12 and on_disk["train"]["wall_s"] > 0
    assert np.isfinite(on_disk["train"]["final_loss"])
    assert on_disk["price"]["reference_method"] == "Black-Scholes"
    assert report["strategies"]["hedged"]["objective"] < report["strategies"]["unhedged"]["objective"]

    # deephedge evaluate: reloads the final weights and reproduces the same numbers on the same paths
    from deephedge_tf.cli import main

    assert main(["evaluate", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "report.json").read_text())
    assert again["train"] == on_disk["train"]
    for name, s in on_disk["strategies"].items():
        for key, value in s.items():
            assert again["strategies"][name][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (name, key)


    # deephedge export: the same policy as the run's own SavedModel
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "exported")]) == 0
    a = tf.saved_model.load(str(tmp_path / "saved_model"))
    b = tf.saved_model.load(str(tmp_path / "exported"))
    parts = build_parts(cfg)
    batch = make_batch(parts.market.simulate(64, seed=7), parts.derivative, parts.instruments)
    inputs = {k: batch["obs"][k] for k in ("features", "spot", "variance", "tau", "bs_delta", "bs_gamma")}
    inputs["mask"] = batch["mask"]
    np.testing.assert_array_equal(a.signatures["whole_path"](**inputs)["actions"].numpy(),
                                  b.signatures["whole_path"](**inputs)["actions"].numpy())


def test_evaluate_rejects_a_directory_without_a_run(tmp_path, capsys):
    from deephedge_tf.cli import main

    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a finished training run" in capsys.readouterr().err
