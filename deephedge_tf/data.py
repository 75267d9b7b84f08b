"""Datasets of hedging batches for ``model.fit``.

:class:`PathBatches` is a ``keras.utils.PyDataset`` whose item ``i`` is one batch dict (see
:func:`deephedge_tf.features.make_batch`) of ``batch_size`` paths:

* ``fresh=True``: new paths every epoch (epoch ``e``, item ``i`` uses global paths
  ``[offset + (e * n + i) * batch_size, ...)``): no fixed training set to over-fit.
* ``fresh=False``: the same ``n`` batches every epoch (a fixed training set of ``n * batch_size``
  paths).

Paths come from the market's split-invariant stream, so batch ``i`` is reproducible from the seed
alone, and validation data can use another seed or a disjoint range of paths.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from deephedge_tf.features import make_batch
from deephedge_tf.market.paths import MarketPaths


class PathBatches(keras.utils.PyDataset):
    """Batches of paths from ``market.simulate(num_paths, start, seed)``.

    Args:
      market: object with ``simulate(num_paths, start=0, seed=None) -> MarketPaths``.
      derivative: the liability (``.payoff(paths)``).
      instruments: hedging instruments (``.tensors(paths)``).
      batch_size: paths per batch.
      num_batches: batches per epoch.
      fresh: new paths each epoch (True) or a fixed set (False).
      seed: seed of the path stream (None: the market's default).
      offset: index of the first path used.
    """

    def __init__(self, market, derivative, instruments, batch_size: int, num_batches: int, fresh: bool = True,
                 seed=None, offset: int = 0):
        super().__init__(workers=1, use_multiprocessing=False)
        if batch_size < 1 or num_batches < 1:
            raise ValueError(f"PathBatches: batch_size and num_batches must be >= 1; got {batch_size}, "
                             f"{num_batches}")
        self.market, self.derivative, self.instruments = market, derivative, instruments
        self.batch_size, self.batches_per_epoch = int(batch_size), int(num_batches)
        self.fresh, self.seed, self.offset = fresh, seed, int(offset)
        self.epoch = 0
        self._assemble = None  # make_batch traced on the first batch (see _batch)

    def __len__(self):
        return self.batches_per_epoch

    def start_of(self, index: int) -> int:
        """Global index of the first path of batch ``index`` in the current epoch."""
        block = (self.epoch * self.batches_per_epoch + index) if self.fresh else index
        return self.offset + block * self.batch_size

    def __getitem__(self, index):
        if not 0 <= index < self.batches_per_epoch:
            raise IndexError(index)
        paths = self.market.simulate(self.batch_size, start=self.start_of(index), seed=self.seed)
        return self._batch(paths)

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


class SyncEpoch(keras.callbacks.Callback):
    """Keeps a fresh-path dataset's epoch equal to Keras' epoch.

    A run resumed by ``BackupAndRestore`` restarts at epoch ``e > 0`` with a new dataset object: this
    makes it draw the paths the interrupted run would have drawn, so the resumed run ends at the same
    weights as an uninterrupted one.
    """

    def __init__(self, dataset: PathBatches):
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch, logs=None):
        self.dataset.epoch = int(epoch)
