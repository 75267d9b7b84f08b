"""The optimizer benchmark harness (``deephedge benchmark ...``): the kfac-vs-adam protocol
(:mod:`optimizer_bench.protocol`) and the suite over configs/suite/ (:mod:`optimizer_bench.suite`).

It lives with the benchmarks, beside the results it produces, not in the library: the command line finds
it in the source tree (``benchmarks/`` next to the package), and the scripts in ``benchmarks/`` import it
directly.
"""
