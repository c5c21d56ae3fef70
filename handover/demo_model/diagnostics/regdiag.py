"""usage: regdiag.py STEPS THREADS [BUNDLE]  (RUN: the work folder; SUBJECTS=2 every other training subject, TRAINVAL=1 the
validation subjects join them, MASK=1 only the ventricles' region shown, COORD=1
two coordinate channels beside the intensity). Can the semantic encoder (the demo recipe's architecture, from scratch) learn to read the
regional volumes of unseen subjects when regression is its only job? Train on the training visits
(augmented as the representation stage does, plus a ±2-voxel roll), report r on validation and test visits."""
import sys, json, time, math, torch, numpy as np
import os
from pathlib import Path
from LDAELib.training.config import Recipe
from LDAELib.training.data import TrainingData, semantic_input
from LDAELib.training.augment import augment_volume
from LDAELib.nets.semantic_encoder import SemanticEncoder
torch.manual_seed(0); torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
steps = int(sys.argv[1])
work = Path(os.environ['RUN'])   # the work folder (split.json, recipe.json, caches)
COHORT = Path(json.loads((work / 'split.json').read_text())['settings']['cohort_csv'])
recipe = Recipe.from_dict(json.loads((work / 'recipe.json').read_text()))
data = TrainingData.open(COHORT, recipe.data, recipe.model.space, work, write_split=False)
cols = ['ventricles_ml', 'hippocampus_l_ml', 'hippocampus_r_ml', 'grey_matter_ml', 'csf_ml', 'whole_brain_ml']
def table(idx): return torch.tensor([[data.rows[i].number(c) for c in cols] for i in idx], dtype=torch.float32)
tr, va, te = data.indices['train'], data.indices['val'], data.indices['test']
if os.environ.get('TRAINVAL'):   # the validation subjects join the training ones (read the test columns only)
    tr = tr + va
    print('training subjects', len({data.rows[i].subject for i in tr}), 'visits', len(tr))
if os.environ.get('SUBJECTS'):   # keep every other training subject (sorted), stratified by nothing
    keep = sorted({data.rows[i].subject for i in tr})[::int(os.environ['SUBJECTS'])]
    tr = [i for i in tr if data.rows[i].subject in set(keep)]
    print('training subjects', len(keep), 'visits', len(tr))
Y = table(tr); mu, sd = Y.mean(0), Y.std(0)
enc = SemanticEncoder.from_config(recipe.model.encoder)
if len(sys.argv) > 3:   # start from a bundle's semantic encoder
    from safetensors.torch import load_file
    sd0 = load_file(sys.argv[3] + '/semantic_encoder.safetensors')
    print(enc.load_state_dict({k: v.float() for k, v in sd0.items()}, strict=False))
COORD = bool(os.environ.get('COORD'))
if COORD:   # two coordinate channels beside the intensity: the first convolution takes 3 channels
    stem = enc.backbone.backbone.features[0][0]
    enc.backbone.backbone.features[0][0] = torch.nn.Conv2d(3, stem.out_channels, stem.kernel_size, stem.stride, stem.padding)

    def _forward(x):   # the encoder's forward without its one-channel check
        f = enc.positional_encoding(enc.slice_distributed(x))
        pooled, _ = enc.soft_attention(f)
        a = enc.cross_attention(enc.query_projection(pooled).unsqueeze(1), enc.key_projection(f), enc.value_projection(f))[0]
        return enc.layer_norm_after_attention(a).squeeze(1)
    enc.forward = _forward
head = torch.nn.Linear(recipe.model.encoder.emb_dim, len(cols))
opt = torch.optim.AdamW(list(enc.parameters()) + list(head.parameters()), lr=2e-4)
g = torch.Generator().manual_seed(0)
MASK = None
if os.environ.get('MASK'):   # the encoder sees only the ventricles' region (the evaluation's ROI, dilated 3 more voxels)
    from scipy import ndimage as ndi
    from LDAELib.evaluation.sections import EvalSettings, Loader, read_inputs
    from LDAELib.evaluation.volumes import build_measure, label_values
    inp = read_inputs(EvalSettings(workdir=work, output=Path('/tmp/none'), model=Path(__file__).resolve().parents[3] / 'LDAELib/resources/demo_model', cohort=COHORT))
    m = build_measure(inp.train_rows, recipe.model.space, Loader(inp.rows, recipe.model.space, work), label_values(COHORT.parent / 'cohort.json'),
                      max_subjects=16, rng=np.random.default_rng(0))
    MASK = torch.from_numpy(ndi.binary_dilation(m.rois['ventricles'], iterations=3).astype(np.float32))
    print('mask voxels', int(MASK.sum()))
def batch(idx, aug):
    xs = []
    for r in idx:
        x = torch.from_numpy(data.volumes[r])
        if MASK is not None:
            x = x * MASK
        if aug:
            if float(torch.rand((), generator=g)) < 0.8: x = augment_volume(x, g)
            x = torch.roll(x, [int(v) for v in torch.randint(-2, 3, (3,), generator=g)], dims=(0, 1, 2))
        xs.append(x)
    x = semantic_input(torch.stack(xs)[:, None], recipe.model.slicing_plane)   # B×1×S×H×W
    if COORD:
        h, w = x.shape[-2:]
        gy, gx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing='ij')
        x = torch.cat([x, gy.expand_as(x[:, :1]), gx.expand_as(x[:, :1])], 1)
    return x
@torch.no_grad()
def evaluate(idx):
    enc.eval(); P = []
    for i in range(0, len(idx), 16):
        P.append(head(enc(batch(idx[i:i + 16], False))) * sd + mu)
    enc.train(); P = torch.cat(P); T = table(idx)
    return [float(np.corrcoef(P[:, j], T[:, j])[0, 1]) for j in range(len(cols))]
t0 = time.time()
for step in range(1, steps + 1):
    lr = 2e-4 * 0.5 * (1 + math.cos(math.pi * step / steps))
    for pg in opt.param_groups: pg['lr'] = lr
    idx = [tr[int(i)] for i in torch.randint(0, len(tr), (8,), generator=g)]
    with torch.autocast('cpu', dtype=torch.bfloat16):
        pred = head(enc(batch(idx, True)))
    loss = ((pred.float() - (table(idx) - mu) / sd) ** 2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 250 == 0 or step == steps:
        print(step, f'{time.time() - t0:.0f}s loss {loss.item():.3f}', 'train', ' '.join(f'{v:.2f}' for v in evaluate(tr[::4])),
              '| val', ' '.join(f'{v:.2f}' for v in evaluate(va)), '| test', ' '.join(f'{v:.2f}' for v in evaluate(te)), flush=True)
print('columns', cols)
