"""Give a bundle the `age` direction of ``probes.age_axis: longitudinal``, fitted on its own codes.
usage: longitudinal_age.py BUNDLE RUN OUTPUT [GROUP] [YEARS]   (RUN holds split.json; GROUP e.g. healthy; YEARS default 5)

What the probes stage does with ``age_axis: longitudinal`` (``LDAELib.training.probes``), for a bundle
whose work folder is gone: the bundle's semantic encoder embeds every visit of the training subjects
(the split in RUN/split.json, model space from the cohort), ``fit_longitudinal_direction`` takes the
pooled within-subject slope of the normalised codes on age (GROUP's subjects only, when given), one
unit = YEARS years of it, and the new bundle at OUTPUT is a copy of BUNDLE with that `age` direction
(``annotate_bundle``; the network weights are byte-identical). The codes come from the bundle's
float16-rounded encoder, not the EMA encoder in float32 that the probes stage would use."""
import shutil, sys, tempfile, torch
from pathlib import Path
from LDAELib.directions import fit_longitudinal_direction
from LDAELib.evaluation.sections import EvalSettings, Loader, read_inputs
from LDAELib.training.probes import describe_longitudinal_age
from LDAELib.pipeline import LDAEPipeline
from LDAELib.weights import load_model
from LDAELib.weights.bundle import annotate_bundle
torch.set_grad_enabled(False)
torch.set_num_threads(2)
bundle, run, output = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
group = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] != "all" else ""
years = float(sys.argv[5]) if len(sys.argv) > 5 else 5.0
if output.exists():
    sys.exit(f"{output} exists")
model = load_model(bundle); pipe = LDAEPipeline(model, cache_size=4)
inp = read_inputs(EvalSettings(workdir=run, output="/tmp/none", model=bundle)); load = Loader(inp.rows, model.config.space, run)
rows = inp.train_rows
codes = torch.cat([pipe.embed(load(r)) for r in rows])
ages = torch.tensor([r.number("age") for r in rows], dtype=torch.float64)
axis_rows = torch.tensor([not group or str(r.get("group", "")) == group for r in rows])
d = fit_longitudinal_direction(codes, ages, [r.subject for r in rows], "age", years, axis_rows, positive="older", negative="younger")
describe_longitudinal_age(d, years, "age", "the bundle's semantic codes of the training subjects' visits (handover/demo_model/longitudinal_age.py)")
d.meta.update(age_axis_group=group)
print(f"{len(rows)} visits, {d.meta['axis_subjects']} subjects on the axis; |slope| {d.meta['within_subject_per_unit_target']:.4f} per year; "
      f"code SD along it {d.meta['code_sd_per_alpha']:.2f} units; reading r {d.meta['reading_r']:+.3f}; edit_sign {d.edit_sign:+d}; "
      f"the reading says {d.meta['probe_years_per_alpha']:+.2f} years per unit")
tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
try:
    shutil.copytree(bundle, tmp / "b")
    annotate_bundle(tmp / "b", directions={"age": d})
    (tmp / "b").rename(output)
finally:
    shutil.rmtree(tmp, ignore_errors=True)
print(f"wrote {output}")
