"""Kronecker blocks derived from a list of variables (their layer paths, names and shapes alone).

A Keras variable's ``path`` is ``"<layer path>/<leaf>"`` (``"recurrent_policy/block0_lstm/kernel"``).
Variables sharing a layer path form one group.  A group whose leaves are

* ``{kernel, bias}`` or ``{kernel}`` (a Dense layer), or
* ``{kernel, recurrent_kernel, bias}`` or ``{kernel, recurrent_kernel}`` (our ``LSTMCell``: kernel,
  recurrent kernel and bias add into one pre-activation),

is a candidate :class:`KroneckerBlock`: a linear map on the extended input ``a = [x, (h,) (1)]`` of size
``dim_a = d_in (+ 1)`` with ``d_out`` outputs, whose weights stack vertically into

    W = concat([kernel, recurrent_kernel, bias[None, :]], axis=0)      # [dim_a, d_out]

so that the pre-activation is ``a @ W`` and the weight gradient ``sum_t a_t^T g_t``.  Every variable of
a group without ``kernel``, or whose members do not fit (rank != 2, a bias of the wrong length, an
unknown extra leaf), is *diagonal* (preconditioned elementwise by the optimizer).  A candidate block
becomes active only once the capture (:mod:`deephedge_tf.optimizers.capture`) hands statistics for it
to the optimizer; until then its variables take the diagonal step too.

The grouping depends only on the variable list, in first-appearance order, so Keras can rebuild the
optimizer from ``model.trainable_variables`` when it loads a saved model and find the same blocks.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

_KRONECKER_LEAVES = ("kernel", "recurrent_kernel", "bias")


@dataclasses.dataclass(frozen=True)
class KroneckerBlock:
    """Static description of one Kronecker-factored block.

    Attributes:
      name: the layer path (``"recurrent_policy/block0_lstm"``): the key of ``update_curvature``.
      indices: positions of the member variables in the optimizer's variable list, in stacking order
        (kernel, recurrent kernel if any, bias if any).
      rows: rows each member contributes to the stacked ``[dim_a, d_out]`` matrix (bias: 1).
      d_in: input size without the ones column (``d_x + d_h`` for an LSTM).
      d_out: output size (pre-activation width; ``4 * units`` for an LSTM).
      has_bias: whether the extended input ends with a ones column.
      dtype: the members' dtype; the block's statistics are kept in it.
    """

    name: str
    indices: tuple
    rows: tuple
    d_in: int
    d_out: int
    has_bias: bool
    dtype: tf.DType

    @property
    def dim_a(self) -> int:
        """Size of the extended input ``a`` (``d_in + 1`` with a bias)."""
        return self.d_in + int(self.has_bias)


def variable_path(variable) -> str:
    """The variable's path (Keras ``v.path``; for a raw ``tf.Variable`` its name without ``:0``)."""
    path = getattr(variable, "path", None)
    if path is None:
        path = variable.name.split(":")[0]
    return str(path)


def layer_path(variable) -> str:
    """The block key of a variable: its path minus the last component (``""`` at top level)."""
    path = variable_path(variable)
    return path.rsplit("/", 1)[0] if "/" in path else ""


def _leaf(variable) -> str:
    return variable_path(variable).rsplit("/", 1)[-1]


def find_blocks(variables) -> tuple[list[KroneckerBlock], list[int]]:
    """Splits ``variables`` into Kronecker blocks and diagonal variables.

    Args:
      variables: the optimizer's variable list (``model.trainable_variables``).

    Returns:
      ``(blocks, diagonal)``: blocks in order of their first variable, and the indices of the
      variables preconditioned elementwise.

    Raises:
      ValueError: a layer with a ``kernel`` whose shapes or members cannot form a block (names it).
    """
    groups: dict[str, list[int]] = {}
    for i, v in enumerate(variables):
        groups.setdefault(layer_path(v), []).append(i)

    blocks, diagonal = [], []
    for name, idx in groups.items():
        leaves = {}
        for i in idx:
            leaf = _leaf(variables[i])
            if leaf in leaves:
                raise ValueError(
                    f"DHKFAC: two variables share the path {variable_path(variables[i])!r}; "
                    "give the layers distinct names so each block is well defined"
                )
            leaves[leaf] = i
        if "kernel" not in leaves or not name:
            diagonal.extend(idx)
            continue
        try:
            blocks.append(_make_block(name, leaves, variables))
        except ValueError:
            # Not a linear map the capture could record (an extra weight, a kernel of rank != 2):
            # the optimizer's diagonal step, never a Kronecker block without statistics.
            diagonal.extend(idx)
    diagonal.sort()
    return blocks, diagonal


def _make_block(name, leaves, variables) -> KroneckerBlock:
    extra = sorted(set(leaves) - set(_KRONECKER_LEAVES))
    if extra:
        bad = variable_path(variables[leaves[extra[0]]])
        raise ValueError(
            f"DHKFAC: layer {name!r} has a kernel and also {bad!r}; a Kronecker block holds only "
            f"{list(_KRONECKER_LEAVES)} (one shared pre-activation). Rename the layer's extra "
            "weights into a sub-layer or use another optimizer for this model."
        )
    kernel = variables[leaves["kernel"]]
    if len(kernel.shape) != 2:
        raise ValueError(
            f"DHKFAC: cannot precondition {variable_path(kernel)!r} with shape {tuple(kernel.shape)}: "
            "a Kronecker block needs a rank-2 kernel [d_in, d_out]"
        )
    d_out = int(kernel.shape[1])
    order = [leaf for leaf in _KRONECKER_LEAVES if leaf in leaves]
    rows = []
    for leaf in order:
        v = variables[leaves[leaf]]
        if v.dtype != kernel.dtype:
            raise ValueError(f"DHKFAC: {variable_path(v)!r} has dtype {v.dtype}, its kernel {kernel.dtype}")
        if leaf == "bias":
            if tuple(v.shape) != (d_out,):
                raise ValueError(
                    f"DHKFAC: cannot precondition {variable_path(v)!r} with shape {tuple(v.shape)}: "
                    f"the bias of a block with kernel {tuple(kernel.shape)} must have shape ({d_out},)"
                )
            rows.append(1)
        else:
            if len(v.shape) != 2 or int(v.shape[1]) != d_out:
                raise ValueError(
                    f"DHKFAC: cannot precondition {variable_path(v)!r} with shape {tuple(v.shape)}: "
                    f"expected [d, {d_out}] to share the pre-activation of {variable_path(kernel)!r}"
                )
            rows.append(int(v.shape[0]))
    has_bias = "bias" in leaves
    return KroneckerBlock(
        name=name,
        indices=tuple(leaves[leaf] for leaf in order),
        rows=tuple(rows),
        d_in=sum(rows) - int(has_bias),
        d_out=d_out,
        has_bias=has_bias,
        dtype=tf.as_dtype(kernel.dtype),
    )


def stack(block: KroneckerBlock, tensors) -> tf.Tensor:
    """Stacks per-member tensors (kernel-shaped, bias ``[d_out]``; ``None`` = zeros) into ``[dim_a, d_out]``."""
    parts = []
    for t, r in zip(tensors, block.rows):
        if t is None:
            parts.append(tf.zeros((r, block.d_out), block.dtype))
        else:
            t = tf.convert_to_tensor(t)  # densifies IndexedSlices
            parts.append(tf.reshape(tf.cast(t, block.dtype), (r, block.d_out)))
    return parts[0] if len(parts) == 1 else tf.concat(parts, axis=0)


def unstack(block: KroneckerBlock, matrix, shapes) -> list:
    """Inverse of :func:`stack`: ``[dim_a, d_out]`` -> per-member tensors of the given ``shapes``."""
    parts = tf.split(matrix, list(block.rows), axis=0) if len(block.rows) > 1 else [matrix]
    return [tf.reshape(p, s) for p, s in zip(parts, shapes)]


def with_bias_column(a) -> tf.Tensor:
    """``concat([a, 1], -1)``: a layer input ``[..., d_in]`` extended to ``[..., d_in + 1]``."""
    a = tf.convert_to_tensor(a)
    return tf.concat([a, tf.ones_like(a[..., :1])], axis=-1)
