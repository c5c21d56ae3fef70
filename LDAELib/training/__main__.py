"""``python -m LDAELib.training STAGE --cohort … --workdir …`` = ``ldae train``; handy under torchrun:

    torchrun --nproc_per_node 4 -m LDAELib.training all --cohort COHORT --workdir RUN
"""

from __future__ import annotations

import argparse
import sys

from ..errors import EXIT_CANCELLED, EXIT_ERROR, LDAEError
from .command import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m LDAELib.training", description="Train an LDAE on a cohort (same as 'ldae train').")
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except LDAEError as err:
        print(f"ldae train: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("ldae train: interrupted; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return EXIT_CANCELLED


if __name__ == "__main__":
    sys.exit(main())
