"""Meta-classifiers on a zoo: recover training properties from the weights.

Examples::

    python experiments/meta.py --zoo runs/fmnist --target optimizer
    python experiments/meta.py --zoo runs/fmnist --target all --snapshots 11-20 --out runs/fmnist-meta
    python experiments/meta.py --zoo runs/fmnist --target activation --model dmc --slice-length 5000 --part conv
    python experiments/meta.py --zoo runs/fmnist --target dataset --analysis where,when,slice-length
    python experiments/meta.py --zoo runs/fmnist --target optimizer --model dmc --steps 19000 --eval-every 500 --patience 6
    python experiments/meta.py --zoo nws/nws_main_train.csv,nws/nws_main_test.csv --target dataset
    python experiments/meta.py --zoo small-cnn-zoo/mnist --target config.optimizer,test_acc
    python experiments/meta.py --zoo runs/fmnist --target all --out runs/fmnist-meta --resume   # go on after a kill

Prints a table per target and writes a report folder (results.json, summary.txt, PNG
plots); a report already in that folder is kept unless --overwrite is given, or continued
with --resume (results.json is rewritten after every model, so a killed run loses at most
the model it was training). Errors a
user can cause print one line starting "error: " and exit with 2.
See docs/meta.md.
"""

from __future__ import annotations

import argparse
import sys

from nwsjax.cli import ArgumentParser, main_wrapper


def _number(kind, minimum, *, strict=False, maximum=None):
    """An argparse type: ``kind`` (int or float) at least ``minimum`` (above it when
    ``strict``) and, with ``maximum``, at most that."""

    def parse(text):
        value = kind(text)  # ValueError: argparse says "invalid int value: 'x'"
        if not (value > minimum if strict else value >= minimum):
            raise argparse.ArgumentTypeError(f"{text}: must be {'>' if strict else '>='} {minimum}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{text}: must be <= {maximum}")
        return value

    parse.__name__ = kind.__name__
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    from nwsjax.meta.data import PARTS, TARGETS
    from nwsjax.meta.run import ANALYSES, DEFAULT_MODELS
    from nwsjax.meta.train import MODELS

    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zoo", required=True, help="zoo folder written by the population trainer; or NWS CSV files, "
                   "comma-separated (train,test: their split is kept); or Small CNN Zoo folder(s)")
    p.add_argument("--target", required=True, help=f"comma-separated: {', '.join(TARGETS)} (Small CNN Zoo: its "
                   "config.* columns and test_acc); or all")
    p.add_argument("--model", default=",".join(DEFAULT_MODELS), help=f"comma-separated: {', '.join(MODELS)}; or all (default %(default)s)")
    p.add_argument("--snapshots", default=None, help="snapshots to train and test on, e.g. 11-20 (default: the second half)")
    p.add_argument("--slice-length", type=int, default=5000, help="weights per slice (default %(default)s)")
    p.add_argument("--part", default="whole", choices=PARTS, help="slice from the whole vector, the conv or the FC part")
    p.add_argument("--analysis", default="", help=f"comma-separated: {', '.join(ANALYSES)}; all or none (default none)")
    p.add_argument("--slice-lengths", default=None, help="lengths of the slice-length analysis, e.g. 1000,2500,5000")
    p.add_argument("--ensemble", type=int, default=64, help="evenly spaced test slices per network (default %(default)s)")
    p.add_argument("--positions", type=int, default=100, help="slice positions of the where analysis (default %(default)s)")
    p.add_argument("--epochs", type=int, default=50, help="training epochs of the Flax models (default %(default)s)")
    p.add_argument("--steps", type=_number(int, 1), default=None,
                   help="budget in train steps, instead of --epochs (the reference: about 19,000 for the DMC)")
    p.add_argument("--eval-every", type=_number(int, 1), default=None,
                   help="train steps between learning-curve points (default: one epoch)")
    p.add_argument("--patience", type=_number(int, 1), default=None,
                   help="stop after this many learning-curve points without a better validation number, "
                   "keeping the best (default: train the whole budget)")
    p.add_argument("--train-eval", type=_number(int, 0), default=512,
                   help="training samples evaluated without dropout at every learning-curve point, 0 = none (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per step (default %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default %(default)s)")
    p.add_argument("--dmc-width", type=_number(float, 0, strict=True), default=1.0, help="DMC/global width multiplier, 1 = reference (default %(default)s)")
    p.add_argument("--dmc-dropout", type=_number(float, 0, maximum=0.99), default=0.5,
                   help="dropout rate of the DMC/global dense layers, 0.5 = reference (default %(default)s)")
    p.add_argument("--dmc-test-norm", choices=("batch", "running"), default="batch",
                   help="DMC/global batch norm at test time: the test batch's own statistics (the reference) "
                   "or the running averages (default %(default)s)")
    p.add_argument("--units-keep", type=_number(float, 0, strict=True, maximum=1), default=0.5,
                   help="fraction of units the units model keeps per training pass, 1 = all (default %(default)s)")
    p.add_argument("--set-slices", type=_number(int, 1), default=8, help="slices per network for the set model (default %(default)s)")
    p.add_argument("--stats-iterations", type=_number(int, 1), default=200, help="boosting iterations of stats and unitstats (default %(default)s)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="networks held out for test (default %(default)s)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="of the rest, networks for validation (default %(default)s)")
    p.add_argument("--random-split", action="store_true",
                   help="split networks at random even when the zoo has its own train/test split (NWS CSVs)")
    p.add_argument("--min-test-acc", type=float, default=0.0, help="leave out networks below this final test accuracy")
    p.add_argument("--seed", type=_number(int, 0), default=0, help="run seed (default %(default)s)")
    p.add_argument("--cache-mb", type=_number(int, 0), default=1024, help="vector cache budget in MiB (default %(default)s)")
    p.add_argument("--buffer-mb", type=_number(int, 0), default=256, help="shuffle buffer budget in MiB (default %(default)s)")
    p.add_argument("--out", default=None, help="report folder (default runs/meta/<zoo name>)")
    p.add_argument("--overwrite", action="store_true", help="write over the report already in --out")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted report in --out with the same settings: finished targets "
                   "and models are kept, the rest run")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def _lengths(text: str | None) -> tuple[int, ...] | None:
    from nwsjax.errors import ConfigError

    if not text:
        return None
    try:
        lengths = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise ConfigError(f"--slice-lengths {text}: expected numbers like 1000,2500,5000") from None
    if min(lengths) < 1:
        raise ConfigError(f"--slice-lengths {text}: lengths must be positive")
    return lengths


def _main(argv=None) -> int:
    args = parse_args(argv)
    from nwsjax.meta.run import MetaConfig, run_meta
    from nwsjax.meta.train import ModelOptions, TrainSettings

    config = MetaConfig(
        zoo=args.zoo,
        target=args.target,
        model=args.model,
        snapshots=args.snapshots,
        slice_length=args.slice_length,
        part=args.part,
        analysis=args.analysis,
        slice_lengths=_lengths(args.slice_lengths),
        ensemble=args.ensemble,
        positions=args.positions,
        seed=args.seed,
        test_fraction=args.test_fraction,
        val_fraction=args.val_fraction,
        own_split=not args.random_split,
        min_test_acc=args.min_test_acc,
        train=TrainSettings(epochs=args.epochs, steps=args.steps, eval_every=args.eval_every, patience=args.patience,
                            train_eval=args.train_eval, batch_size=args.batch_size, lrate=args.lr,
                            buffer_bytes=args.buffer_mb << 20, progress=not args.quiet),
        options=ModelOptions(dmc_width=args.dmc_width, dmc_dropout=args.dmc_dropout, dmc_test_norm=args.dmc_test_norm,
                             units_keep=args.units_keep,
                             set_slices=args.set_slices,
                             stats_iterations=args.stats_iterations),
        cache_bytes=args.cache_mb << 20,
        out=args.out,
        overwrite=args.overwrite,
        resume=args.resume,
    )
    run_meta(config)
    return 0


# NWSError (a user error) becomes one line on stderr and exit code 2.
main = main_wrapper(_main)


if __name__ == "__main__":
    sys.exit(main())
