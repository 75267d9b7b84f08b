"""Optimizers beyond Keras' own: :class:`DHKFAC`, the curvature optimizer of the DH-KFAC paper.

    from deephedge_tf.optimizers import DHKFAC, layer_path, with_bias_column

Modules: ``blocks`` (Kronecker blocks from variable paths), ``curvature`` (factor, EKFAC, damping and
trust-region formulas as pure functions), ``kfac`` (the Keras optimizer).
"""

from deephedge_tf.optimizers.blocks import KroneckerBlock, find_blocks, layer_path, with_bias_column
from deephedge_tf.optimizers.kfac import DHKFAC

__all__ = ["DHKFAC", "KroneckerBlock", "find_blocks", "layer_path", "with_bias_column"]
