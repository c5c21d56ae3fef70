"""``ldae evaluate``: the command-line face of :func:`LDAELib.evaluation.evaluate`."""

from __future__ import annotations

import shlex
import sys

from .targets import DEFAULT_ALPHAS, DEFAULT_STEPS


def _add_run_options(p) -> None:
    """Where and how a command over a work folder runs: device, threads, verification, progress."""
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, … (default cpu)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-verify", action="store_true", help="skip the SHA-256 check of the bundle's files")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def add_arguments(p) -> None:
    """The ``evaluate`` subcommand's options (argparse)."""
    p.add_argument("--workdir", required=True, metavar="RUN", help="work folder of 'ldae train' (split.json, recipe.json, bundle/)")
    p.add_argument("--output", "-o", required=True, metavar="REPORT_DIR", help="new folder for report.md, metrics.json and the figures")
    p.add_argument("--model", metavar="BUNDLE", help="model to evaluate (default: RUN/bundle)")
    p.add_argument("--cohort", metavar="COHORT", help="cohort folder or CSV (default: the one recorded in RUN/split.json)")
    p.add_argument("--steps", type=int, nargs="+", default=list(DEFAULT_STEPS), metavar="T",
                   help="DDIM step counts of the reconstruction table (default 10 20 50)")
    p.add_argument("--edit-steps", type=int, default=None, metavar="T",
                   help="DDIM steps of interpolation and edits (default 20 if in --steps, else the --steps value nearest 20)")
    p.add_argument("--subjects", type=int, default=None, metavar="N",
                   help="evaluate reconstruction, interpolation and edits on N test subjects (seeded, both groups); default all")
    p.add_argument("--alphas", type=float, nargs="+", default=list(DEFAULT_ALPHAS), metavar="A",
                   help="edit strengths (default -3 -2 -1 0 1 2 3; 0 is always added)")
    p.add_argument("--reverse-alpha", type=float, default=2.0, metavar="A", help="alpha of the reversibility check (+A then −A; default 2)")
    p.add_argument("--atlas-subjects", type=int, default=16, metavar="N",
                   help="training subjects whose label maps make the volume measure's ROIs and calibration (default 16)")
    p.add_argument("--real-heads", nargs="*", metavar="SCAN", default=None,
                   help="raw scans with skull to reconstruct through the raw path (section 5); default: the real heads installed "
                   "here (Colin27 from mricron-data, the ITK example subject); with no SCAN, none")
    p.add_argument("--seed", type=int, default=0, help="seed of the subject choice and the semantic-only noise (default 0)")
    _add_run_options(p)


def run(args) -> int:
    from . import EvalSettings, evaluate

    settings = EvalSettings(
        workdir=args.workdir, output=args.output, model=args.model, cohort=args.cohort, steps=tuple(args.steps),
        main_steps=args.edit_steps, subjects=args.subjects, alphas=tuple(args.alphas), reverse_alpha=args.reverse_alpha,
        seed=args.seed, device=args.device, threads=args.threads, atlas_subjects=args.atlas_subjects,
        verify=not args.no_verify, progress=not args.quiet, real_heads=None if args.real_heads is None else tuple(args.real_heads),
    )
    m = evaluate(settings, command="ldae " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    met = [t for t in m["targets"] if t["met"] is not None]
    print(f"wrote {args.output}/report.md ({sum(t['met'] for t in met)} of {len(met)} targets met; "
          f"{m['timing']['total_s']:.0f} s)")
    return 0


def add_orient_arguments(p) -> None:
    """The ``orient`` subcommand's options (argparse)."""
    p.add_argument("--workdir", required=True, metavar="RUN", help="work folder of 'ldae train' (split.json; its training subjects are edited)")
    p.add_argument("--output", "-o", required=True, metavar="BUNDLE", help="new folder for the oriented bundle (the model given is not changed)")
    p.add_argument("--model", metavar="BUNDLE", help="bundle to orient (default: RUN/bundle)")
    p.add_argument("--cohort", metavar="COHORT", help="cohort folder or CSV (default: the one recorded in RUN/split.json)")
    p.add_argument("--subjects", type=int, default=8, metavar="N", help="training subjects whose first visits are edited (default 8)")
    p.add_argument("--alpha", type=float, default=2.0, metavar="A", help="edit each to -A and +A (default 2)")
    p.add_argument("--steps", type=int, default=10, metavar="T", help="DDIM steps of the edits (default 10)")
    p.add_argument("--ageing-group", metavar="GROUP", help="measure the cohort's ageing on this group's subjects only, e.g. healthy "
                   "(default: all training subjects)")
    p.add_argument("--age-years", type=float, metavar="Y", help="rescale the age direction so that one unit renders Y years of "
                   "the cohort's ageing (default: keep its scale and state what it renders)")
    p.add_argument("--disease-axis", choices=("probe", "contrast"), default="probe",
                   help="probe: orient the model's disease direction as it is; contrast: first rebuild it as the sum of the group probe's "
                   "and an anatomy probe's axes, each in the sense the model renders (needs the cohort's volume columns; docs/training.md)")
    p.add_argument("--age-axis", choices=("probe", "contrast"), default="probe",
                   help="probe: orient the model's age direction as it is; contrast: first rebuild it as the sum of its axis and an "
                   "anatomy probe's (the codes regressed on the age the true regional volumes read), each in the sense the model "
                   "renders ageing (needs the cohort's volume and age columns; docs/training.md)")
    p.add_argument("--atlas-subjects", type=int, default=16, metavar="N", help="training subjects whose label maps make the volume measure (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subject draws (default 0)")
    _add_run_options(p)


def run_orient(args) -> int:
    from .orient import OrientSettings, orient

    settings = OrientSettings(workdir=args.workdir, output=args.output, model=args.model, cohort=args.cohort, subjects=args.subjects,
                              alpha=args.alpha, steps=args.steps, ageing_group=args.ageing_group,
                              age_years=args.age_years, disease_axis=args.disease_axis, age_axis=args.age_axis,
                              atlas_subjects=args.atlas_subjects, seed=args.seed, device=args.device,
                              threads=args.threads, verify=not args.no_verify, progress=not args.quiet)
    record = orient(settings, command="ldae " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    for name, d in record["directions"].items():
        ml = d["ml_per_alpha"]
        years = f"; {d['years_per_alpha']:.2f} years of the cohort's ageing" if "years_per_alpha" in d else ""
        if "rescaled_by" in d:
            years += f" (scale × {d['rescaled_by']:.2f})"
        print(f"{name}: {'flipped' if d['flipped'] else 'kept'} (edit_sign {d['edit_sign']:+d}); per unit of alpha, median ventricles "
              f"{ml['ventricles']:+.2f} mL, hippocampus {ml['hippocampus']:+.2f} mL{years}; {d['agreeing_scans']:.0%} of scans agree")
    for name in ("disease", "age"):
        if f"{name}_contrast" in record:
            print(f"{name} rebuilt on the contrast axis: " + ", ".join(
                f"{'the ' + k + ' direction' if k == name else k + ' probe'} renders {'with' if v['sense'] > 0 else 'against'} its label "
                f"({v['agreeing_scans']:.0%} of scans agree once oriented)" for k, v in record[f"{name}_contrast"]["candidates"].items()))
    print(f"wrote {args.output}")
    return 0
