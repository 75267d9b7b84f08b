"""Command line: ``deephedge <command> ...``.

Commands:
  train CONFIG --out DIR [--set k=v ...]     the main job: train the configured policy, evaluate it
        [--overwrite]                        against baselines out of sample, write DIR (run again:
                                             resumes; another config in DIR: refused, or --overwrite)
  evaluate RUN_DIR [--paths N]               re-evaluate a trained run (metrics, report, plots)
  export RUN_DIR --out PATH                  SavedModel of a trained run's policy
  benchmark kfac-vs-adam --config C --out D  DH-KFAC vs a tuned Adam: steps and wall time to a target
  experiment NAME --out DIR                  reproduce a seed paper's figures (summary.json, CSV, PNG;
        [--scale small|full] [--seeds ...]   deephedge_tf.experiments): small in minutes, full at its size
  backtest RUN_DIR --data PRICES.csv         a trained run's hedger on rolling windows of real closes next
        [--out DIR] [--stride DAYS]          to Black-Scholes delta at realised vol (out-of-model test)
  calibrate CHAIN --out DIR                  Heston calibrated to an option-chain CSV (params.json for
        [--expiries 1m 2m ...]               market.calibration, fit.csv, summary.csv, fit.png)
  simulate CONFIG --out DIR [--set k=v ...]  simulate the market, price the derivative (Monte Carlo
                                             vs reference) and check the hedging instruments
  config show CONFIG [--set k=v ...]     print the resolved config (every value, defaults included)
  config doc [--write FILE]              print (or write) the reference of every config key

``deephedge --verbose <command>`` also shows TensorFlow's start-up log lines (hidden by default).

Exit status: 0 on success, 2 on a usage, config or data error (the message names the field), 1 on an
unexpected error.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _add_config_args(p):
    p.add_argument("config", help="YAML config file (see docs/configuration.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set market.heston.rho=-0.5 (repeatable)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deephedge", description="Deep hedging with TensorFlow/Keras.")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's start-up log lines (CUDA, oneDNN, CPU features); before the command")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train, evaluate and report (the main job)")
    _add_config_args(train)
    train.add_argument("--out", required=True, help="output directory (created)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--overwrite", action="store_true",
                       help="discard a run of another config in --out (without it, that is an error)")

    ev = sub.add_parser("evaluate", help="re-evaluate a trained run directory")
    ev.add_argument("run_dir", help="directory written by `deephedge train`")
    ev.add_argument("--paths", type=int, help="evaluation paths (default: the run's evaluation.paths)")

    ex = sub.add_parser("export", help="SavedModel of a trained run's policy")
    ex.add_argument("run_dir", help="directory written by `deephedge train`")
    ex.add_argument("--out", required=True, help="SavedModel directory to write (replaced if present)")

    harness = benchmark_harness()
    if harness is None:
        sub.add_parser("benchmark", help="optimizer benchmarks (needs the source tree's benchmarks/ folder)")
    else:
        harness.add_benchmark_parser(sub)

    from deephedge_tf.experiments import EXPERIMENTS

    exp = sub.add_parser("experiment", help="reproduce a seed paper's published figures")
    exp.add_argument("name", help="; ".join(f"{name}: {description}"
                                            for name, (_, _, description) in sorted(EXPERIMENTS.items())))
    exp.add_argument("--out", required=True, help="output directory (created)")
    exp.add_argument("--scale", default="small", help="small (minutes on 2 CPU cores) or full (the paper's sizes)")
    exp.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: the experiment's for the scale)")

    bt = sub.add_parser("backtest", help="a trained hedger on rolling windows of a real price series")
    bt.add_argument("run_dir", help="directory written by `deephedge train`")
    bt.add_argument("--data", required=True, help="daily closes, CSV with columns date, close (e.g. data/sp500.csv)")
    bt.add_argument("--out", help="output directory (default RUN_DIR/backtest)")
    bt.add_argument("--stride", type=int, help="days between window starts (default: the run's steps, no overlap)")

    cal = sub.add_parser("calibrate", help="calibrate Heston to an option chain")
    cal.add_argument("chain", help="option-chain CSV (format: deephedge_tf.market.option_chain), e.g. "
                     "data/spy_chain_2022-07-15.csv")
    cal.add_argument("--out", required=True, help="output directory (created)")
    cal.add_argument("--expiries", nargs="+", help="expiry labels to fit (default: all)")

    sim = sub.add_parser("simulate", help="market and pricing report")
    _add_config_args(sim)
    sim.add_argument("--out", required=True, help="output directory (created)")

    cfg = sub.add_parser("config", help="inspect configs")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    show = cfg_sub.add_parser("show", help="print the resolved config")
    _add_config_args(show)
    doc = cfg_sub.add_parser("doc", help="reference of every config key")
    doc.add_argument("--write", metavar="FILE", help="replace the reference table inside FILE")
    return parser


#: The optimizer benchmark harness lives with the benchmarks (benchmarks/optimizer_bench), not in the package.
HARNESS_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def benchmark_harness():
    """The harness module (``optimizer_bench.protocol``) from the source tree, or None without one."""
    if not (HARNESS_DIR / "optimizer_bench" / "protocol.py").is_file():
        return None
    if str(HARNESS_DIR) not in sys.path:
        sys.path.insert(0, str(HARNESS_DIR))
    import importlib

    return importlib.import_module("optimizer_bench.protocol")


DOC_BEGIN = "<!-- BEGIN GENERATED CONFIG REFERENCE -->\n"
DOC_END = "<!-- END GENERATED CONFIG REFERENCE -->\n"


def write_reference(path: Path, table: str) -> None:
    """Replaces the generated table between the markers in ``path`` (atomically)."""
    text = path.read_text()
    if DOC_BEGIN not in text or DOC_END not in text:
        raise SystemExit(f"{path}: missing the markers {DOC_BEGIN.strip()} / {DOC_END.strip()}")
    head, rest = text.split(DOC_BEGIN, 1)
    _, tail = rest.split(DOC_END, 1)
    from deephedge_tf.files import write_atomic

    write_atomic(path, head + DOC_BEGIN + table + DOC_END + tail)


def quiet_tensorflow() -> None:
    """Imports TensorFlow with its start-up lines kept out of the user's terminal: the C++ runtime logs
    oneDNN, CUDA probing and CPU-feature notices straight to file descriptor 2 at import and at device
    initialisation, and in TF 2.21 ``TF_CPP_MIN_LOG_LEVEL`` no longer hides them.  Descriptor 2 goes to
    a temporary file meanwhile; if the import fails, what it logged is shown with the error."""
    import tempfile

    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # device probing logs now, not at the first training step
            # The first generator dataset of a process logs a malloc setting ("Memory patch applied"):
            # one empty one now, so that the line goes to the sink and not into the first epoch.  Not in a
            # worker of a cluster (TF_CONFIG): running it starts TensorFlow's runtime, after which the
            # multi-worker strategy can no longer configure its collectives (deephedge_tf.distribute).
            if "TF_CONFIG" not in os.environ:
                for _ in tf.data.Dataset.from_generator(lambda: iter(()),
                                                        output_signature=tf.TensorSpec([], tf.float32)):
                    pass
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--verbose" not in argv and "--help" not in argv and "-h" not in argv:
        quiet_tensorflow()  # before the parser: building it imports the benchmark module, hence TensorFlow
    args = _parser().parse_args(argv)
    from deephedge_tf.config import config_reference, dump_config, load_config
    from deephedge_tf.errors import ConfigError, DeepHedgeError

    try:
        if args.command == "config":
            if args.config_command == "doc":
                if args.write:
                    write_reference(Path(args.write), config_reference())
                else:
                    print(config_reference(), end="")
                return 0
            print(dump_config(load_config(args.config, args.overrides)), end="")
            return 0
        if args.command == "evaluate":
            from deephedge_tf.run import evaluate_job

            if args.paths is not None and args.paths < 2:
                raise ConfigError("--paths", args.paths, "an integer >= 2")
            evaluate_job(Path(args.run_dir), args.paths)
            return 0
        if args.command == "benchmark":
            harness = benchmark_harness()
            if harness is None:
                raise DeepHedgeError(f"deephedge benchmark runs the harness in the source tree's benchmarks/ folder, "
                                     f"which is not next to this installation ({HARNESS_DIR}); run it from a clone")
            return harness.run_benchmark(args)
        if args.command == "experiment":
            from deephedge_tf.experiments import format_summary, run_experiment

            print(format_summary(run_experiment(args.name, Path(args.out), args.scale, args.seeds)))
            return 0
        if args.command == "backtest":
            from deephedge_tf.run import backtest_job

            backtest_job(Path(args.run_dir), Path(args.data), None if args.out is None else Path(args.out),
                         args.stride)
            return 0
        if args.command == "calibrate":
            from deephedge_tf.run import calibrate_job

            calibrate_job(Path(args.chain), Path(args.out), args.expiries)
            return 0
        if args.command == "export":
            from deephedge_tf.run import export_job

            export_job(Path(args.run_dir), Path(args.out))
            return 0
        cfg = load_config(args.config, args.overrides)
        if args.command == "simulate":
            from deephedge_tf.run import simulate_job

            simulate_job(cfg, Path(args.out))
            return 0
        if args.command == "train":
            from deephedge_tf.run import train_job

            train_job(cfg, Path(args.out), verbose=0 if args.quiet else "auto", overwrite=args.overwrite)
            return 0
    except DeepHedgeError as e:
        print(f"deephedge: error: {e}", file=sys.stderr)
        return 2
    raise AssertionError("unreachable: argparse requires a command")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
