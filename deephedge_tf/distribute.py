"""Training on several devices or machines with TensorFlow's own ``tf.distribute``.

``training.distribute`` picks the strategy (:func:`strategy_for`):

* ``none``: one device (TensorFlow's default strategy).
* ``mirrored``: ``tf.distribute.MirroredStrategy`` over this machine's GPUs, or over its logical CPU devices
  when it has no GPU (one, unless the process configured more: the tests split the CPU in two).
* ``multi_worker``: ``tf.distribute.MultiWorkerMirroredStrategy`` over the machines named in the
  ``TF_CONFIG`` environment variable (every worker runs the same command; worker 0 is the chief).

Two things make a run on ``R`` replicas the run on one device, on the same global batches:

* **The objective sees the whole batch.**  A hedging objective is not a mean of per-path losses (the
  variance, the expected shortfall's quantile and the entropic risk's log-mean-exp couple the paths), so
  a replica's objective on its share of the paths has another gradient.  :func:`gather_paths` hands the
  objective every replica's PnL and costs (``all_gather``, whose gradient is the all-reduced upstream
  gradient cut to the replica's own rows): each replica computes the global objective, divides it by ``R``
  (Keras sums the replicas' gradients), and the sum of the replicas' gradients is the global gradient.
* **Each replica simulates only its own paths.**  :func:`distributed_batches` shards every global batch by
  path index: with ``b = B / R`` paths per replica, replica ``g`` (global index) of global batch ``k``
  simulates paths ``[start_k + g b, start_k + (g + 1) b)``.  The markets' path streams are split-invariant
  (path ``i`` does not depend on how many paths are drawn with it), so the shards are exactly the paths of
  the one-device batch.

Optimizers: Adam and other Keras optimizers, and DH-KFAC under both rules, whose loss curvature is
evaluated on the whole batch as well (:class:`~deephedge_tf.optimizers.train_step.AcrossReplicas`): the
Gauss-Newton rows are the global batch's first paths, assembled from the replicas' shares
(:func:`~deephedge_tf.optimizers.train_step.sample_space_factor`); the Kronecker statistics and step
models are averaged over the replicas and workers (:mod:`deephedge_tf.optimizers.kfac`).  The config
refuses the rest (:class:`deephedge_tf.config.TrainingConfig`): ``curvature_paths`` and the linearised
nested optimiser.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from deephedge_tf.errors import ConfigError

STRATEGIES = ("none", "mirrored", "multi_worker")
# One strategy per process and kind: TensorFlow configures the multi-worker collectives once, at start-up,
# and two MirroredStrategy objects number their collectives from the same keys, so a second one's can be
# taken for the first's (a run after another in one process failed with a collective type mismatch).
_MULTI_WORKER = None
_MIRRORED = {}


def strategy_for(name: str) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy called ``name`` (one of :data:`STRATEGIES`).

        >>> strategy_for("none").num_replicas_in_sync
        1
    """
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tuple(d.name for d in tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU"))
        if devices not in _MIRRORED:
            _MIRRORED[devices] = tf.distribute.MirroredStrategy(list(devices))
        return _MIRRORED[devices]
    if name == "multi_worker":
        global _MULTI_WORKER
        if _MULTI_WORKER is None:
            check_tf_config(os.environ.get("TF_CONFIG"))
            try:
                _MULTI_WORKER = tf.distribute.MultiWorkerMirroredStrategy()
            except RuntimeError as err:  # TensorFlow's context was initialised before the collectives
                raise RuntimeError("training.distribute multi_worker: the strategy must be created before any "
                                   "TensorFlow computation in the process; call deephedge_tf.distribute."
                                   "strategy_for('multi_worker') (or training.distribution_strategy(cfg)) "
                                   f"first ({err})") from None
        return _MULTI_WORKER
    raise ConfigError("training.distribute", name, f"one of {list(STRATEGIES)}")


def check_tf_config(raw: str | None) -> dict:
    """``TF_CONFIG`` parsed and checked: a ``cluster`` with a ``worker`` list and this process's ``task``.

    Without it ``MultiWorkerMirroredStrategy`` would train alone on this machine, which is not what
    ``multi_worker`` asks for.

        >>> check_tf_config('{"cluster": {"worker": ["host0:12345", "host1:12345"]},'
        ...                 ' "task": {"type": "worker", "index": 1}}')["task"]
        {'type': 'worker', 'index': 1}
    """
    allowed = ('JSON {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}} '
               "(the same cluster on every worker, its own index on each)")
    if not raw:
        raise ConfigError("training.distribute", "multi_worker", f"the environment variable TF_CONFIG set to {allowed}")
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ConfigError("TF_CONFIG", raw, f"{allowed}; not JSON: {err}") from None
    workers = parsed.get("cluster", {}).get("worker") if isinstance(parsed, dict) else None
    task = parsed.get("task") if isinstance(parsed, dict) else None
    if not isinstance(workers, list) or not workers or not all(isinstance(w, str) for w in workers):
        raise ConfigError("TF_CONFIG.cluster.worker", workers, allowed)
    if (not isinstance(task, dict) or task.get("type") != "worker" or not isinstance(task.get("index"), int)
            or not 0 <= task["index"] < len(workers)):
        raise ConfigError("TF_CONFIG.task", task, f"{allowed}, index in [0, {len(workers) - 1}]")
    return parsed


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files: always, except on workers other than worker 0."""
    if not is_multi_worker(strategy):
        return True
    return strategy.cluster_resolver.task_id == 0  # TF_CONFIG names workers only (check_tf_config)


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """Whether ``strategy`` spans several worker processes."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver is not None and len(resolver.cluster_spec().as_dict().get("worker", [])) > 1


def first_local_value(strategy: tf.distribute.Strategy, value):
    """The value of this process's first replica: in a ``merge_call``, for a value every replica hands over
    alike (a global direction, the Gauss-Newton rows assembled from every replica's share), where reducing
    the replicas' copies would only add rounding."""
    return strategy.experimental_local_results(value)[0]


def multi_replica_context():
    """The replica context when running on several replicas, else ``None``."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync <= 1:
        return None
    return ctx


def gather_paths(*tensors):
    """Every replica's rows of ``tensors`` (``[B]`` each, one entry per path, one dtype), concatenated; the
    tensors themselves outside a multi-replica step.  Differentiable: the gradient with respect to a
    replica's own rows is the sum over replicas of the gradient with respect to the gathered rows (so a
    loss computed identically on every replica and divided by the number of replicas has the one-device
    gradient).  One collective for all of them: independent collectives may start in a different order
    on each replica, which TensorFlow's collective ops do not allow."""
    ctx = multi_replica_context()
    if ctx is None:
        return tensors
    gathered = ctx.all_gather(tf.stack(tensors, axis=1), axis=0)
    return tuple(tf.unstack(gathered, num=len(tensors), axis=1))


def replica_batch_size(batch_size: int, strategy: tf.distribute.Strategy, key: str = "training.batch_size") -> int:
    """Paths per replica; the global batch must split evenly (else shards would differ in size and the
    objective's gather would not be the one-device batch)."""
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ConfigError(key, batch_size, f"a multiple of the {replicas} replicas of the distribution strategy")
    return batch_size // replicas


def distributed_batches(batches, strategy: tf.distribute.Strategy, first_epoch: int = 0):
    """A :class:`~deephedge_tf.data.PathBatches` as a distributed dataset sharded by path index (module doc),
    from ``first_epoch`` on and without end (``fit`` is given the steps per epoch): each worker's input
    pipeline simulates only its replicas' paths of each global batch.

    Without end because a finite dataset of per-replica batches tells Keras ``replicas x`` too many steps
    (its cardinality is the pipeline's element count), and an iterator kept across epochs must not run dry.
    """
    per_replica = replica_batch_size(batches.batch_size, strategy)

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        local = context.num_replicas_in_sync // context.num_input_pipelines
        first = context.input_pipeline_id * local  # global index of this pipeline's first replica
        return batches.replica_dataset(range(first, first + local), per_replica, first_epoch)

    return strategy.distribute_datasets_from_function(dataset_fn)
