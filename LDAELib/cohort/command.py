"""``ldae cohort``: the command-line face of :func:`LDAELib.cohort.cohort.generate_cohort`."""

from __future__ import annotations

import statistics
import sys

from ..errors import EXIT_CANCELLED


def add_arguments(parser) -> None:
    """The ``cohort`` subcommand's options (argparse)."""
    parser.add_argument("output_dir", help="new or empty folder, or a cohort folder to resume or extend (same settings)")
    parser.add_argument("--subjects", type=int, required=True, metavar="N", help="number of subjects")
    parser.add_argument("--seed", type=int, default=0, help="seed; the same seed and settings give identical files (default 0)")
    parser.add_argument("--visits-min", type=int, default=3, metavar="N", help="fewest visits per subject (default 3)")
    parser.add_argument("--visits-max", type=int, default=5, metavar="N", help="most visits per subject (default 5)")
    parser.add_argument("--months", type=float, default=36.0, metavar="M", help="follow-up span in months (default 36)")
    parser.add_argument("--spacing", type=float, default=2.0, metavar="MM", help="voxel size of the MNI grid written (default 2.0 mm: 91×109×91)")
    parser.add_argument("--disease-fraction", type=float, default=0.5, metavar="F", help="share of subjects in the disease group (default 0.5)")
    parser.add_argument("--labels", action="store_true", help="also write a label map per visit (uint8; see cohort.json)")
    parser.add_argument("--threads", type=int, default=1, metavar="N", help="torch CPU threads (default 1)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="subjects generated at once, one process each (default 1); the files are the same for any N")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run(args, progress=None) -> int:
    from .cohort import CohortConfig, generate_cohort

    config = CohortConfig(
        n_subjects=args.subjects, seed=args.seed, visits_min=args.visits_min, visits_max=args.visits_max,
        max_months=args.months, spacing_mm=args.spacing, disease_fraction=args.disease_fraction, labels=args.labels,
    )
    try:
        result = generate_cohort(args.output_dir, config, progress=progress, threads=args.threads, workers=args.workers)
    except KeyboardInterrupt:
        print(f"ldae cohort: interrupted; the subjects already complete in {args.output_dir} are kept: "
              "run the same command again to resume", file=sys.stderr)
        return EXIT_CANCELLED
    finally:
        if progress is not None and hasattr(progress, "close"):
            progress.close()
    made = len(result.generated)
    line = f"wrote {result.csv_path} ({config.n_subjects} subjects: {made} generated, {len(result.reused)} kept from before)"
    if made:
        per_subject = statistics.median(result.seconds_per_subject)
        per_visit = statistics.median(s / n for s, n in zip(result.seconds_per_subject, result.visits_per_subject))
        line += (f"; median {per_subject:.1f} s per subject, {per_visit:.1f} s per visit, "
                 f"after {result.prepare_seconds:.0f} s preparing the templates")
    print(line)
    return 0
