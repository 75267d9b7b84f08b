"""Datasets of hedging batches for ``model.fit``.

:class:`PathBatches` is a ``keras.utils.PyDataset`` whose item ``i`` is one batch dict (see
:func:`deephedge_tf.features.make_batch`) of ``batch_size`` paths:

* ``fresh=True``: new paths every epoch (epoch ``e``, item ``i`` uses global paths
  ``[offset + (e * n + i) * batch_size, ...)``): no fixed training set to over-fit.
* ``fresh=False``: the same ``n`` batches every epoch (a fixed training set of ``n * batch_size``
  paths).

Paths come from the market's split-invariant stream, so batch ``i`` is reproducible from the seed
alone, and validation data can use another seed or a disjoint range of paths.

``Hedger.fit`` and ``Hedger.evaluate`` feed a ``PathBatches`` through :meth:`PathBatches.dataset`, a
``tf.data`` pipeline that hands the batch tensors over without Keras' ``PyDataset`` adapter (a generator
that copies every batch through numpy and draws two extra batches for its signature: ~0.2 s per
step of 50,000 paths, BENCHMARKS.md) and prepares the next batch while the current step runs.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from deephedge_tf.features import make_batch
from deephedge_tf.market.paths import MarketPaths


class PathBatches(keras.utils.PyDataset):
    """Batches of paths from ``market.simulate(num_paths, start, seed)``.

    Args:
      market: a market (:mod:`deephedge_tf.market.models`): ``steps``, ``dt`` and
        ``simulate(num_paths, start=0, seed=None) -> MarketPaths``.
      derivative: the liability (``.payoff(paths)``; see :mod:`deephedge_tf.instruments.derivatives`).
      instruments: hedging instruments (``.tensors(paths)``), completed from the market where they need
        it (:func:`deephedge_tf.instruments.hedges.bind_instruments`).
      batch_size: paths per batch.
      batches_per_epoch: batches per epoch.
      fresh: new paths each epoch (True) or a fixed set (False).
      seed: seed of the path stream (None: the market's own).
      offset: index of the first path used.

        >>> import deephedge_tf as dh
        >>> market = dh.GBM(s0=100.0, sigma=0.2, steps=10, dt=1 / 365)
        >>> data = PathBatches(market, dh.EuropeanOption(strike=100.0), [dh.Spot()], batch_size=64,
        ...                    batches_per_epoch=2)
        >>> len(data), tuple(data[0]["returns"].shape)      # batch-major [B, T, N]
        (2, (64, 10, 1))
    """

    def __init__(self, market, derivative, instruments, batch_size: int, batches_per_epoch: int,
                 fresh: bool = True, seed=None, offset: int = 0):
        super().__init__(workers=1, use_multiprocessing=False)
        from deephedge_tf.instruments.hedges import bind_instruments
        from deephedge_tf.market.models import check_market

        for name, value in (("batch_size", batch_size), ("batches_per_epoch", batches_per_epoch)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"PathBatches: {name} must be an integer >= 1; got {value!r}")
        check_market(market, "PathBatches: market")
        if not callable(getattr(derivative, "payoff", None)):
            raise ValueError(f"PathBatches: derivative {derivative!r} has no payoff(paths)")
        self.market, self.derivative = market, derivative
        self.instruments = bind_instruments(list(instruments), market)
        if not self.instruments:
            raise ValueError("PathBatches: no hedging instruments")
        self.batch_size, self.batches_per_epoch = int(batch_size), int(batches_per_epoch)
        self.fresh, self.seed, self.offset = fresh, seed, int(offset)
        self.epoch = 0
        self._assemble = None  # make_batch traced on the first batch (see _batch)
        self._specs = None  # nesting, shapes and dtypes of the first batch drawn (see dataset)

    def __len__(self):
        return self.batches_per_epoch

    def start_of(self, index: int, epoch: int | None = None) -> int:
        """Global index of the first path of batch ``index`` in ``epoch`` (default: the current epoch)."""
        epoch = self.epoch if epoch is None else epoch
        block = (epoch * self.batches_per_epoch + index) if self.fresh else index
        return self.offset + block * self.batch_size

    def __getitem__(self, index):
        if not 0 <= index < self.batches_per_epoch:
            raise IndexError(index)
        batch = self._paths_batch(self.start_of(index), self.batch_size)
        if self._specs is None:
            self._specs = _specs_of(batch)
        return batch

    def _paths_batch(self, start: int, size: int) -> dict:
        """The batch dict of the stream's paths ``[start, start + size)``."""
        return self._batch(self.market.simulate(size, start=start, seed=self.seed))

    def replica_dataset(self, replicas, shard_size: int, first_epoch: int = 0) -> tf.data.Dataset:
        """One input pipeline's share of every batch, from ``first_epoch`` on, without end: element ``j``
        is paths ``[g * shard_size, (g + 1) * shard_size)`` of step ``j // len(replicas)`` (batch
        ``step % len(self)`` of epoch ``first_epoch + step // len(self)``), ``g = replicas[j % len(replicas)]``
        (:func:`deephedge_tf.distribute.distributed_batches`).  The epoch comes from the element's index,
        not from :attr:`epoch`: the pipeline runs ahead of the training loop.

            >>> import deephedge_tf as dh
            >>> market = dh.GBM(s0=100.0, sigma=0.2, steps=10, dt=1 / 365)
            >>> data = PathBatches(market, dh.EuropeanOption(strike=100.0), [dh.Spot()], batch_size=64,
            ...                    batches_per_epoch=2)
            >>> shards = list(data.replica_dataset([0, 1], 32).take(6))   # 3 steps, 2 replicas
            >>> data.epoch = 1                  # step 2 is the first batch of epoch 1
            >>> bool(tf.reduce_all(shards[5]["payoff"] == data[0]["payoff"][32:]))
            True
        """
        replicas = [int(g) for g in replicas]
        size, local, n = int(shard_size), len(replicas), len(self)

        def draw(element):
            step, slot = divmod(element, local)
            return self._paths_batch(self.start_of(step % n, first_epoch + step // n) + replicas[slot] * size, size)

        return _pipeline(2**62, draw, _specs_of(self._paths_batch(self.offset, size)))

    def dataset(self) -> tf.data.Dataset:
        """This epoch's batches as a ``tf.data.Dataset`` (what ``Hedger.fit`` trains on).

        Item ``i`` is drawn when the pipeline reaches it, with the epoch current then: ``Hedger.fit``
        adds :class:`SyncEpoch` so that a new epoch draws new paths (Keras calls ``on_epoch_end`` only on a
        ``PyDataset`` it iterates itself).  Batches are the same as ``self[i]``, one ahead of the step.

            >>> import deephedge_tf as dh
            >>> market = dh.GBM(s0=100.0, sigma=0.2, steps=10, dt=1 / 365)
            >>> data = PathBatches(market, dh.EuropeanOption(strike=100.0), [dh.Spot()], batch_size=64,
            ...                    batches_per_epoch=2)
            >>> batches = list(data.dataset())
            >>> len(batches), bool(tf.reduce_all(batches[1]["payoff"] == data[1]["payoff"]))
            (2, True)
        """
        if self._specs is None:
            self[0]  # noqa: B018 - drawn for its specs
        return _pipeline(len(self), self.__getitem__, self._specs)

    def _batch(self, paths: MarketPaths) -> dict:
        """``make_batch(paths, ...)`` as one traced graph: run eagerly it dispatches ~1000 small ops per
        batch, 5-6x the graph's time and a third of a small policy's Adam step (BENCHMARKS.md,
        "Training-batch assembly").  Every batch has the same shapes, so it traces once."""
        if self._assemble is None:
            dt, derivative, instruments = paths.dt, self.derivative, self.instruments

            def assemble(spot, variance, integrated_variance, features):
                return make_batch(MarketPaths(dt, spot, variance, integrated_variance, features), derivative,
                                  instruments)

            self._assemble = tf.function(assemble)
        return self._assemble(paths.spot, paths.variance, paths.integrated_variance, dict(paths.features))

    def on_epoch_end(self):
        self.epoch += 1


def _specs_of(batch: dict):
    """The nesting, shapes and dtypes of a batch dict."""
    return tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), batch)


def _pipeline(count: int, draw, specs) -> tf.data.Dataset:
    """Elements ``0 .. count - 1`` as ``draw(element)`` (batch dicts of ``specs``), the next one drawn while
    the current step runs.  ``tf.py_function`` hands the traced batch's tensors over as they are (no
    numpy round trip)."""
    flat = tf.nest.flatten(specs)

    def item(element):
        tensors = tf.py_function(lambda e: tf.nest.flatten(draw(int(e))), [element], Tout=[s.dtype for s in flat])
        for tensor, spec in zip(tensors, flat):
            tensor.set_shape(spec.shape)
        return tf.nest.pack_sequence_as(specs, tensors)

    return tf.data.Dataset.range(count).map(item).prefetch(1)


class SyncEpoch(keras.callbacks.Callback):
    """Keeps a fresh-path dataset's epoch equal to Keras' epoch (``Hedger.fit`` adds it for its PathBatches).

    Through :meth:`PathBatches.dataset` nothing else moves the epoch on; and a run resumed by
    ``BackupAndRestore`` restarts at epoch ``e > 0`` with a new dataset object: this makes it draw the paths
    the interrupted run would have drawn, so the resumed run ends at the same weights as an uninterrupted one.
    """

    def __init__(self, dataset: PathBatches):
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch, logs=None):
        self.dataset.epoch = int(epoch)
