"""decode(μ) of decoder checkpoints: SSIM (volume / brain) on 9 validation + 9 test visits, and the
ventricle measure's bias on 12 test subjects' first visits. usage: decscore.py SPLIT_RUN BUNDLE RUN[:STEP]|shipped ...
(SPLIT_RUN: the work folder whose split and cache are used; BUNDLE: the autoencoder whose encoder the checkpoints share)
``load_split`` and ``make_scorer`` are also used by advdec.py."""
import sys, json, numpy as np, torch
from pathlib import Path
from LDAELib.training.config import Recipe
from LDAELib.training.session import TrainingSession
from LDAELib.evaluation.similarity import ssim, brain_mask
from LDAELib.evaluation.volumes import build_measure, DEFAULT_LABELS, truth_of


def load_split(run0):
    """The training data of work folder ``run0`` (its recipe, split and volume cache), rows told their cohort root."""
    run0 = Path(run0); recipe = Recipe.from_dict(json.loads((run0 / 'recipe.json').read_text()))
    split = json.loads((run0 / 'split.json').read_text()); root = Path(split['settings']['cohort_csv']).parent
    data = TrainingSession(recipe, root, run0, progress=False, echo=lambda s: None).data
    for r in data.rows: r.fields['_cohort_root'] = str(root)
    return data


def make_scorer(ae, space, data):
    """score(tag): prints decode(μ) SSIM of ``ae`` as it stands (9 val + 9 test visits) and its ventricle bias."""
    idx = {id(r): i for i, r in enumerate(data.rows)}
    load = lambda r: np.asarray(data.volumes[idx[id(r)]], np.float32).squeeze()
    meas = build_measure([data.rows[i] for i in data.indices['train']], space, load, DEFAULT_LABELS, max_subjects=16, rng=np.random.default_rng(0))
    sel = data.indices['val'][::max(1, len(data.indices['val']) // 9)][:9] + data.indices['test'][::max(1, len(data.indices['test']) // 9)][:9]
    firsts = {}
    for i in data.indices['test']: firsts.setdefault(data.rows[i].subject, i)
    vsel = list(firsts.values())[:12]
    def dec(x):
        with torch.inference_mode():
            mu, _ = ae.encode(torch.from_numpy(x)[None, None]); return ae.decode(mu).float().numpy()[0, 0]
    def score(tag):
        ae.eval(); o = []
        for i in sel:
            x = load(data.rows[i]); r = dec(x); o.append((ssim(r, x, 1.0), ssim(r, x, 1.0, mask=brain_mask(x))))
        o = np.array(o)
        b = [meas.measure(dec(load(data.rows[i])))['ventricles'] - truth_of(data.rows[i], 'ventricles') for i in vsel]
        print(f"{tag}: val {o[:9,0].mean():.4f} / {o[:9,1].mean():.4f}; test {o[9:,0].mean():.4f} / {o[9:,1].mean():.4f}; ventricle bias {np.mean(b):+.2f} ± {np.std(b):.2f} mL", flush=True)
    return score


if __name__ == '__main__':
    from LDAELib.weights import load_model
    from LDAELib.training.checkpoint import latest_checkpoint, load_checkpoint
    from LDAELib.training.decoder import decoder_state
    torch.set_num_threads(int(__import__('os').environ.get('THREADS', '1')))
    model = load_model(sys.argv[2]); ae = model.autoencoder.float().eval()
    base = {k: v.clone() for k, v in ae.state_dict().items()}
    score = make_scorer(ae, model.config.space, load_split(sys.argv[1]))
    for arg in sys.argv[3:]:
        if arg == 'shipped':
            ae.load_state_dict(base); score('shipped'); continue
        run, _, step = arg.partition(':')
        ck = latest_checkpoint(Path(run) / 'decoder') if not step else Path(run) / 'decoder' / 'checkpoints' / f'step-{int(step):08d}'
        ck = load_checkpoint(ck, with_optimizer=False)
        ae.load_state_dict({**base, **decoder_state(ck.groups['ema'])}); score(f'{run} {ck.path.name}')
