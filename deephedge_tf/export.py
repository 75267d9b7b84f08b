"""Export a trained policy as a TensorFlow SavedModel that risk systems load without this library.

    export_hedger(hedger, batch, "models/hedge-v1")      # shapes and dtype from one example batch
    # or, without a batch:
    export_policy(policy_or_hedger, "models/hedge-v1", num_steps=30, num_features=3)

Elsewhere (no ``deephedge_tf`` import needed)::

    m = tf.saved_model.load("models/hedge-v1")
    actions = m.signatures["whole_path"](features=..., mask=..., spot=..., variance=..., tau=...,
                                         bs_delta=..., bs_gamma=...)["actions"]        # [B, T, N]
    state = m.signatures["initial_state"](batch_size=tf.constant(B))                   # {"state_i"}
    out = m.signatures["one_step"](features=..., mask=..., holdings=..., spot=..., variance=..., tau=...,
                                   bs_delta=..., bs_gamma=..., prev_action=..., **state)
    action = out["action"]                                  # [B, N]; next state: out["new_state_i"]

Endpoints (``D`` = the model's float dtype; every input is a named TensorSpec):

================  ====================================================  ===============================
endpoint          inputs                                                outputs
================  ====================================================  ===============================
``whole_path``    features ``[B, T, F]``, mask ``[B, T, N]``, spot,     ``actions [B, T, N]``
(serving_default) variance, tau, bs_delta, bs_gamma ``[B, T]`` (all D)
``one_step``      features ``[B, F]``, mask, holdings, prev_action      ``action [B, N]``,
                  ``[B, N]``, spot, variance, tau, bs_delta, bs_gamma   ``new_state_i``
                  ``[B]``, ``state_0 .. state_{k-1}``
``initial_state`` batch_size: int32 scalar                              ``state_i`` (zeros)
``metadata``      (none)                                                num_steps, num_features,
                                                                        num_instruments, num_states,
                                                                        dtype, policy, feature_names,
                                                                        instrument_names, json
================  ====================================================  ===============================

Actions, holdings and ``prev_action`` are in contracts of each instrument, whatever natural units the
policy was trained in (``instrument_units`` in the metadata JSON: contracts per unit).

``T`` is fixed at export (the time loop is unrolled in Python, see :mod:`deephedge_tf.hedger`); ``B``
is free.  ``whole_path`` reproduces :meth:`Hedger.unroll`'s decisions: holdings are the cumulative
sum of earlier (masked) actions, ``prev_action`` is the previous action, the recurrent state is
threaded.  A caller of ``one_step`` does the same bookkeeping: at ``t_0`` pass zero holdings and
``prev_action`` and the ``initial_state``; afterwards ``holdings += action``, ``prev_action = action``,
``state_i = new_state_i``.  Stateless policies have no ``state_i`` inputs or outputs (and
``initial_state`` returns only ``num_states = 0``).

Input checking.  A missing or unknown input is a TypeError naming it.  Shapes are checked inside
the graph (the signature functions themselves do not check them): a wrong ``T``, ``F``, ``N``, state
width or rank, or inputs with different ``B``, raise InvalidArgumentError naming the input and the
expected shape.  Dtypes: ``m.signatures[...]`` rejects a tensor of the wrong dtype with an
InvalidArgumentError that gives the input's position, not its name (inputs are ordered by name),
and silently casts NumPy arrays to ``D``; the restored functions (``m.whole_path(...)``,
``m.one_step(...)``) reject both wrong shapes and wrong dtypes with a TypeError naming the input.
``m.one_step`` takes the ``state_i`` positionally after ``prev_action``; the signature by name.

Metadata is also written as ``assets.extra/deephedge_metadata.json`` next to the model, for readers
without TensorFlow.  The export is atomic: it is written into a temporary directory next to ``path``
and renamed into place, so ``path`` never holds a half-written model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

from deephedge_tf.errors import DeepHedgeError
from deephedge_tf.policies.base import DEFAULT_TIME_LOOP, Policy, check_time_loop, policy_rollout, policy_step

#: Per-step observation keys a caller supplies (``holdings`` is derived in ``whole_path``).
PATH_INPUTS = ("features", "mask", "spot", "variance", "tau", "bs_delta", "bs_gamma")
#: Scalar-per-path observations: ``[B, T]`` in ``whole_path``, ``[B]`` in ``one_step``.
SCALAR_OBS = ("spot", "variance", "tau", "bs_delta", "bs_gamma")
METADATA_FILE = os.path.join("assets.extra", "deephedge_metadata.json")
FORMAT_VERSION = 1


# -- the decision loop, shared by the exported endpoints ------------------------------------------

# -- signatures ------------------------------------------------------------------------------------

def _path_specs(num_steps, num_features, num_instruments, dtype):
    """Batch-major ``whole_path`` inputs, in :data:`PATH_INPUTS` order."""
    shapes = {"features": [None, num_steps, num_features], "mask": [None, num_steps, num_instruments]}
    return [tf.TensorSpec(shapes.get(k, [None, num_steps]), dtype, name=k) for k in PATH_INPUTS]


def _step_specs(num_features, num_instruments, dtype, state_specs):
    """``one_step`` inputs: observations, holdings, prev_action, then ``state_i``."""
    n = [None, num_instruments]
    specs = [tf.TensorSpec([None, num_features], dtype, name="features"), tf.TensorSpec(n, dtype, name="mask"),
             tf.TensorSpec(n, dtype, name="holdings")]
    specs += [tf.TensorSpec([None], dtype, name=k) for k in SCALAR_OBS]
    specs.append(tf.TensorSpec(n, dtype, name="prev_action"))
    return specs + list(state_specs)


def _state_specs(policy, dtype):
    """Named specs ``state_i`` ``[None, ...]`` from one example of the policy's zero state."""
    example = policy.initial_state(1, dtype)
    return [tf.TensorSpec([None, *s.shape[1:]], s.dtype, name=f"state_{i}") for i, s in enumerate(example)]


def _probe(policy, num_features, num_instruments, dtype):
    """One eager call on a zero observation of the export's shapes.

    Builds an unbuilt policy (ExportArchive.track needs its weights; baselines build on their first
    call) and turns a shape mismatch with a built policy (e.g. trained on another ``F``) into a clear
    error here instead of a failure deep inside tracing.
    """
    zeros_n = tf.zeros([1, num_instruments], dtype)
    obs = {"features": tf.zeros([1, num_features], dtype), "mask": tf.ones([1, num_instruments], dtype)}
    obs.update({k: tf.ones([1], dtype) for k in SCALAR_OBS})
    try:
        policy_step(policy, obs, zeros_n, zeros_n, policy.initial_state(1, dtype), training=False)
    except (ValueError, TypeError, tf.errors.InvalidArgumentError) as e:
        raise DeepHedgeError(f"export: {type(policy).__name__} does not accept num_features={num_features}, "
                             f"num_instruments={num_instruments}, dtype={dtype.name}: {e}") from e


def _metadata(policy, num_steps, num_features, num_instruments, dtype, feature_names, instrument_names,
              state_specs):
    return {
        "format_version": FORMAT_VERSION,
        "policy": type(policy).__name__,
        "num_steps": num_steps,
        "num_features": num_features,
        "num_instruments": num_instruments,
        "dtype": dtype.name,
        "feature_names": list(feature_names),
        "instrument_names": list(instrument_names),
        # Contracts per natural unit the policy was trained in; inputs and outputs here are contracts.
        "instrument_units": [float(u) for u in keras.ops.convert_to_numpy(policy.instrument_units)],
        "state_shapes": [[None, *map(int, s.shape[1:])] for s in state_specs],
        "state_dtypes": [s.dtype.name for s in state_specs],
        "path_inputs": list(PATH_INPUTS),
        "step_inputs": [*(s.name for s in _step_specs(1, 1, dtype, state_specs))],
    }


def _names(names, count, what):
    if names is None:
        return ()
    names = tuple(str(n) for n in names)
    if len(names) != count:
        raise DeepHedgeError(f"export: {what} has {len(names)} entries {list(names)}; the model has {count}")
    return names


# -- public API ------------------------------------------------------------------------------------

def export_policy(policy, path, *, num_steps: int, num_features: int, num_instruments: int | None = None,
                  dtype=None, feature_names=None, instrument_names=None, overwrite: bool = False,
                  time_loop: str = DEFAULT_TIME_LOOP) -> Path:
    """Writes ``policy`` (a :class:`Policy`, or a Hedger whose ``.policy`` is used) as a SavedModel.

    Args:
      policy: the policy or a Hedger.  An unbuilt policy (e.g. a baseline never called) is built
        by one zero-input call, which also checks that it accepts ``F`` features and ``N`` instruments.
      path: target directory; must not exist unless ``overwrite``.
      num_steps: ``T`` of the ``whole_path`` endpoint.
      num_features: ``F``, the feature columns (``len(deephedge_tf.features.feature_names(derivative))``).
      num_instruments: ``N`` (default: ``policy.num_instruments``; must agree with it).
      dtype: float dtype of every input; must be the policy's compute dtype (the default).
      feature_names, instrument_names: optional names (``F`` and ``N`` entries) stored as metadata.
      overwrite: replace an existing ``path`` (the old model stays in place until the new one is
        complete).
      time_loop: how ``whole_path`` runs its ``T`` decisions (:func:`policy_rollout`): ``"graph"`` (the
        default) one ``tf.while_loop`` (a graph whose size does not grow with ``T``), ``"python"`` unrolled
        in the graph.  Same actions.

    Returns the ``Path`` written.  See the module docstring for the endpoints.

    Exported, loaded back with TensorFlow alone and called one step at a time, as a risk system would:

    >>> import os, tempfile
    >>> import tensorflow as tf
    >>> from deephedge_tf.policies import BlackScholesDeltaPolicy
    >>> from deephedge_tf.policies.base import example_observations
    >>> path = export_policy(BlackScholesDeltaPolicy(num_instruments=1), os.path.join(tempfile.mkdtemp(), "bs-delta"),
    ...                      num_steps=5, num_features=4)
    >>> served = tf.saved_model.load(str(path))
    >>> out = served.signatures["one_step"](prev_action=tf.zeros([3, 1]), **example_observations(num_instruments=1))
    >>> out["action"].numpy()[:, 0]  # buys the delta, 0.5, from no holdings
    array([0.5, 0.5, 0.5], dtype=float32)
    """
    policy = getattr(policy, "policy", policy)
    if not isinstance(policy, Policy):
        raise DeepHedgeError(f"export: expected a Policy or a Hedger; got {type(policy).__name__}")
    num_steps, num_features = int(num_steps), int(num_features)
    num_instruments = policy.num_instruments if num_instruments is None else int(num_instruments)
    if num_instruments != policy.num_instruments:
        raise DeepHedgeError(f"export: num_instruments={num_instruments} but the policy trades "
                             f"{policy.num_instruments} instruments")
    if num_steps < 1 or num_features < 1:
        raise DeepHedgeError(f"export: num_steps and num_features must be >= 1; got {num_steps}, {num_features}")
    check_time_loop(time_loop, "export")
    dtype = tf.as_dtype(dtype or policy.compute_dtype)
    if dtype != tf.as_dtype(policy.compute_dtype):
        # Holdings and state accumulate the policy's actions: inputs must share its dtype.
        raise DeepHedgeError(f"export: dtype={dtype.name} but the policy computes in {policy.compute_dtype}")
    feature_names = _names(feature_names, num_features, "feature_names")
    instrument_names = _names(instrument_names, num_instruments, "instrument_names")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"export: {path} exists; pass overwrite=True to replace it")

    _probe(policy, num_features, num_instruments, dtype)
    state_specs = _state_specs(policy, dtype)
    meta = _metadata(policy, num_steps, num_features, num_instruments, dtype, feature_names,
                     instrument_names, state_specs)
    archive = _archive(policy, num_steps, num_features, num_instruments, dtype, state_specs, meta, time_loop)
    _write_atomically(archive, path, meta, overwrite)
    return path


def export_hedger(hedger, batch, path, *, feature_names=None, instrument_names=None,
                  overwrite: bool = False) -> Path:
    """:func:`export_policy` with ``T``, ``F``, ``N`` and the dtype read from one example batch, and the
    hedger's ``time_loop``.

    ``batch`` is a batch-major batch dict (:func:`deephedge_tf.features.make_batch`, one item of
    :class:`deephedge_tf.data.PathBatches`): features ``[B, T, F]``, mask ``[B, T, N]``.
    """
    features = batch["obs"]["features"]
    mask = batch["mask"]
    _, steps, num_features = features.shape
    num_instruments = mask.shape[-1]
    dtype = tf.as_dtype(features.dtype)
    policy = getattr(hedger, "policy", hedger)
    if dtype != tf.as_dtype(policy.compute_dtype):
        raise DeepHedgeError(f"export_hedger: the batch is {dtype.name} but the policy computes in "
                             f"{policy.compute_dtype}; make the batch with the hedger's dtype")
    return export_policy(policy, path, num_steps=steps, num_features=num_features,
                         num_instruments=num_instruments, dtype=dtype, feature_names=feature_names,
                         instrument_names=instrument_names, overwrite=overwrite,
                         time_loop=getattr(hedger, "time_loop", DEFAULT_TIME_LOOP))


# -- the endpoints and writing -----------------------------------------------------------------------

def _checked(endpoint, inputs, specs):
    """``{name: input}`` with every shape checked at run time against its spec and the batch size.

    The SavedModel's signature functions check dtypes but not shapes: a path with the wrong ``T``
    would otherwise run and silently drop or miss steps, and a ``[1]`` input would broadcast
    against ``[B]`` ones.  EnsureShape and Assert run inside the graph, so every caller (signature,
    restored function, TF Serving) gets an InvalidArgumentError naming the input.
    """
    out = {}
    batch = None
    for x, spec in zip(inputs, specs):
        x = tf.ensure_shape(x, spec.shape, name=spec.name)
        if batch is None:
            first, batch = spec.name, tf.shape(x)[0]
        else:
            tf.debugging.assert_equal(
                tf.shape(x)[0], batch,
                message=f"{endpoint}: input {spec.name} must have as many rows (paths B) as {first}")
        out[spec.name] = x
    return out


def _archive(policy, num_steps, num_features, num_instruments, dtype, state_specs, meta, time_loop):
    archive = keras.export.ExportArchive()
    archive.track(policy)

    path_specs = _path_specs(num_steps, num_features, num_instruments, dtype)
    step_specs = _step_specs(num_features, num_instruments, dtype, state_specs)

    # Named parameters (not *inputs) so the restored functions, e.g. ``m.whole_path(features=...)``,
    # take keywords like the signatures do.
    def whole_path(features, mask, spot, variance, tau, bs_delta, bs_gamma):
        x = _checked("whole_path", (features, mask, spot, variance, tau, bs_delta, bs_gamma), path_specs)
        # Batch-major at the boundary (like Keras datasets), time-major for the loop (like the hedger).
        tm = lambda v: tf.transpose(v, [1, 0] + list(range(2, v.shape.rank)))  # noqa: E731
        obs = {k: tm(x[k]) for k in PATH_INPUTS if k != "mask"}
        actions = policy_rollout(policy, obs, tm(x["mask"]), training=False, time_loop=time_loop)
        return {"actions": tf.transpose(actions, [1, 0, 2])}

    def one_step(features, mask, holdings, spot, variance, tau, bs_delta, bs_gamma, prev_action, *state):
        inputs = (features, mask, holdings, spot, variance, tau, bs_delta, bs_gamma, prev_action, *state)
        x = _checked("one_step", inputs, step_specs)
        obs = {k: x[k] for k in PATH_INPUTS}
        state = tuple(x[s.name] for s in state_specs)
        action, new_state = policy_step(policy, obs, x["holdings"], x["prev_action"], state, training=False)
        out = {"action": action}
        out.update({f"new_state_{i}": s for i, s in enumerate(new_state)})
        return out

    def initial_state(batch_size):
        state = policy.initial_state(batch_size, dtype)
        # A signature needs at least one output: the count keeps stateless policies exportable.
        out = {"num_states": tf.constant(len(state), tf.int32)}
        out.update({f"state_{i}": s for i, s in enumerate(state)})
        return out

    def metadata():
        strings = lambda xs: tf.constant(list(xs), tf.string, shape=[len(xs)])  # noqa: E731
        return {
            "num_steps": tf.constant(num_steps, tf.int32),
            "num_features": tf.constant(num_features, tf.int32),
            "num_instruments": tf.constant(num_instruments, tf.int32),
            "num_states": tf.constant(len(state_specs), tf.int32),
            "dtype": tf.constant(dtype.name),
            "policy": tf.constant(meta["policy"]),
            "feature_names": strings(meta["feature_names"]),
            "instrument_names": strings(meta["instrument_names"]),
            "json": tf.constant(json.dumps(meta)),
        }

    # The first endpoint also becomes serving_default.
    archive.add_endpoint("whole_path", whole_path, path_specs)
    archive.add_endpoint("one_step", one_step, step_specs)
    archive.add_endpoint("initial_state", initial_state, [tf.TensorSpec([], tf.int32, name="batch_size")])
    archive.add_endpoint("metadata", metadata, [])
    return archive


def _write_atomically(archive, path: Path, meta: dict, overwrite: bool) -> None:
    """Writes into a temporary sibling directory, then renames it to ``path``."""
    parent = path.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=parent))
    old = None
    try:
        archive.write_out(str(tmp), verbose=False)
        extra = tmp / METADATA_FILE
        extra.parent.mkdir(exist_ok=True)
        extra.write_text(json.dumps(meta, indent=2) + "\n")
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"export: {path} appeared while exporting; not replacing it")
            # Move the old model aside first: a directory cannot be renamed onto a non-empty one.
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=parent))
            os.replace(path, old / "model")
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not path.exists():
            os.replace(old / "model", path)  # put the previous model back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


__all__ = ["PATH_INPUTS", "SCALAR_OBS", "export_hedger", "export_policy", "policy_rollout", "policy_step"]
