"""One training run in a work folder: the stages in order, their hand-overs, and the bundle at the end.

    <workdir>/
      recipe.json            the recipe in use (model and data settings may not change later)
      split.json             the subject-level split (train / val / test subjects and counts)
      cache/                 model-space volumes as .npy (stage B done once)
      autoencoder/ decoder/ ddpm/ representation/   (decoder/: only when the recipe refines the decoder)
          checkpoints/step-*/  log.jsonl  log.csv  final.json
      latents/               μ, σ of the training and validation volumes; latents.json (latent scale)
      probes/                directions.safetensors (and the reference code: the training codes' mean),
                             probes.json (probe metrics on validation subjects)
      bundle/                the final model (an LDAE bundle of EMA weights), unless --output says otherwise

Each stage checks that the stage before it is complete and records the SHA-256 of the weights it
starts from; if an earlier stage is retrained, a later stage's checkpoints are refused instead of
being silently mixed with new weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..directions import Direction
from ..errors import LDAEError
from ..model import LDAEConfig, LDAEModel
from ..nets.autoencoder import build_autoencoder
from ..nets.semantic_encoder import SemanticEncoder
from .autoencoder import (
    AutoencoderObjective,
    Latents,
    channel_usage,
    encode_latents,
    latent_scale_of,
)
from .checkpoint import final_checkpoint, load_checkpoint, read_final, write_json_atomic
from .config import STAGES, Recipe, comparable
from .data import TrainingData
from .ddpm import DDPMObjective
from .decoder import DecoderObjective, check_same_latents, decoder_of_bundle, decoder_state
from .distributed import DistContext
from .handover import load_handover, save_handover, stage_name
from .lock import workdir_lock
from .probes import cross_validated_metrics, encode_codes, fit_directions, probe_metrics
from .representation import RepresentationObjective
from .trainer import StageResult, module_fingerprint, run_stage

ORDER = ("autoencoder", "decoder", "ddpm", "representation", "probes", "bundle")
_REFERENCE_KEY = "_reference_code"
"""The probes' tensor that holds the training codes' mean: the reference code of code guidance."""


def _strip(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


class TrainingSession:
    """Runs the stages of ``recipe`` on ``cohort`` in ``workdir`` (in this process's share under torchrun).

    Args:
        progress: tqdm bars on stderr (rank 0 only).
        echo: where one-line messages go (rank 0 only).
    """

    def __init__(self, recipe: Recipe, cohort: str | Path, workdir: str | Path, ctx: DistContext | None = None,
                 progress: bool = True, echo: Callable[[str], None] | None = None, bundle_dtype: str = "float32",
                 workers: int = 1) -> None:
        self.recipe, self.cohort, self.workdir = recipe, Path(cohort), Path(workdir)
        self.workers = max(1, int(workers))  # processes for stage B (model-space volumes)
        if bundle_dtype not in ("float32", "float16"):
            raise LDAEError(f"the bundle's weights are stored as float32 or float16, not {bundle_dtype!r}")
        self.bundle_dtype = bundle_dtype
        self.decoder_from: Path | None = None  # export_bundle's default decoder_from ('ldae train --decoder-from')
        self.ctx = ctx or DistContext()
        self.progress = progress
        self._echo = echo or (lambda s: print(s, file=sys.stderr))
        self._data: TrainingData | None = None
        self._latents: Latents | None = None
        self._holds_lock = False
        self._check_recipe()

    # ------------------------------------------------------------------ plumbing
    def echo(self, text: str) -> None:
        if self.ctx.is_main:
            self._echo(text)

    def _check_recipe(self) -> None:
        path = self.workdir / "recipe.json"
        if self.ctx.is_main:
            self.workdir.mkdir(parents=True, exist_ok=True)
            if path.is_file():
                try:
                    old = json.loads(path.read_text())
                except ValueError:
                    old = None
                if old is not None and comparable(old) != comparable(self.recipe.to_dict()):
                    raise LDAEError(
                        f"{self.workdir} was started with other model or data settings (see {path}); "
                        "use a new --workdir for a different model, or the recipe it was started with"
                    )
            write_json_atomic(path, self.recipe.to_dict())
        self.ctx.barrier()

    def stage_dir(self, name: str) -> Path:
        return self.workdir / name

    @property
    def data(self) -> TrainingData:
        if self._data is None:
            space = self.recipe.model.space
            if self.ctx.is_main:
                self._data = TrainingData.open(self.cohort, self.recipe.data, space, self.workdir)
            self.ctx.barrier()
            if not self.ctx.is_main:
                self._data = TrainingData.open(self.cohort, self.recipe.data, space, self.workdir, write_split=False)
            self.echo(f"cohort {self.cohort}: {self._data.describe()} (split in {self.workdir / 'split.json'})")
            self._check_columns(self._data)
        return self._data

    def _check_columns(self, data: TrainingData) -> None:
        """The representation stage's code-regression columns must be numbers in every row: checked
        when the cohort is first read, not hours later when that stage starts."""
        rep = self.recipe.representation
        if not (rep.code_regression_weight > 0 and rep.code_regression_columns):
            return
        bad = []
        for c in rep.code_regression_columns:
            try:
                for r in data.rows:
                    r.number(c)
            except LDAEError:
                bad.append(c)
        if bad:
            raise LDAEError(f"the recipe's representation.code_regression_columns need the column(s) {', '.join(bad)} with a number in every row "
                            f"of {self.cohort}'s table; 'ldae cohort --labels' writes them, or train without them: "
                            f"--set representation.code_regression_columns=[]")

    def prepare_volumes(self, splits=("train", "val")) -> None:
        """Stage B for the given splits, once (rank 0 fills the disk cache, the others then read it)."""
        rows = [i for s in splits for i in self.data.indices[s]]
        store = self.data.volumes

        def load(show: bool) -> None:
            todo = [i for i in rows if not store.is_cached(i)]
            bar = None
            if show and self.progress and todo:
                from tqdm import tqdm

                bar = tqdm(total=len(todo), desc="model space", unit="vol", file=sys.stderr, dynamic_ncols=True)
            store.prepare(todo, (lambda d, n: bar.update(1)) if bar else None, workers=self.workers if show else 1)
            if bar:
                bar.close()
            store.prepare(rows)  # the rest from the disk cache into memory

        if self.ctx.is_main:
            load(True)
        self.ctx.barrier()
        if not self.ctx.is_main:
            load(False)

    def _require(self, stage: str, before: str) -> Path:
        p = final_checkpoint(self.stage_dir(stage))
        if p is None:
            raise LDAEError(f"the {stage} stage is not complete in {self.workdir}; run 'ldae train {stage}' (or 'ldae train all') before '{before}'")
        return p

    def _run(self, objective, name: str, stop_at: int | None, extra: dict | None = None) -> StageResult:
        cfg = self.recipe.stage(name)
        res = run_stage(objective, cfg, self.stage_dir(name), self.ctx, progress=self.progress, stop_at=stop_at, extra_state=extra)
        if res.skipped:
            self.echo(f"{name}: already complete ({res.steps} steps), kept")
        elif res.interrupted:
            self.echo(f"{name}: stopped after {res.steps} steps; run the same command again to continue")
        else:
            sps = f", median {res.seconds_per_step:.3f} s/step" if res.seconds_per_step else ""
            self.echo(f"{name}: done, {res.steps} steps{sps}; EMA weights in {res.checkpoint}")
        return res

    # ------------------------------------------------------------------ stages
    def train_autoencoder(self, stop_at: int | None = None) -> StageResult:
        self.prepare_volumes()
        obj = AutoencoderObjective(self.recipe.model, self.recipe.autoencoder, self.data, self.ctx.device)
        res = self._run(obj, "autoencoder", stop_at)
        if not res.interrupted:
            self.latents()
        return res

    def latents(self) -> Latents:
        """The stored latents of the final EMA autoencoder (computed on first use)."""
        fp = module_fingerprint(self.stage_dir("autoencoder"))
        if not fp:
            self._require("autoencoder", "the latents")
        folder = self.workdir / "latents"
        if self._latents is not None and self._latents.meta.get("autoencoder") == fp:
            return self._latents
        lat = Latents.load(folder)
        if lat is None or lat.meta.get("autoencoder") != fp:
            self.prepare_volumes()
            if self.ctx.is_main:
                ae = self._ema_autoencoder()
                rows = self.data.indices["train"] + self.data.indices["val"]
                mu, sigma = encode_latents(ae, self.data, rows, self.ctx.device)
                n_train = len(self.data.indices["train"])
                shift = mu[:n_train].mean(0) if self.recipe.model.latent_shift else None
                scale = latent_scale_of(mu[:n_train], sigma[:n_train], self.recipe.autoencoder.seed, shift)
                meta = {"autoencoder": fp, "n_train": n_train, "n_val": len(rows) - n_train, "latent_shift": shift is not None,
                        "latent_shape": list(mu.shape[1:]), "mu_mean": float(mu[:n_train].mean()), "sigma_mean": float(sigma[:n_train].mean()),
                        "how": "1 / std of μ + σ·ε over all training volumes (ε seeded by the autoencoder stage's seed)",
                        "channel_usage": channel_usage(mu[:n_train], sigma[:n_train])}
                Latents(rows, mu, sigma, scale, meta, shift).save(folder)
                self.echo(f"latents: {len(rows)} volumes encoded; latent scale {scale:.4f} (1/std of the training latents)")
                drowned = [c for c, u in enumerate(meta["channel_usage"]) if u < 1.0]
                if drowned:
                    self.echo(f"warning: latent channel(s) {drowned} carry little: the spread of μ is below the posterior σ "
                              f"(std(μ)/mean(σ) = {', '.join(f'{u:.2f}' for u in meta['channel_usage'])}); "
                              "the decoder learns to ignore them, which blurs every reconstruction. Lower autoencoder.kl_weight and retrain the autoencoder.")
            self.ctx.barrier()
            lat = Latents.load(folder)
        self._latents = lat
        return lat

    def _ema_autoencoder(self):
        """The autoencoder stage's final EMA weights, on this process's device."""
        ck = load_checkpoint(final_checkpoint(self.stage_dir("autoencoder")), with_optimizer=False)
        ae = build_autoencoder(self.recipe.model.autoencoder)
        ae.load_state_dict(_strip(ck.groups["ema"], "autoencoder."))
        return ae.to(self.ctx.device)

    MATCHING = "brain histogram (voxels > 0.02) mapped onto the training scans' median brain quantiles (101 levels)"

    def matched_latents(self) -> Latents:
        """The latents of the training and validation scans brought to one intensity reference
        (``training/matching.py``), encoded by the final EMA autoencoder once and stored in
        ``WORKDIR/latents_matched``, with the stored latents' scale and shift: what
        ``representation.contrast_free_targets`` builds its targets from."""
        from .matching import brain_quantiles, match_brain_histogram, reference_quantiles

        lat = self.latents()
        folder = self.workdir / "latents_matched"
        key = {"autoencoder": lat.meta["autoencoder"], "matching": self.MATCHING}
        found = Latents.load(folder)
        if found is not None and all(found.meta.get(k) == v for k, v in key.items()):
            return found
        self.prepare_volumes()
        if self.ctx.is_main:
            reference = reference_quantiles([brain_quantiles(self.data.volumes[r]) for r in self.data.indices["train"]])
            with torch.no_grad():
                mu, sigma = encode_latents(self._ema_autoencoder(), self.data, lat.rows, self.ctx.device,
                                           transform=lambda v: match_brain_histogram(v, reference))
            meta = {**key, "reference_quantiles": [round(float(v), 6) for v in reference], "n_train": lat.meta.get("n_train")}
            Latents(lat.rows, mu, sigma, lat.scale, meta, lat.shift).save(folder)
            self.echo(f"matched latents: {len(lat.rows)} volumes brought to one intensity reference and encoded")
        self.ctx.barrier()
        return Latents.load(folder)

    def train_decoder(self, stop_at: int | None = None) -> StageResult | None:
        """Stage (a′): refine the decoder on μ, the encoder frozen (``training.decoder``); None when
        the recipe leaves it out (``decoder.steps: 0``)."""
        if not self.recipe.decoder.enabled:
            self.echo("decoder: not refined (decoder.steps is 0 in the recipe); the bundle keeps the autoencoder stage's decoder")
            return None
        ae_ck = self._require("autoencoder", "decoder")
        self.prepare_volumes()
        state = _strip(load_checkpoint(ae_ck, with_optimizer=False).groups["ema"], "autoencoder.")
        obj = DecoderObjective(self.recipe.model, self.recipe.decoder, self.data, state, self.ctx.device,
                               {"autoencoder": module_fingerprint(self.stage_dir("autoencoder"))})
        return self._run(obj, "decoder", stop_at)

    def _refined_decoder(self) -> dict | None:
        """The decoder stage's EMA decoder tensors, when the recipe refines the decoder (the stage must
        then be complete and trained on this work folder's autoencoder)."""
        if not self.recipe.decoder.enabled:
            return None
        ck = load_checkpoint(self._require("decoder", "the bundle"), with_optimizer=False)
        if ck.state.get("upstream", {}).get("autoencoder") != module_fingerprint(self.stage_dir("autoencoder")):
            raise LDAEError("the decoder stage was trained on other autoencoder weights; delete "
                            f"{self.stage_dir('decoder')} and run 'ldae train decoder' again")
        refined = decoder_state(ck.groups["ema"])
        if not any(k.startswith("decoder.") for k in refined):
            raise LDAEError(f"{self.stage_dir('decoder')} holds no decoder weights; delete it and run 'ldae train decoder' again")
        return refined

    def train_ddpm(self, stop_at: int | None = None) -> StageResult:
        self._require("autoencoder", "ddpm")
        lat = self.latents()
        up = {"autoencoder": lat.meta["autoencoder"]}
        obj = DDPMObjective(self.recipe.model, self.recipe.ddpm, self.data, lat, self.ctx.device, up)
        return self._run(obj, "ddpm", stop_at, {"latent_scale": lat.scale})

    def train_representation(self, stop_at: int | None = None) -> StageResult:
        self._require("autoencoder", "representation")
        ddpm_ck = self._require("ddpm", "representation")
        lat = self.latents()
        ck = load_checkpoint(ddpm_ck, with_optimizer=False)
        unet_state = _strip(ck.groups["ema"], "unet.")
        up = {"autoencoder": lat.meta["autoencoder"], "ddpm": module_fingerprint(self.stage_dir("ddpm"))}
        self.prepare_volumes()
        matched = self.matched_latents() if self.recipe.representation.contrast_free_targets else None
        obj = RepresentationObjective(self.recipe.model, self.recipe.representation, self.data, lat, unet_state, self.ctx.device, up,
                                      matched)
        return self._run(obj, "representation", stop_at, {"latent_scale": lat.scale})

    def _ema_encoder(self):
        ck = load_checkpoint(self._require("representation", "probes"), with_optimizer=False)
        enc = SemanticEncoder.from_config(self.recipe.model.encoder)
        enc.load_state_dict(_strip(ck.groups["ema"], "encoder."))
        return enc.to(self.ctx.device).eval(), ck

    def fit_probes(self) -> dict:
        """Probes on the EMA codes of the training subjects; metrics on the validation subjects."""
        folder = self.workdir / "probes"
        fp = module_fingerprint(self.stage_dir("representation"))
        if not fp:
            self._require("representation", "probes")
        settings = dataclasses.asdict(self.recipe.probes)
        existing = self._read_probes(folder)
        if (existing is not None and existing[1].get("representation") == fp and existing[1].get("settings") == settings
                and existing[2] is not None):
            self.echo("probes: already fitted, kept")
            return existing[1]
        self.prepare_volumes()
        if self.ctx.is_main:
            enc, _ = self._ema_encoder()
            cfg, data, plane = self.recipe.probes, self.data, self.recipe.model.slicing_plane
            train_rows, val_rows = data.indices["train"], data.indices["val"]
            codes = encode_codes(enc, data, train_rows, self.ctx.device, plane, cfg.batch_size)
            dirs = fit_directions(codes, [data.rows[i] for i in train_rows], cfg)
            metrics = {"train": probe_metrics(dirs, codes, [data.rows[i] for i in train_rows], cfg),
                       "train_cv": cross_validated_metrics(codes, [data.rows[i] for i in train_rows], cfg)}
            if val_rows:
                vcodes = encode_codes(enc, data, val_rows, self.ctx.device, plane, cfg.batch_size)
                metrics["val"] = probe_metrics(dirs, vcodes, [data.rows[i] for i in val_rows], cfg)

            folder.mkdir(parents=True, exist_ok=True)
            tensors = {_REFERENCE_KEY: codes.float().mean(0)}
            for name, d in dirs.items():
                tensors[f"{name}.weight"], tensors[f"{name}.mean"], tensors[f"{name}.std"] = d.weight, d.mean, d.std
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "directions.safetensors"))
            record = {"representation": fp, "settings": settings, "metrics": metrics,
                      "directions": {n: d.settings() for n, d in dirs.items()}}
            write_json_atomic(folder / "probes.json", record)
            v, cv = metrics.get("val", {}), metrics["train_cv"]
            self.echo(f"probes: disease and age fitted on {len(train_rows)} training visits; 1 alpha of age ≈ {dirs['age'].alpha_unit}"
                      + (f"; validation AUC {v['disease_auc']:.3f}, age MAE {v['age_mae_years']:.2f} y" if v else "")
                      + f"; {cv['folds']}-fold over training subjects AUC {cv['disease_auc']:.3f}, age MAE {cv['age_mae_years']:.2f} y")
        self.ctx.barrier()
        return self._read_probes(folder)[1]

    def _read_probes(self, folder: Path):
        if not (folder / "probes.json").is_file() or not (folder / "directions.safetensors").is_file():
            return None
        record = json.loads((folder / "probes.json").read_text())
        t = load_file(str(folder / "directions.safetensors"))
        dirs = {n: Direction.from_settings(n, t[f"{n}.weight"], t[f"{n}.mean"], t[f"{n}.std"], m) for n, m in record["directions"].items()}
        return dirs, record, t.get(_REFERENCE_KEY)

    def export_bundle(self, output: str | Path | None = None, decoder_from: str | Path | None = None) -> Path:
        """Write the EMA weights, the latent scale and the directions as an LDAE bundle.

        ``decoder_from``: a bundle trained on this work folder's autoencoder whose (refined) decoder
        the new bundle takes, for a recipe that does not refine the decoder itself (the shipped demo
        model's decoder was refined in a work folder that no longer exists; a retrained diffusion stage
        keeps it this way). Its encoder must equal this folder's autoencoder stage at its storage
        precision, and its latent scale and shift the latents here; its decoder's provenance is copied."""
        from ..weights.bundle import BUNDLE_JSON, save_bundle

        out = Path(output) if output else self.workdir / "bundle"
        probes = self._read_probes(self.workdir / "probes")
        if probes is None:
            raise LDAEError(f"no probes in {self.workdir}; run 'ldae train probes' first")
        dirs, record, reference = probes
        lat = self.latents()
        refined = self._refined_decoder()
        donor = None
        decoder_from = decoder_from if decoder_from is not None else self.decoder_from
        if decoder_from is not None:
            if refined is not None:
                raise LDAEError("the recipe refines the decoder itself (decoder.steps > 0); take a decoder from another "
                                "bundle only with --set decoder.steps=0")
            ae_state = _strip(load_checkpoint(final_checkpoint(self.stage_dir("autoencoder")), with_optimizer=False).groups["ema"], "autoencoder.")
            refined, donor = decoder_of_bundle(Path(decoder_from), ae_state, lat, self.workdir / "latents")
        stages = {s: read_final(self.stage_dir(s)) for s in STAGES if s != "decoder" or (refined is not None and donor is None)}
        fingerprints = {s: module_fingerprint(self.stage_dir(s)).get("sha256") for s in stages}
        if donor is not None:
            fingerprints["decoder"] = donor["fingerprint"]
        fingerprints["probes"] = hashlib.sha256((self.workdir / "probes" / "probes.json").read_bytes()).hexdigest()
        if record.get("representation", {}).get("sha256") != fingerprints["representation"]:
            raise LDAEError("the probes were fitted on other representation weights; run 'ldae train probes' again")
        if (out / BUNDLE_JSON).is_file():
            meta = json.loads((out / BUNDLE_JSON).read_text())
            if meta.get("source", {}).get("training", {}).get("fingerprints") == fingerprints:
                self.echo(f"bundle: {out} already holds these weights, kept")
                return out
            raise LDAEError(f"{out} already holds another bundle; remove it or give another --output")
        if self.ctx.is_main:
            config = _with_latent_scale(self.recipe.model, lat.scale)
            ae_ck = load_checkpoint(final_checkpoint(self.stage_dir("autoencoder")), with_optimizer=False)
            rep_ck = load_checkpoint(final_checkpoint(self.stage_dir("representation")), with_optimizer=False)
            split = json.loads((self.workdir / "split.json").read_text())
            identity = {
                "name": self.recipe.name,
                "licence": self._licence_text(),
                "training": {
                    "tool": "ldae train (LDAELib.training)",
                    "cohort": str(self.cohort.resolve()),
                    "split": split.get("counts", {}),
                    "split_settings": split.get("settings", {}),
                    "stages": {s: {"steps": f.get("step"), "losses": f.get("losses"), "seconds_per_step": f.get("seconds_per_step")} for s, f in stages.items()},
                    "latent_scale": lat.scale,
                    "probe_metrics": record.get("metrics", {}),
                    "fingerprints": fingerprints,
                    "recipe": {k: v for k, v in self.recipe.to_dict().items() if k != "licence"},
                    "weights": "EMA weights of every network (ShiftUNet ε-branch = EMA of the DDPM UNet)",
                },
            }
            if donor is not None:
                training = identity["training"]
                training["stages"]["decoder"] = donor["stage"]
                training["recipe"]["decoder"] = donor["recipe"]
                training["decoder_from"] = {"bundle": donor["name"], "weights_sha256": donor["weights_sha256"]}
            model = LDAEModel(config, dirs, identity)
            if config.latent_shift:
                if lat.shift is None:
                    raise LDAEError(f"the recipe uses a latent shift but {self.workdir / 'latents'} holds none; delete that folder so the latents are encoded again")
                model.latent_shift = lat.shift.float().clone()
            if config.guided:
                if reference is None:
                    raise LDAEError(f"the recipe uses code guidance but {self.workdir / 'probes'} holds no reference code; run 'ldae train probes' again")
                model.reference_code = reference.float().clone()
            model.autoencoder.load_state_dict(_strip(ae_ck.groups["ema"], "autoencoder."))
            if refined is not None:
                model.autoencoder.load_state_dict({**model.autoencoder.state_dict(), **refined})
            model.semantic_encoder.load_state_dict(_strip(rep_ck.groups["ema"], "encoder."))
            model.shift_unet.load_state_dict(_strip(rep_ck.groups["ema"], "shift_unet."))
            split_text = json.dumps(split, indent=1) + "\n"
            save_bundle(model, out, name=self.recipe.name, dtype=getattr(torch, self.bundle_dtype),
                        extra_files={"training_split.json": split_text})
            self.echo(f"bundle: wrote {out}")
        self.ctx.barrier()
        return out

    def refine_bundle_decoder(self, source: str | Path, output: str | Path) -> Path:
        """Write a copy of the bundle ``source`` whose decoder is this work folder's refined one.

        For a model whose diffusion stages were trained in another work folder on the same
        autoencoder (the shipped demo model): the bundle's encoder must equal this folder's
        autoencoder stage (at the bundle's storage precision), and its latent scale and shift the
        latents here, else the refined decoder would not match its latents. Everything else is
        copied: networks, directions, reference code, documents, limitation notes; the provenance
        gains the decoder stage (steps, losses, fingerprint, settings)."""
        from ..weights.bundle import BUNDLE_JSON, MANIFEST, load_bundle, save_bundle

        source, out = Path(source), Path(output)
        refined = self._refined_decoder()
        if refined is None:
            raise LDAEError("the recipe does not refine the decoder (decoder.steps is 0); nothing to put into the bundle")
        model = load_bundle(source)
        meta = json.loads((source / BUNDLE_JSON).read_text())
        dtype = getattr(torch, meta.get("dtype", "float32"))
        ae_state = _strip(load_checkpoint(final_checkpoint(self.stage_dir("autoencoder")), with_optimizer=False).groups["ema"], "autoencoder.")
        check_same_latents(source, model, meta, ae_state, self.latents(), self.workdir / "latents",
                           "its latents would not match a decoder refined here")
        current = model.autoencoder.state_dict()
        model.autoencoder.load_state_dict({**current, **refined})
        src = json.loads(json.dumps(meta.get("source", {})))
        training = src.setdefault("training", {})
        fin = read_final(self.stage_dir("decoder"))
        training.setdefault("stages", {})["decoder"] = {"steps": fin.get("step"), "losses": fin.get("losses"), "seconds_per_step": fin.get("seconds_per_step")}
        training.setdefault("fingerprints", {})["decoder"] = module_fingerprint(self.stage_dir("decoder")).get("sha256")
        training.setdefault("recipe", {})["decoder"] = self.recipe.decoder.to_dict()
        own = {MANIFEST, BUNDLE_JSON, "LICENSE.txt"}
        documents = {f.name: f.read_text() for f in sorted(source.iterdir())
                     if f.is_file() and f.suffix in (".md", ".json", ".txt") and f.name not in own}
        model.identity = {**src, "licence": model.identity.get("licence", "")}
        if self.ctx.is_main:
            save_bundle(model, out, name=meta.get("name"), dtype=dtype, extra_files=documents)
            self.echo(f"bundle: wrote {out} ({source.name} with the decoder refined in {self.workdir})")
        self.ctx.barrier()
        return out

    def _licence_text(self) -> str:
        text = self.recipe.licence.rstrip() + "\n"
        notice = (self.cohort if self.cohort.is_dir() else self.cohort.parent) / "NOTICE.txt"
        if notice.is_file():
            text += "\n" + "=" * 100 + "\nNOTICE.txt of the training cohort\n" + "=" * 100 + "\n" + notice.read_text()
        return text

    # ------------------------------------------------------------------ hand-overs (handover.py)
    def upstream_of(self, stage: str) -> dict:
        """The fingerprints of the stages ``stage`` trains on, as they are in the work folder now."""
        earlier = {"autoencoder": (), "ddpm": ("autoencoder",), "representation": ("autoencoder", "ddpm")}[stage]
        return {s: module_fingerprint(self.stage_dir(s)) for s in earlier}

    def save_stage(self, stage: str, path: str | Path) -> dict:
        """Write the finished ``stage`` as a float16 hand-over file."""
        self.data  # noqa: B018  (the split must exist: the hand-over records it)
        rec = save_handover(self.workdir, stage, path)
        self.echo(f"{stage}: wrote {path} ({rec['bytes'] / 1e6:.1f} MB, {rec['step']} steps, SHA-256 {rec['file_sha256'][:16]}…)")
        return rec

    @contextmanager
    def _locked(self):
        """The work folder's training lock (LDAELib.training.lock), taken by the main process only
        and once per call chain (``run("all")`` runs the stages through ``run``)."""
        if not self.ctx.is_main or self._holds_lock:
            yield
            return
        with workdir_lock(self.workdir):
            self._holds_lock = True
            try:
                yield
            finally:
                self._holds_lock = False

    def load_stage(self, stage: str, path: str | Path) -> dict:
        """Take ``stage`` from a hand-over file as finished, after checking it belongs to this training."""
        with self._locked():
            return self._load_stage(stage, path)

    def _load_stage(self, stage: str, path: str | Path) -> dict:
        self.data  # noqa: B018
        rec = load_handover(self.workdir, stage, path, self.upstream_of(stage_name(stage)))
        self.echo(f"{stage}: loaded {path} ({rec['step']} steps, float16 weights); the next stage can start")
        return rec

    def run(self, stage: str = "all", output: str | Path | None = None, stop_at: int | None = None):
        """Run one stage, or every stage from the first incomplete one to the bundle (``all``).
        Another process training in the same work folder stops this one at once (``workdir_lock``)."""
        with self._locked():
            return self._run_named(stage, output, stop_at)

    def _run_named(self, stage: str, output: str | Path | None, stop_at: int | None):
        if stage == "all":
            for s in ORDER:
                r = self.run(s, output, stop_at)
                if isinstance(r, StageResult) and r.interrupted:
                    return r
            return self.workdir / "bundle" if output is None else Path(output)
        if stage == "autoencoder":
            return self.train_autoencoder(stop_at)
        if stage == "decoder":
            return self.train_decoder(stop_at)
        if stage == "ddpm":
            return self.train_ddpm(stop_at)
        if stage == "representation":
            return self.train_representation(stop_at)
        if stage == "probes":
            return self.fit_probes()
        if stage == "bundle":
            return self.export_bundle(output)
        raise LDAEError(f"unknown stage {stage!r}; stages: {', '.join(ORDER)}, all")


def _with_latent_scale(config, scale: float):
    """A copy of ``config`` whose latent_scale is the measured one."""

    c = LDAEConfig.from_dict(config.to_dict())
    c.latent_scale = float(scale)
    return c
