"""Random numbers for path simulation that do not depend on how a batch is split.

Every simulator draws its randomness through :func:`path_normals`: standard normals indexed by
(path index, step, dimension).  Path ``i`` always gets the same numbers for the same seed, whether
it is simulated in a batch of 10 or of 100,000 paths, or as path 3 of a batch starting at 7.  This is
what lets tf.data pipelines, multi-device training and validation sets cut paths out of one
deterministic stream.

How: paths are grouped into blocks of :data:`BLOCK_SIZE` consecutive indices; block ``b`` is drawn
with the stateless seed ``fold_in(seed, b)``.  Asking for paths ``[start, start + n)`` draws the blocks
that cover the range and slices.

* Antithetic sampling pairs path ``j`` of a block with path ``j + BLOCK_SIZE // 2`` (normals negated),
  so a batch that starts and ends on block boundaries is exactly antithetic.
* Quasi-random sampling uses the Sobol sequence (point ``i + 1`` for path ``i``; point 0 is the
  origin and maps to -inf) through the inverse normal CDF.  Sobol dimension ``k * dims + d`` is used
  for step ``k``, dimension ``d``, so the best-distributed low dimensions drive the early steps.
"""

from __future__ import annotations

import tensorflow as tf

from deephedge_tf.dtypes import as_float_dtype

BLOCK_SIZE = 1024
# TensorFlow's Sobol generator supports at most this many dimensions.
MAX_SOBOL_DIMS = 21201


def as_seed(seed) -> tf.Tensor:
    """A stateless seed: an int (or a pair of ints) -> int64 tensor of shape [2]."""
    if isinstance(seed, int):
        return tf.constant([seed, 0], dtype=tf.int64)
    seed = tf.convert_to_tensor(seed)
    if seed.shape != (2,):
        raise ValueError(f"seed must be an int or a pair of ints; got shape {seed.shape}")
    return tf.cast(seed, tf.int64)


def sub_seed(seed, name: str) -> tf.Tensor:
    """A seed for an independent stream called ``name`` (e.g. "heston.poisson") derived from ``seed``."""
    # A stable (process-independent) hash of the name: Python's hash() is salted per process.
    h = 0
    for ch in name.encode():
        h = (h * 131 + ch) % (2**31 - 1)
    return tf.random.experimental.stateless_fold_in(as_seed(seed), h)


def _block_range(start: int, num_paths: int) -> tuple[int, int]:
    """``(first, last)``: the indices of the first and last block covering paths ``[start, start+n)``."""
    if start < 0 or num_paths < 1:
        raise ValueError(f"need start >= 0 and num_paths >= 1; got {start}, {num_paths}")
    return start // BLOCK_SIZE, (start + num_paths - 1) // BLOCK_SIZE


def block_seeds(seed, start: int, num_paths: int):
    """Yields ``(block_index, block_seed, lo, hi)``: the blocks covering paths ``[start, start+n)``,
    with ``lo:hi`` the slice of that block that falls in the range."""
    first, last = _block_range(start, num_paths)
    seed = as_seed(seed)
    for b in range(first, last + 1):
        lo = max(start - b * BLOCK_SIZE, 0)
        hi = min(start + num_paths - b * BLOCK_SIZE, BLOCK_SIZE)
        yield b, tf.random.experimental.stateless_fold_in(seed, b), lo, hi


def path_normals(
    seed,
    num_paths: int,
    steps: int,
    dims: int,
    start: int = 0,
    antithetic: bool = False,
    sobol: bool = False,
    dtype=tf.float32,
) -> tf.Tensor:
    """Standard normals of shape ``[steps, num_paths, dims]`` for paths ``[start, start + num_paths)``.

    Args:
      seed: int or pair of ints (ignored by Sobol, which is deterministic).
      num_paths: number of paths ``B``.
      steps: number of time steps ``T``.
      dims: normals per step and path (1 for GBM, 2 for Heston).
      start: index of the first path in the global stream.
      antithetic: pair paths within each block with negated normals.
      sobol: quasi-random normals from the Sobol sequence instead of pseudo-random ones.
      dtype: float32 or float64.
    """
    dtype = as_float_dtype(dtype)
    if antithetic and sobol:
        raise ValueError("antithetic and sobol sampling cannot be combined; choose one")
    if sobol:
        n_dims = steps * dims
        if n_dims > MAX_SOBOL_DIMS:
            raise ValueError(
                f"sobol sampling needs steps * dims = {n_dims} Sobol dimensions; at most "
                f"{MAX_SOBOL_DIMS} are available"
            )
        # float64 uniforms avoid the Sobol points that round to exactly 0 or 1 in float32.
        u = tf.math.sobol_sample(n_dims, num_paths, skip=start + 1, dtype=tf.float64)
        z = tf.math.ndtri(u)
        z = tf.transpose(tf.reshape(z, [num_paths, steps, dims]), [1, 0, 2])
        return tf.cast(z, dtype)

    start, num_paths = int(start), int(num_paths)  # numpy integers would become tensors in _block_normals
    first, last = _block_range(start, num_paths)
    blocks = _block_normals(as_seed(seed), tf.constant(first, tf.int32), last - first + 1, int(steps), int(dims),
                            bool(antithetic), dtype)
    lo = start - first * BLOCK_SIZE
    return blocks[:, lo:lo + num_paths]


@tf.function
def _block_normals(seed, first, num_blocks: int, steps: int, dims: int, antithetic: bool, dtype):
    """``[steps, num_blocks * BLOCK_SIZE, dims]`` normals of blocks ``first, first + 1, ...`` (block ``b``
    drawn with ``fold_in(seed, b)``, as :func:`block_seeds`; ``first`` is int32 as a Python int becomes
    there: fold_in's result depends on the dtype of the folded-in number).  One graph per (number of blocks, steps,
    dims, antithetic, dtype): drawing the blocks eagerly cost ~1 ms of dispatch each, a quarter of the time of 100,000
    paths x 250 steps (BENCHMARKS.md), and in one graph independent blocks run on both cores."""
    parts = []
    for i in range(num_blocks):
        bseed = tf.random.experimental.stateless_fold_in(seed, first + i)
        if antithetic:
            half = tf.random.stateless_normal([steps, BLOCK_SIZE // 2, dims], bseed, dtype=dtype)
            parts.append(tf.concat([half, -half], axis=1))
        else:
            parts.append(tf.random.stateless_normal([steps, BLOCK_SIZE, dims], bseed, dtype=dtype))
    return parts[0] if num_blocks == 1 else tf.concat(parts, axis=1)
