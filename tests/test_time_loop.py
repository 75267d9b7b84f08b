"""The decision loop in the graph (``training.time_loop: graph``, one ``tf.while_loop``) against the loop
unrolled in Python: the same actions, loss, gradients, optimizer steps (Adam, DH-KFAC's default rule)
and exported actions, in float64 on tiny configs."""

import os
import tempfile

import numpy as np
import pytest
import tensorflow as tf

from deephedge_tf.config import from_dict
from deephedge_tf.errors import ConfigError, DeepHedgeError
from deephedge_tf.export import export_hedger, export_policy
from deephedge_tf.features import make_batch, time_major
from deephedge_tf.hedger import Hedger
from deephedge_tf.policies.base import policy_rollout
from deephedge_tf.training import build_parts, make_hedger


def config(time_loop, *extra):
    return from_dict({}, ["market.model=gbm", "dtype=float64", "time.steps=6", "policy.num_blocks=2",
                          "policy.width=4", "policy.head_scale=0.3", "hedges.floating_grid.moneyness=[1.0]",
                          "hedges.floating_grid.maturities=[2]", "hedges.spot.cost=0.01",
                          "training.kfac.curvature_paths=null", f"training.time_loop={time_loop}", *extra])


def hedger_pair(*extra):
    """(python-loop hedger, graph-loop hedger with the same weights, batch of 16 paths)."""
    parts = build_parts(config("python", *extra))
    batch = make_batch(parts.market.simulate(16), parts.derivative, parts.instruments)
    pair = []
    for loop in ("python", "graph"):
        cfg = config(loop, *extra)
        hedger = make_hedger(cfg, build_parts(cfg))
        hedger.build_from_batch(batch)
        pair.append(hedger)
    pair[1].set_weights(pair[0].get_weights())
    assert (pair[0].time_loop, pair[1].time_loop) == ("python", "graph")
    return pair[0], pair[1], batch


@pytest.mark.parametrize("kind", ["recurrent", "no_transaction_band", "mlp"])
def test_graph_loop_gives_the_unrolled_loss_and_gradients(kind):
    unrolled, looped, batch = hedger_pair(f"policy.kind={kind}")
    results = []
    for hedger in (unrolled, looped):
        with tf.GradientTape() as tape:
            out = tf.function(lambda: hedger.unroll(batch, training=True))()
            loss = hedger._loss(out)
        results.append((out["actions"], loss, tape.gradient(loss, hedger.trainable_variables)))
    (a0, l0, g0), (a1, l1, g1) = results
    assert float(tf.reduce_max(tf.abs(a0))) > 1e-3  # actions that are not all zero
    np.testing.assert_allclose(a1.numpy(), a0.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-12)
    for x, y in zip(g1, g0):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-9, atol=1e-14)


# The Kronecker rule's statistics from a loop in the graph are checked against the unrolled loop's in
# tests/test_capture.py (capture.scan); its 27 s fit here added nothing the suite's time can spare.
@pytest.mark.parametrize("optimizer", ["adam", "gauss_newton"])
def test_graph_loop_trains_as_the_unrolled_loop(optimizer):
    """Three fit steps: the same weights after them (the curvature capture inside the while loop gives
    the unrolled loop's Jacobian rows and metric statistics)."""
    extra = ["training.optimizer=adam"] if optimizer == "adam" else [
        "training.optimizer=dhkfac", f"training.kfac.preconditioner={optimizer}"]
    unrolled, looped, batch = hedger_pair(*extra)
    data = tf.data.Dataset.from_tensors(batch).repeat(3)
    for hedger in (unrolled, looped):
        hedger.fit(data, epochs=1, verbose=0)
    assert int(looped.optimizer.iterations.numpy()) == 3
    moved = [float(np.max(np.abs(w))) for w in looped.get_weights()]
    assert max(moved) > 0
    for x, y in zip(looped.get_weights(), unrolled.get_weights()):
        np.testing.assert_allclose(x, y, rtol=1e-7, atol=1e-10)


def test_export_with_the_graph_loop_gives_the_same_actions():
    unrolled, looped, batch = hedger_pair()
    base = tempfile.mkdtemp()
    served = {}
    for name, hedger in (("python", unrolled), ("graph", looped)):
        path = export_hedger(hedger, batch, os.path.join(base, name))
        served[name] = tf.saved_model.load(str(path))
    obs = {k: batch["obs"][k] for k in ("features", "spot", "variance", "tau", "bs_delta", "bs_gamma")}
    outs = {name: m.signatures["whole_path"](mask=batch["mask"], **obs)["actions"].numpy()
            for name, m in served.items()}
    np.testing.assert_allclose(outs["graph"], outs["python"], rtol=1e-12, atol=1e-14)


def test_unknown_time_loop_is_refused_with_the_field_named():
    with pytest.raises(ConfigError, match="training.time_loop"):
        config("vectorised")
    unrolled, _, batch = hedger_pair()
    allowed = r"time_loop must be one of \('python', 'graph'\); got 'vectorised'"
    with pytest.raises(DeepHedgeError, match="Hedger: " + allowed):
        Hedger(unrolled.policy, unrolled.objective, time_loop="vectorised")
    with pytest.raises(DeepHedgeError, match="export: " + allowed):
        export_policy(unrolled, os.path.join(tempfile.mkdtemp(), "m"), num_steps=6,
                      num_features=int(batch["obs"]["features"].shape[-1]), time_loop="vectorised")
    tm = time_major(batch)
    with pytest.raises(DeepHedgeError, match="policy_rollout: " + allowed):
        policy_rollout(unrolled.policy, tm["obs"], tm["mask"], time_loop="vectorised")


def test_the_graph_loop_is_the_default_everywhere():
    # One default for the config, the Hedger, export and the rollout (BENCHMARKS.md: the quickstart in 0.66x the
    # time with the graph loop).
    import inspect

    from deephedge_tf.config import from_dict
    from deephedge_tf.policies.base import DEFAULT_TIME_LOOP

    assert DEFAULT_TIME_LOOP == "graph"
    assert from_dict({}).training.time_loop == DEFAULT_TIME_LOOP
    for fn in (Hedger.__init__, export_policy, policy_rollout):
        assert inspect.signature(fn).parameters["time_loop"].default == DEFAULT_TIME_LOOP, fn
