"""SavedModel export of policies: reloaded without deephedge_tf, the endpoints reproduce the hedger."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from deephedge_tf.config import from_dict
from deephedge_tf.errors import DeepHedgeError
from deephedge_tf.export import METADATA_FILE, PATH_INPUTS, export_hedger, export_policy
from deephedge_tf.features import feature_names, make_batch
from deephedge_tf.instruments.hedges import hedge_tensors
from deephedge_tf.training import build_parts, fit_hedger, make_hedger

STEPS = 10
PATHS = 2048
# head_scale 0.1 (not the default 1e-3) so the actions are O(0.1), where a 1e-6 tolerance means
# something; at 1e-3 they are ~1e-2 and almost any bug would pass it.
OVERRIDES = ["market.model=gbm", "dtype=float32", f"time.steps={STEPS}", "policy.kind=recurrent",
             "policy.num_blocks=1", "policy.width=8", "policy.head_scale=0.1", "policy.num_layers=1",
             "hedges.floating_grid.moneyness=[1.0]", "hedges.floating_grid.maturities=[4]",
             "training.batch_size=256", "training.batches_per_epoch=3", "training.epochs=1",
             "training.validation_paths=256"]

# Runs in a fresh interpreter: only TensorFlow and NumPy, never deephedge_tf.
RELOAD_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf

    inputs_file, out_file, *models = sys.argv[1:]
    data = dict(np.load(inputs_file))
    results = {}
    for name in models:
        m = tf.saved_model.load(name)
        assert "deephedge_tf" not in sys.modules, "loading the SavedModel imported deephedge_tf"
        obs = {k: tf.constant(data[k]) for k in json.loads(str(data["path_inputs"]))}
        results[name + "/whole_path"] = m.signatures["whole_path"](**obs)["actions"].numpy()
        results[name + "/serving_default"] = m.signatures["serving_default"](**obs)["actions"].numpy()

        meta = m.signatures["metadata"]()
        results[name + "/metadata"] = np.array(meta["json"].numpy().decode())
        steps, n = int(meta["num_steps"]), int(meta["num_instruments"])
        batch = obs["features"].shape[0]
        state = m.signatures["initial_state"](batch_size=tf.constant(batch))
        num_states = int(state.pop("num_states"))
        assert num_states == len(state) == int(meta["num_states"])
        holdings = prev = tf.zeros([batch, n], obs["features"].dtype)
        actions = []
        for k in range(steps):  # a risk system's daily loop: thread holdings, prev_action and state
            step = {key: value[:, k] for key, value in obs.items()}
            out = m.signatures["one_step"](holdings=holdings, prev_action=prev, **step, **state)
            action = out.pop("action")
            state = {key.replace("new_", ""): value for key, value in out.items()}
            holdings, prev = holdings + action, action
            actions.append(action.numpy())
        results[name + "/one_step"] = np.stack(actions, axis=1)
    assert "deephedge_tf" not in sys.modules
    np.savez(out_file, **results)
""")


@pytest.fixture(scope="module")
def setup():
    """Config, parts and one batch of PATHS float32 paths (batch-major)."""
    cfg = from_dict({}, OVERRIDES)
    parts = build_parts(cfg)
    paths = parts.market.simulate(PATHS, seed=cfg.seed + 7)
    batch = make_batch(paths, parts.derivative, parts.instruments)
    names = dict(feature_names=feature_names(parts.derivative),
                 instrument_names=hedge_tensors(parts.instruments, paths).names)
    return cfg, parts, batch, names


def _reference(hedger, batch):
    """The hedger's own actions, batch-major ``[B, T, N]``."""
    return tf.transpose(hedger(batch)["actions"], [1, 0, 2]).numpy()


@pytest.fixture(scope="module")
def exported(setup, tmp_path_factory):
    """Trained recurrent, untrained MLP and bs_delta hedgers exported; reference actions of each."""
    cfg, parts, batch, names = setup
    keras.utils.set_random_seed(0)
    out = tmp_path_factory.mktemp("export")
    recurrent = make_hedger(cfg, parts)
    fit_hedger(cfg, recurrent, parts, verbose=0)
    assert int(recurrent.optimizer.iterations.numpy()) == 3
    mlp = make_hedger(cfg, parts, policy_kind="mlp", compile=False)
    delta = make_hedger(cfg, parts, policy_kind="bs_delta", compile=False)
    refs = {"recurrent": _reference(recurrent, batch), "mlp": _reference(mlp, batch)}
    export_hedger(recurrent, batch, out / "recurrent", **names)
    num_features = batch["obs"]["features"].shape[-1]
    export_policy(mlp, out / "mlp", num_steps=STEPS, num_features=num_features)
    export_policy(delta.policy, out / "bs_delta", num_steps=STEPS, num_features=num_features)  # never called
    refs["bs_delta"] = _reference(delta, batch)
    return out, refs


def test_reloaded_without_the_library_reproduces_the_hedger(setup, exported, tmp_path):
    _, _, batch, names = setup
    out, refs = exported
    inputs = {k: batch["obs"][k].numpy() for k in PATH_INPUTS if k != "mask"}
    inputs["mask"] = batch["mask"].numpy()
    inputs["path_inputs"] = np.array(json.dumps(PATH_INPUTS))
    np.savez(tmp_path / "inputs.npz", **inputs)
    script = tmp_path / "reload.py"
    script.write_text(RELOAD_SCRIPT)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    models = [str(out / name) for name in refs]
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz"),
                           *models], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = np.load(tmp_path / "out.npz")

    assert np.abs(refs["recurrent"]).max() > 0.05  # non-trivial actions, so the tolerance bites
    for name, ref in refs.items():
        assert ref.shape == (PATHS, STEPS, 2)
        for endpoint in ("whole_path", "serving_default", "one_step"):
            got = results[f"{out / name}/{endpoint}"]
            assert got.dtype == np.float32 and got.shape == ref.shape
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6, err_msg=f"{name} {endpoint}")

    meta = json.loads(str(results[f"{out / 'recurrent'}/metadata"]))
    assert meta["num_steps"] == STEPS and meta["num_instruments"] == 2 and meta["dtype"] == "float32"
    assert meta["feature_names"] == list(names["feature_names"]) and meta["num_features"] == 3
    assert meta["instrument_names"] == list(names["instrument_names"])
    # The trained policy thinks in natural units (the option's unit is not one contract); the endpoints
    # above still reproduce the hedger's contracts, so the conversion is inside the export.
    assert meta["instrument_units"][0] == 1.0 and abs(meta["instrument_units"][1] - 1.0) > 0.05
    assert meta["state_shapes"] == [[None, 8], [None, 8]] and meta["policy"] == "RecurrentPolicy"
    assert json.loads((out / "recurrent" / METADATA_FILE).read_text()) == meta
    stateless = json.loads(str(results[f"{out / 'bs_delta'}/metadata"]))
    assert stateless["state_shapes"] == [] and stateless["feature_names"] == []


def _path_inputs(batch_size=5, steps=STEPS, dtype=tf.float32):
    x = {k: tf.zeros([batch_size, steps], dtype) for k in PATH_INPUTS}
    x["features"] = tf.zeros([batch_size, steps, 3], dtype)
    x["mask"] = tf.ones([batch_size, steps, 2], dtype)
    return x


def test_wrong_inputs_are_clear_errors(exported):
    m = tf.saved_model.load(str(exported[0] / "recurrent"))
    sig, fn = m.signatures["whole_path"], m.whole_path
    assert sig(**_path_inputs())["actions"].shape == (5, STEPS, 2)

    # Wrong T: the signature would run a wrong-length path; the in-graph check names input and shape
    # (whichever input's check runs first: they run in parallel).
    names = "|".join(PATH_INPUTS)
    wrong_t = rf"Shape of tensor ({names}) \[5,11(,3|,2)?\] is not compatible with expected shape \[\?,10(,3|,2)?\]"
    with pytest.raises(tf.errors.InvalidArgumentError, match=wrong_t):
        sig(**_path_inputs(steps=11))
    with pytest.raises(TypeError, match=r"shape=\(5, 11, 3\).*shape=\(None, 10, 3\).*name='features'"):
        fn(**_path_inputs(steps=11))
    # float64 for a float32 model: the restored function names the input; the signature the dtypes.
    with pytest.raises(TypeError, match=r"float64, name='features'\) to TensorSpec.*float32"):
        fn(**_path_inputs(dtype=tf.float64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a float tensor but is a double"):
        sig(**_path_inputs(dtype=tf.float64))
    # Missing and unknown inputs.
    x = _path_inputs()
    del x["spot"]
    with pytest.raises(TypeError, match="missing a required argument: 'spot'"):
        sig(**x)
    with pytest.raises(TypeError, match="unexpected keyword argument 'holdings'"):
        sig(**_path_inputs(), holdings=tf.zeros([5, STEPS, 2]))
    # Batch sizes that disagree would broadcast silently.
    x = _path_inputs()
    x["tau"] = tf.zeros([1, STEPS])
    with pytest.raises(tf.errors.InvalidArgumentError, match="whole_path: input tau must have as many rows"):
        sig(**x)

    step = {k: v[:, 0] for k, v in _path_inputs().items()}
    state = m.signatures["initial_state"](batch_size=tf.constant(5))
    state.pop("num_states")
    zeros = tf.zeros([5, 2])
    by_name = m.signatures["one_step"](holdings=zeros, prev_action=zeros, **step, **state)
    assert by_name["action"].shape == (5, 2) and by_name["new_state_1"].shape == (5, 8)
    # The restored function takes the state positionally after prev_action.
    positional = m.one_step(step["features"], step["mask"], zeros, step["spot"], step["variance"], step["tau"],
                            step["bs_delta"], step["bs_gamma"], zeros, state["state_0"], state["state_1"])
    np.testing.assert_array_equal(positional["action"].numpy(), by_name["action"].numpy())
    state["state_1"] = tf.zeros([5, 9])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"state_1 \[5,9\].*\[\?,8\]"):
        m.signatures["one_step"](holdings=zeros, prev_action=zeros, **step, **state)


def test_export_writes_atomically_and_refuses_to_overwrite(setup, tmp_path, monkeypatch):
    cfg, parts, batch, _ = setup
    hedger = make_hedger(cfg, parts, policy_kind="bs_delta", compile=False)
    target = tmp_path / "models" / "delta"
    export_hedger(hedger, batch, target)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_hedger(hedger, batch, target)
    stamp = (target / "saved_model.pb").stat().st_mtime_ns

    def broken_save(obj, export_dir, **kwargs):
        (pathlib.Path(export_dir) / "saved_model.pb").write_text("half")
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        export_hedger(hedger, batch, target, overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        export_hedger(hedger, batch, tmp_path / "models" / "fresh")
    # Neither the old model nor the directory holds anything half-written, and no temp dir is left.
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["delta"]
    assert (target / "saved_model.pb").stat().st_mtime_ns == stamp

    monkeypatch.undo()
    export_hedger(hedger, batch, target, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["delta"]
    assert (target / "saved_model.pb").stat().st_mtime_ns != stamp


def test_bad_export_arguments(setup, tmp_path):
    cfg, parts, batch, _ = setup
    hedger = make_hedger(cfg, parts, policy_kind="bs_delta", compile=False)
    with pytest.raises(DeepHedgeError, match="feature_names has 2 entries"):
        export_hedger(hedger, batch, tmp_path / "a", feature_names=["x", "y"])
    with pytest.raises(DeepHedgeError, match="num_instruments=3 but the policy trades 2"):
        export_policy(hedger, tmp_path / "b", num_steps=STEPS, num_features=3, num_instruments=3)
    as64 = tf.nest.map_structure(lambda x: tf.cast(x, tf.float64), batch)
    with pytest.raises(DeepHedgeError, match="the batch is float64 but the policy computes in float32"):
        export_hedger(hedger, as64, tmp_path / "c")
    with pytest.raises(DeepHedgeError, match="dtype=float64 but the policy computes in float32"):
        export_policy(hedger, tmp_path / "e", num_steps=STEPS, num_features=3, dtype="float64")
    mlp = make_hedger(cfg, parts, policy_kind="mlp", compile=False)
    mlp(batch)  # built for F = 3
    with pytest.raises(DeepHedgeError, match="MLPPolicy does not accept num_features=4"):
        export_policy(mlp, tmp_path / "f", num_steps=STEPS, num_features=4)
    with pytest.raises(DeepHedgeError, match="expected a Policy or a Hedger"):
        export_policy(object(), tmp_path / "d", num_steps=STEPS, num_features=3)
    assert not any(tmp_path.iterdir())
