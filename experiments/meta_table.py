"""Markdown tables of several meta runs of one zoo, models side by side.

Example::

    python experiments/meta_table.py runs/zoo320-meta runs/zoo320-global
    python experiments/meta_table.py runs/zoo320-meta@old runs/zoo320-units   # two runs of one model: units-old, units

Each argument is a report folder written by meta.py (``FOLDER@TAG`` names its models
``model-TAG``). The runs must share zoo, split (``--seed``) and snapshot range. Prints
test accuracy with 95% intervals per categorical target (slice models: their ensemble)
and the mean, then MAE and Spearman per regression target. Errors print one line
starting "error: " and exit 2.
"""

from __future__ import annotations

import sys

from nwsjax.cli import ArgumentParser, main_wrapper


def _main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", help="meta report folders (FOLDER or FOLDER@TAG)")
    args = p.parse_args(argv)
    from nwsjax.meta.report import markdown_tables, read_reports

    print(markdown_tables(read_reports(args.reports)))
    return 0


main = main_wrapper(_main)

if __name__ == "__main__":
    sys.exit(main())
