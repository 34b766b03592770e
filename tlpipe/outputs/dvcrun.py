"""`python -m tlpipe.outputs.dvcrun ARGS`: DVC's own command line (`dvc ARGS`) in this process,
with one of its warnings left out: how `make demo` runs DVC.

On a checkout without dvc.lock (a fresh clone), `dvc exp run` first restores the outputs the lock
records, finds none recorded, and warns once per output (eleven lines here): "No file hash info
found for '.../data/raw'. It won't be created." Nothing is wrong, there is nothing to restore
yet, and those lines would come before the stages' own. Every other message is DVC's as usual.
"""

from __future__ import annotations

import logging
import sys

NOTHING_TO_RESTORE = "No file hash info found for "
# The logger of dvc-data's checkout (dvc_data/index/checkout.py), which DVC's own setup leaves be.
CHECKOUT_LOGGER = "dvc_data.index.checkout"


def main(argv: list[str] | None = None) -> int:
    from dvc.cli import main as dvc_main

    logging.getLogger(CHECKOUT_LOGGER).addFilter(
        lambda record: not record.getMessage().startswith(NOTHING_TO_RESTORE)
    )
    return dvc_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
