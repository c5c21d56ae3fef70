"""How much the decoded image depends on y_sem: fixed z_T of one example visit, y from other scans / zero / edits."""
import sys, numpy as np, torch, csv
from pathlib import Path
from LDAELib.resources import example_scans
from LDAELib.inference.image import read_image
from LDAELib.space import to_model_space
from LDAELib.weights import load_model
from LDAELib.pipeline import LDAEPipeline
model = load_model(sys.argv[1]); sp = model.config.space
if len(sys.argv) > 3:  # a representation checkpoint's EMA encoder and ShiftUNet in place of the bundle's
    from safetensors.torch import load_file
    w = load_file(sys.argv[3] + "/weights.safetensors")
    model.semantic_encoder.load_state_dict({k[12:]: v for k, v in w.items() if k.startswith("ema.encoder.")})
    model.shift_unet.load_state_dict({k[15:]: v for k, v in w.items() if k.startswith("ema.shift_unet.")})
    model.identity = {**model.identity, "hash": sys.argv[3]}
pipe = LDAEPipeline(model)
def ms(p):
    v = read_image(p); x, _ = to_model_space(v.data, v.affine, sp); return np.asarray(x, np.float32).squeeze()
x = ms(example_scans()[0].path); enc = pipe.encode(x, steps=10); zT = enc.z_T[10]
rec = pipe.sample(enc.y_sem, zT, steps=10)[0, 0].numpy()
rows = list(csv.DictReader(open(sys.argv[2])))
others = [r for r in rows if r["visit"] == "1"][:6]
ys = []
for r in others:
    p = Path(sys.argv[2]).parent / r["path"]
    e = pipe.encode(ms(p), steps=None); ys.append((r["subject"], r["group"], r["ventricles_ml"] if "ventricles_ml" in r else "", e.y_sem))
Y = torch.cat([y for *_, y in ys]); print("y norm", float(enc.y_sem.norm()), "spread between subjects", float((Y - Y.mean(0)).norm(dim=1).mean()))
def dark(a): return int((a[22:42, 25:55, 25:45] < 0.25).sum())
print("rec dark", dark(rec))
for s, g, v, y in ys:
    out = pipe.sample(y, zT, steps=10)[0, 0].numpy()
    print(s, g, v, "mean|d|", round(float(np.abs(out - rec).mean()), 4), "dark", dark(out), "|dy|", round(float((y - enc.y_sem).norm()), 2))
out = pipe.sample(torch.zeros_like(enc.y_sem), zT, steps=10)[0, 0].numpy()
print("y=0 mean|d|", round(float(np.abs(out - rec).mean()), 4), "dark", dark(out))
out = pipe.sample(enc.y_sem * 5, zT, steps=10)[0, 0].numpy()
print("y*5 mean|d|", round(float(np.abs(out - rec).mean()), 4), "dark", dark(out))
