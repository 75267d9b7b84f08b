"""Optimizers beyond Keras' own: :class:`DHKFAC`, the curvature optimizer of the DH-KFAC paper, for any
Keras model.

    from deephedge_tf.optimizers import DHKFAC, with_curvature
    model = with_curvature(keras_model)          # same weights, a train step that feeds DH-KFAC
    model.compile(optimizer=DHKFAC(), loss="mse")
    model.fit(x, y, epochs=..., batch_size=...)

The hedger (:class:`deephedge_tf.hedger.Hedger`) runs the same train step itself.

Modules, one concept each:

* ``capture``: probes on pre-activations and recorded inputs of every Dense / LSTM layer of a model
  (:class:`~deephedge_tf.optimizers.capture.Recorder`, :func:`~deephedge_tf.optimizers.capture.register_capture`);
* ``losses``: the curvature a loss owns, its GGN factor w.r.t. the model outputs
  (:class:`~deephedge_tf.optimizers.losses.OutputCurvature`; Keras MSE and cross-entropy; the hedging
  objectives implement it in :mod:`deephedge_tf.objectives`);
* ``blocks``: Kronecker blocks derived from variable paths; ``estimator``: factors, eigenbases, EKFAC
  diagonal, damping (pure functions); ``steps``: trust region and exact-model step sizes;
* ``woodbury``: the exact damped Gauss-Newton step in sample space and its Levenberg-Marquardt rule
  (``preconditioner="gauss_newton"``; pure functions);
* ``kfac``: the Keras optimizer (direction, step size, momentum, state);
* ``nested``: the DHLNN paper's linearised nested optimiser (:class:`LinearizedNested`; hedgers only);
* ``train_step``: the generic train step and :func:`~deephedge_tf.optimizers.train_step.with_curvature`;
* ``averaging``: validating on the optimizer's average of its iterates (:func:`averaged_weights`).
"""

from deephedge_tf.optimizers.averaging import AveragedEarlyStopping, ValidateAveragedWeights, averaged_weights
from deephedge_tf.optimizers.blocks import KroneckerBlock, find_blocks, layer_path, with_bias_column
from deephedge_tf.optimizers.capture import Recorder, register_capture
from deephedge_tf.optimizers.kfac import DHKFAC
from deephedge_tf.optimizers.losses import OutputCurvature, loss_curvature
from deephedge_tf.optimizers.nested import LinearizedNested
from deephedge_tf.optimizers.train_step import CurvatureModel, curvature_train_step, with_curvature

__all__ = ["AveragedEarlyStopping", "DHKFAC", "CurvatureModel", "KroneckerBlock", "LinearizedNested", "OutputCurvature",
           "Recorder", "ValidateAveragedWeights", "averaged_weights", "curvature_train_step",
           "find_blocks", "layer_path", "loss_curvature", "register_capture", "with_bias_column",
           "with_curvature"]
