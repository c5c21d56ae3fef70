"""usage: allcodes.py BUNDLE OUT.npz  (RUN, COHORT from the environment): a bundle's y_sem of every visit with its split, group, age and cohort volumes."""
import sys, json, torch, numpy as np
import os
from pathlib import Path
RUN = Path(os.environ.get('RUN', '/work/s30/tr'))        # the work folder (split.json, recipe.json, caches)
COHORT = Path(os.environ.get('COHORT', '/work/s30/cohort'))  # the cohort folder
from pathlib import Path
from LDAELib.evaluation.sections import EvalSettings, Loader, read_inputs
from LDAELib.weights import load_model
from LDAELib.pipeline import LDAEPipeline
torch.set_num_threads(2)
model_path = Path(sys.argv[1]); out = Path(sys.argv[2])
inp = read_inputs(EvalSettings(workdir=RUN, output=out, model=model_path, cohort=COHORT))
model = load_model(inp.model_path)
load = Loader(inp.rows, model.config.space, RUN)
pipe = LDAEPipeline(model, device=torch.device('cpu'), cache_size=1, batch_size=2)
split = json.loads((RUN / 'split.json').read_text())['subjects']
which = {s: k for k, v in split.items() for s in v}
res = {'codes': [], 'subject': [], 'split': [], 'group': [], 'age': [], 'vols': []}
from LDAELib.cohort.cohort import VOLUME_COLUMNS
for i, r in enumerate(inp.rows):
    res['codes'].append(pipe.embed(load(r)).double().numpy()[0])
    res['subject'].append(r.subject); res['split'].append(which.get(r.subject, '?'))
    res['group'].append(str(r.get('group', ''))); res['age'].append(r.number('age'))
    res['vols'].append([r.number(c) for c in VOLUME_COLUMNS])
    if i % 50 == 0: print(i, len(inp.rows), flush=True)
np.savez(out, codes=np.array(res['codes']), subject=np.array(res['subject']), split=np.array(res['split']),
         group=np.array(res['group']), age=np.array(res['age']), vols=np.array(res['vols']), vcols=np.array(VOLUME_COLUMNS))
print('done')
