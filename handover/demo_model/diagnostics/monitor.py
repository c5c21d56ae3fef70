"""usage: monitor.py RUN OUT.npz  (COHORT from the environment): the codes of every visit from the latest representation
checkpoint's EMA encoder in RUN, saved as allcodes.py saves them (read them with probe_explore.py)."""
import sys, json, torch, numpy as np
import os
from pathlib import Path
RUN = Path(os.environ.get('RUN', '/work/s30/tr'))        # the work folder (split.json, recipe.json, caches)
COHORT = Path(os.environ.get('COHORT', '/work/s30/cohort'))  # the cohort folder
from pathlib import Path
from LDAELib.training.config import Recipe
from LDAELib.training.data import TrainingData
from LDAELib.training.checkpoint import latest_checkpoint, load_checkpoint, list_checkpoints
from LDAELib.training.session import _strip
from LDAELib.training.probes import encode_codes
from LDAELib.nets.semantic_encoder import SemanticEncoder
from LDAELib.cohort.cohort import VOLUME_COLUMNS
torch.set_num_threads(1)
work = Path(sys.argv[1]); out = sys.argv[2]
recipe = Recipe.from_dict(json.loads((work / 'recipe.json').read_text()))
data = TrainingData.open(COHORT, recipe.data, recipe.model.space, work, write_split=False)
cks = list_checkpoints(work / 'representation')
step, ck_path = cks[-1]
ck = load_checkpoint(ck_path, with_optimizer=False)
enc = SemanticEncoder.from_config(recipe.model.encoder); enc.load_state_dict(_strip(ck.groups['ema'], 'encoder.')); enc.eval()
rows = data.indices['train'] + data.indices['val'] + data.indices['test']
split = ['train'] * len(data.indices['train']) + ['val'] * len(data.indices['val']) + ['test'] * len(data.indices['test'])
codes = encode_codes(enc, data, rows, torch.device('cpu'), recipe.model.slicing_plane, 8)
R = [data.rows[i] for i in rows]
np.savez(out, codes=codes.double().numpy(), subject=np.array([r.subject for r in R]), split=np.array(split),
         group=np.array([str(r.get('group', '')) for r in R]), age=np.array([r.number('age') for r in R]),
         vols=np.array([[r.number(c) for c in VOLUME_COLUMNS] for r in R]), vcols=np.array(VOLUME_COLUMNS))
print('step', step)
