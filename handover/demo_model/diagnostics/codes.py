"""Semantic codes of every visit of a work folder's cohort, by split: RUN/codes.pt holds
{"train"|"val"|"test": {"codes": N×E, "subject", "group", "age"}}. usage: codes.py RUN"""
import sys, json, numpy as np, torch
from pathlib import Path
from LDAELib.inference.image import read_image
from LDAELib.space import to_model_space
from LDAELib.weights import load_model
from LDAELib.pipeline import LDAEPipeline
from LDAELib.training.data import read_cohort
run = Path(sys.argv[1])
model = load_model(run / "bundle"); pipe = LDAEPipeline(model); sp = model.config.space
split = json.loads((run / "split.json").read_text()); rows = read_cohort(Path(split["settings"]["cohort_csv"]))
def ms(r):
    v = read_image(r.path); x, _ = to_model_space(v.data, v.affine, sp); return np.asarray(x, np.float32).squeeze()
out = {}
for part in ("train", "val", "test"):
    sub = [r for r in rows if r.subject in set(split["subjects"][part])]
    out[part] = {"codes": torch.cat([pipe.embed(ms(r)) for r in sub]).float(), "subject": [r.subject for r in sub],
                 "group": [r.get("group") for r in sub], "age": torch.tensor([r.number("age") for r in sub], dtype=torch.float64)}
    print(part, len(sub), flush=True)
torch.save(out, run / "codes.pt")
