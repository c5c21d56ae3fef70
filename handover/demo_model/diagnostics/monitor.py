"""usage: monitor.py RUN OUT.npz: the codes of every visit of RUN's split from the latest representation checkpoint's
EMA encoder, while the stage trains, in codes.py's flat form (read them with probe_explore.py)."""
import sys, json, torch
from pathlib import Path
from LDAELib.training.config import Recipe
from LDAELib.training.data import TrainingData
from LDAELib.training.checkpoint import load_checkpoint, list_checkpoints
from LDAELib.training.session import _strip
from LDAELib.training.probes import encode_codes
from LDAELib.nets.semantic_encoder import SemanticEncoder
from codes import save_flat
torch.set_num_threads(1)
work, out = Path(sys.argv[1]), sys.argv[2]
recipe = Recipe.from_dict(json.loads((work / 'recipe.json').read_text()))
cohort = json.loads((work / 'split.json').read_text())['settings']['cohort_csv']
data = TrainingData.open(cohort, recipe.data, recipe.model.space, work, write_split=False)
step, ck_path = list_checkpoints(work / 'representation')[-1]
ck = load_checkpoint(ck_path, with_optimizer=False)
enc = SemanticEncoder.from_config(recipe.model.encoder); enc.load_state_dict(_strip(ck.groups['ema'], 'encoder.')); enc.eval()
parts = ('train', 'val', 'test')
rows = [i for p in parts for i in data.indices[p]]
codes = encode_codes(enc, data, rows, torch.device('cpu'), recipe.model.slicing_plane, 8)
save_flat(out, codes, [data.rows[i] for i in rows], [p for p in parts for _ in data.indices[p]])
print('step', step)
