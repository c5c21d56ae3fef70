"""How much of a `disease` edit is a change of the whole image: two bundles' `disease` edits (α −2 and +2, T = 10) of
the first visits of the evaluation's 12 test subjects, the evaluation's ventricle measure and the mean change over the
brain (voxels above 0.05 in the input). Paths are those of the fifteenth run (handover/demo_model/README.md): the
candidate bundle with the contrast axis first, the shipped one second, the work folder /work/s23/run."""
import numpy as np, torch
from pathlib import Path
from LDAELib.weights import load_model
from LDAELib.pipeline import LDAEPipeline
from LDAELib.evaluation.sections import EvalSettings, Loader, read_inputs, select_subjects
from LDAELib.evaluation.volumes import build_measure, label_values
torch.set_grad_enabled(False); torch.set_num_threads(2)
new=load_model('/work/s24/contrast_shipcandidate/demo_model'); old=load_model('/work/main/LDAELib/resources/demo_model')
run=Path('/work/s23/run'); inp=read_inputs(EvalSettings(workdir=run, output='/tmp/none', model='/work/main/LDAELib/resources/demo_model')); load=Loader(inp.rows, old.config.space, run)
meas=build_measure(inp.train_rows, old.config.space, load, label_values(inp.cohort_csv.parent/'cohort.json'), max_subjects=16, rng=np.random.default_rng(0))
pipe=LDAEPipeline(old); res={'group':[], 'contrast':[]}
for s in select_subjects(inp.test_rows, 12, 0):
    x=np.asarray(load(inp.test_rows[s][0])); brain=x>0.05
    for nm,d in (('group',old.directions['disease']),('contrast',new.directions['disease'])):
        e=pipe.edit(x,d,[-2.,2.],steps=10).numpy()[:,0]; dv=meas.measure(e[1])['ventricles']-meas.measure(e[0])['ventricles']
        g=float((e[1]-e[0])[brain].mean()); res[nm].append((dv,g))
        print(s, nm, f"ventricles {dv:+.1f} mL brain {g:+.4f}", flush=True)
for nm,v in res.items():
    a=np.array(v); print(nm, 'median |brain|', round(float(np.median(np.abs(a[:,1]))),4), 'darker on', int((a[:,1]<0).sum()), 'corr(dV, brain)', round(float(np.corrcoef(a[:,0],a[:,1])[0,1]),2))
