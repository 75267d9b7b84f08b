"""Judging a model by the weights its optimizer hands out: the average of its iterates.

An optimizer built with ``use_ema=True`` (Keras' moving average of the iterates; on by default in
:class:`~deephedge_tf.optimizers.kfac.DHKFAC`) keeps an average of the weights beside the weights it
steps, and ``fit`` ends by copying the average into the model (``finalize_variable_values``).  During
training the model holds the last iterate.  Validation should see the weights a run would end with:
:func:`averaged_weights` swaps the average in for a block of code, :class:`ValidateAveragedWeights`
does so for every validation pass of ``fit`` (``Hedger.fit`` adds it), and :class:`AveragedEarlyStopping`
keeps the averaged weights of the best epoch (the config's ``training.early_stopping_patience`` uses it).

Why average at all: a step fitted to one batch of simulated paths moves the weights by that batch's
noise as well as its signal; once the loss is near its floor the last iterate wanders around the
minimiser and the average sits closer to it (BENCHMARKS.md, "Iterate averaging").
"""

from __future__ import annotations

import contextlib

import keras


def _average_of(optimizer, variables):
    """The optimizer's averages of ``variables`` (``None``: the optimizer keeps none for them)."""
    if optimizer is None or not getattr(optimizer, "use_ema", False) or not optimizer.built:
        return None
    if int(optimizer.iterations.numpy()) == 0:  # before the first step the averages are zeros, not weights
        return None
    averages = getattr(optimizer, "_model_variables_moving_average", None)
    if not averages:
        return None
    return [averages[optimizer._get_variable_index(v)] for v in variables]


@contextlib.contextmanager
def averaged_weights(model):
    """Inside the block ``model``'s trainable weights are its optimizer's averages; restored after.

    A no-op when the optimizer keeps no average (no ``use_ema``, not built, or no step taken yet).

        >>> import keras, numpy as np
        >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
        >>> model.compile(optimizer=keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.5), loss="mse")
        >>> for _ in range(3):
        ...     _ = model.train_on_batch(np.ones((4, 1)), np.ones((4, 1)))
        >>> kernel = model.layers[0].kernel
        >>> last = float(kernel.numpy()[0, 0])
        >>> with averaged_weights(model):
        ...     average = float(kernel.numpy()[0, 0])
        >>> average != last, float(kernel.numpy()[0, 0]) == last   # the average inside, the iterate after
        (True, True)
    """
    variables = list(model.trainable_variables)
    averages = _average_of(getattr(model, "optimizer", None), variables)
    if averages is None:
        yield model
        return
    saved = [v.numpy() for v in variables]
    for v, a in zip(variables, averages):
        if a is not None:
            v.assign(a)
    try:
        yield model
    finally:
        for v, value in zip(variables, saved):
            v.assign(value)


class ValidateAveragedWeights(keras.callbacks.Callback):
    """Runs ``fit``'s validation passes on the optimizer's averaged weights (see the module doc).

    Between validation passes the model holds the last iterate, the state training goes on from (so
    ``BackupAndRestore`` resumes a run where it stopped).  Callbacks that keep weights at the end of an
    epoch see that iterate: use :class:`AveragedEarlyStopping` rather than Keras' ``EarlyStopping``
    (``ModelCheckpoint(save_best_only=True)`` would save an iterate chosen by its average's loss).
    """

    def __init__(self):
        super().__init__()
        self._block = None

    def on_test_begin(self, logs=None):
        if self._block is not None:  # already swapped in (a second pass begun without an end)
            return
        self._block = averaged_weights(self.model)
        self._block.__enter__()

    def on_test_end(self, logs=None):
        if self._block is not None:
            block, self._block = self._block, None
            block.__exit__(None, None, None)


class AveragedEarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' ``EarlyStopping`` whose kept best weights (``restore_best_weights``) are the weights that were
    validated, the optimizer's average of its iterates when it keeps one (else Keras' own behaviour).

        >>> stop = AveragedEarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
        >>> stop.patience
        3
    """

    def on_epoch_end(self, epoch, logs=None):
        with averaged_weights(self.model):
            super().on_epoch_end(epoch, logs)
