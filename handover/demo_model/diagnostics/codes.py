"""Semantic codes of every visit of a work folder's cohort, by split: RUN/codes.pt holds
{"train"|"val"|"test": {"codes": N×E, "subject", "group", "age"}}, and RUN/codes.npz the same visits
flat, with the cohort volumes (what probe_explore.py and probe_val.py read; monitor.py writes it
from a training checkpoint). usage: codes.py RUN [BUNDLE]  (default RUN/bundle)"""
import sys, json, numpy as np, torch
from pathlib import Path


def save_flat(path, codes: torch.Tensor, rows: list, split: list[str]) -> None:
    """codes (N×E) of cohort rows, with each row's split name, group, age and cohort volumes, as one .npz."""
    from LDAELib.cohort.cohort import VOLUME_COLUMNS
    np.savez(path, codes=codes.double().numpy(), subject=np.array([r.subject for r in rows]), split=np.array(split),
             group=np.array([str(r.get("group", "")) for r in rows]), age=np.array([r.number("age") for r in rows]),
             vols=np.array([[r.number(c) for c in VOLUME_COLUMNS] for r in rows]), vcols=np.array(VOLUME_COLUMNS))


if __name__ == "__main__":
    from LDAELib.inference.image import read_image
    from LDAELib.space import to_model_space
    from LDAELib.weights import load_model
    from LDAELib.pipeline import LDAEPipeline
    from LDAELib.training.data import read_cohort
    run = Path(sys.argv[1])
    model = load_model(sys.argv[2] if len(sys.argv) > 2 else run / "bundle"); pipe = LDAEPipeline(model); sp = model.config.space
    split = json.loads((run / "split.json").read_text()); rows = read_cohort(Path(split["settings"]["cohort_csv"]))
    def ms(r):
        v = read_image(r.path); x, _ = to_model_space(v.data, v.affine, sp); return np.asarray(x, np.float32).squeeze()
    out, flat = {}, []
    for part in ("train", "val", "test"):
        sub = [r for r in rows if r.subject in set(split["subjects"][part])]
        out[part] = {"codes": torch.cat([pipe.embed(ms(r)) for r in sub]).float(), "subject": [r.subject for r in sub],
                     "group": [r.get("group") for r in sub], "age": torch.tensor([r.number("age") for r in sub], dtype=torch.float64)}
        flat += [(r, part) for r in sub]
        print(part, len(sub), flush=True)
    torch.save(out, run / "codes.pt")
    save_flat(run / "codes.npz", torch.cat([out[p]["codes"] for p in ("train", "val", "test")]), [r for r, _ in flat], [p for _, p in flat])
