"""Training (LDAELib.training): recipes, the subject-level split, the stages, resume, probes, checkpoints, DDP.

Everything runs on a tiny model (32×40×32 grid, 3×8×10×8 latent) and a fake cohort of phantom
brains (8 subjects × 3 visits), so the whole file takes well under a minute on two CPU cores.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from LDAELib.errors import LDAEError

REPO = Path(__file__).resolve().parents[1]
STEPS = 30


def tiny_recipe(steps: int = STEPS, **stage_overrides):
    from LDAELib.model import LDAEConfig
    from LDAELib.nets.autoencoder import AutoencoderConfig
    from LDAELib.nets.semantic_encoder import SemanticEncoderConfig
    from LDAELib.nets.unet import UNetConfig
    from LDAELib.space import ModelSpaceConfig
    from LDAELib.training.config import AutoencoderStageConfig, DataConfig, DDPMStageConfig, Recipe, RepresentationStageConfig

    model = LDAEConfig(
        autoencoder=AutoencoderConfig(num_channels=(8, 8, 8), norm_num_groups=4, num_res_blocks=1, attention_levels=(False,) * 3),
        unet=UNetConfig(base_channel=8, channel_multiplier=(1, 2), attention_resolutions=(2,), latent_dim=16, norm_num_groups=4,
                        dropout=0.1, num_residual_blocks_of_a_block=1),
        encoder=SemanticEncoderConfig(widths=(4, 8, 8, 16), depths=(1, 1, 1, 1), emb_dim=16, num_heads=2, seq_len=32),
        space=ModelSpaceConfig(spacing_mm=(6.0,) * 3, shape=(32, 40, 32)),
    )
    common = dict(steps=steps, batch_size=2, lr=1e-3, log_interval=5, checkpoint_interval=10, val_volumes=2)
    common.update(stage_overrides)
    return Recipe(name="tiny test model", model=model, data=DataConfig(val_fraction=0.25, test_fraction=0.25),
                  autoencoder=AutoencoderStageConfig(crop=(16, 16, 16), **common), ddpm=DDPMStageConfig(**common),
                  representation=RepresentationStageConfig(**common))


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """8 phantom subjects (4 healthy, 4 with growing 'ventricles') × 3 visits, as cohort.csv + NIfTI."""
    import nibabel as nib

    from LDAELib.testing import phantom_brain

    root = tmp_path_factory.mktemp("cohort")
    rows = []
    for i in range(8):
        group = "disease" if i % 2 else "healthy"
        for v in range(3):
            age = 60 + 2 * i + v
            scale = 1.0 + 0.01 * (age - 60) + (0.2 + 0.15 * v if group == "disease" else 0.0)
            data, affine = phantom_brain((46, 55, 46), 4.0, ventricle_scale=scale, seed=100 * i + v)
            name = f"sub-{i:02d}_visit-{v + 1}_T1w.nii.gz"
            nib.save(nib.Nifti1Image(data, affine), str(root / name))
            rows.append({"subject": f"sub-{i:02d}", "visit": v + 1, "months": 12 * v, "age": age, "group": group, "path": name,
                         "ventricle_scale": round(scale, 4)})
    with open(root / "cohort.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (root / "NOTICE.txt").write_text("phantoms made by the test suite\n")
    return root


@pytest.fixture(scope="session")
def trained(tiny_cohort, tmp_path_factory):
    """``all`` on the tiny recipe: every stage for STEPS steps, the probes and the bundle."""
    from LDAELib.training import TrainingSession

    work = tmp_path_factory.mktemp("run")
    session = TrainingSession(tiny_recipe(), tiny_cohort, work, progress=False, echo=lambda s: None)
    bundle = session.run("all")
    return work, bundle


def upstream_copy(work: Path, dest: Path) -> Path:
    """A new work folder at ``dest`` holding ``work``'s finished autoencoder and DDPM stages (for
    trying representation settings without training those again)."""
    dest.mkdir()
    for part in ("autoencoder", "ddpm", "latents", "cache"):
        shutil.copytree(work / part, dest / part)
    for f in ("recipe.json", "split.json"):
        shutil.copy(work / f, dest / f)
    return dest


def _ema_rows(log: Path) -> list[dict]:
    return [r for r in map(json.loads, log.read_text().splitlines()) if r["split"] == "ema"]


# ---------------------------------------------------------------------------------------- recipes
def test_recipe_round_trips_through_json_and_yaml(tmp_path):
    from LDAELib.training.recipe_file import load_recipe, save_recipe

    r = tiny_recipe()
    for name in ("recipe.json", "recipe.yaml"):
        save_recipe(r, tmp_path / name)
        assert load_recipe(tmp_path / name).to_dict() == r.to_dict()


def test_recipe_refuses_unknown_settings_and_applies_overrides():
    from LDAELib.training.config import Recipe
    from LDAELib.training.recipe_file import apply_overrides

    with pytest.raises(LDAEError, match="unknown ddpm stage settings"):
        Recipe.from_dict({"ddpm": {"stepz": 3}})
    r = apply_overrides(tiny_recipe(), ["ddpm.steps=7", "representation.lr=3e-4", "model.unet_args.base_channel=16"])
    assert (r.ddpm.steps, r.representation.lr, r.model.unet.base_channel) == (7, 3e-4, 16)
    with pytest.raises(LDAEError):
        apply_overrides(r, ["ddpm.nope=1"])


def test_global_batch_must_split_evenly_over_processes():
    from LDAELib.training.distributed import DistContext, StepSampler

    with pytest.raises(LDAEError, match="divisible"):
        StepSampler(10, 3, DistContext(rank=0, world_size=2), seed=0)


# ------------------------------------------------------------------------------------------ split
def test_split_is_subject_level_reproducible_and_written(tiny_cohort, tmp_path):
    from LDAELib.training.config import DataConfig
    from LDAELib.training.data import TrainingData, read_cohort, split_subjects

    rows = read_cohort(tiny_cohort)
    a = split_subjects(rows, 0, 0.25, 0.25, "group")
    b = split_subjects(list(reversed(rows)), 0, 0.25, 0.25, "group")
    assert a == b  # the row order does not matter, the seed decides
    subjects = [s for part in a.values() for s in part]
    assert len(subjects) == len(set(subjects)) == 8
    assert [len(a[k]) for k in ("train", "val", "test")] == [4, 2, 2]
    groups = {r.subject: r.get("group") for r in rows}
    for part in a.values():  # stratified: both groups everywhere
        assert {groups[s] for s in part} == {"healthy", "disease"}
    assert any(split_subjects(rows, seed, 0.25, 0.25, "group") != a for seed in range(1, 6))

    from LDAELib.model import small_config

    data = TrainingData.open(tiny_cohort, DataConfig(val_fraction=0.25, test_fraction=0.25), small_config().space, tmp_path)
    on_disk = json.loads((tmp_path / "split.json").read_text())
    assert on_disk["subjects"] == a and on_disk["counts"]["train"] == {"subjects": 4, "visits": 12}
    held_out = set(a["val"]) | set(a["test"])
    assert all(data.rows[i].subject not in held_out for i in data.indices["train"])
    with pytest.raises(LDAEError, match="another subject split"):
        TrainingData.open(tiny_cohort, DataConfig(split_seed=1, val_fraction=0.25, test_fraction=0.25), small_config().space, tmp_path)


def test_volumes_prepared_in_worker_processes_equal_the_serial_ones_and_fill_the_cache(tiny_cohort, tmp_path):
    from LDAELib.model import small_config
    from LDAELib.training.config import DataConfig
    from LDAELib.training.data import TrainingData

    cfg, space = DataConfig(val_fraction=0.25, test_fraction=0.25), small_config().space
    serial = TrainingData.open(tiny_cohort, cfg, space, tmp_path / "a")
    parallel = TrainingData.open(tiny_cohort, cfg, space, tmp_path / "b")
    rows = list(range(6))
    parallel.volumes[rows[0]]  # one row cached already: computed once, not again in a worker
    seen = []
    parallel.volumes.prepare(rows, progress=lambda n, total: seen.append((n, total)), workers=2)
    assert seen == [(n, 6) for n in range(2, 7)]
    assert len(list((tmp_path / "b" / "cache").rglob("*.npy"))) == 6
    for i in rows:
        np.testing.assert_array_equal(parallel.volumes[i], serial.volumes[i])
    reopened = TrainingData.open(tiny_cohort, cfg, space, tmp_path / "b")
    assert all(reopened.volumes.is_cached(i) for i in rows)


# ----------------------------------------------------------------------------------------- stages
@pytest.mark.parametrize("stage", ["autoencoder", "ddpm", "representation"])
def test_stage_loss_decreases(trained, stage):
    """The EMA weights' loss on fixed batches (fixed noise) drops over the stage's few dozen steps."""
    work, _ = trained
    rows = _ema_rows(work / stage / "log.jsonl")
    assert rows[0]["step"] == 0 and rows[-1]["step"] == STEPS
    first, last = rows[0], rows[-1]
    assert last["train_fixed_loss"] < 0.9 * first["train_fixed_loss"], (first, last)
    assert last["val_loss"] < first["val_loss"]
    assert (work / stage / "log.csv").read_text().startswith("step,epoch,split,metric,value,time_s")


def test_latent_scale_is_one_over_the_std_of_the_training_latents(trained):
    from safetensors.torch import load_file

    from LDAELib.training.autoencoder import latent_scale_of

    work, bundle = trained
    meta = json.loads((work / "latents" / "latents.json").read_text())
    t = load_file(str(work / "latents" / "latents.safetensors"))
    n = meta["n_train"]
    assert meta["latent_scale"] == pytest.approx(latent_scale_of(t["mu"][:n], t["sigma"][:n], 0))
    assert json.loads((bundle / "ldae_bundle.json").read_text())["config"]["latent_scale"] == pytest.approx(meta["latent_scale"])


def test_latents_record_how_much_each_channel_carries(trained):
    """latents.json holds std(μ)/mean(σ) per channel, computed from the stored training latents."""
    from safetensors.torch import load_file

    from LDAELib.training.autoencoder import channel_usage

    work, _ = trained
    meta = json.loads((work / "latents" / "latents.json").read_text())
    t = load_file(str(work / "latents" / "latents.safetensors"))
    n = meta["n_train"]
    assert meta["channel_usage"] == pytest.approx(channel_usage(t["mu"][:n], t["sigma"][:n]))
    assert len(meta["channel_usage"]) == t["mu"].shape[1]


def test_channel_usage_flags_a_channel_drowned_by_its_noise():
    from LDAELib.training.autoencoder import channel_usage

    g = torch.Generator().manual_seed(0)
    mu = torch.randn(6, 3, 4, 5, 4, generator=g) * torch.tensor([2.0, 0.3, 1.0]).view(1, 3, 1, 1, 1)
    sigma = torch.full_like(mu, 0.5)
    usage = channel_usage(mu, sigma)
    assert usage[0] > 3 and usage[1] < 1 < usage[2]
    assert usage[1] == pytest.approx(float(mu[:, 1].std()) / 0.5)


def test_all_writes_a_bundle_that_loads_and_runs(trained, tiny_cohort):
    from LDAELib.pipeline import LDAEPipeline
    from LDAELib.training.data import read_cohort
    from LDAELib.space import to_model_space
    from LDAELib.inference.image import read_image as read_volume
    from LDAELib.weights import load_model

    _, bundle = trained
    assert (bundle / "LICENSE.txt").read_text().startswith("LDAE for 3D Slicer: demonstration weights")
    model = load_model(bundle)
    assert set(model.directions) == {"disease", "age"}
    assert model.directions["age"].alpha_unit.endswith("years")
    assert model.identity["source"]["training"]["weights"].startswith("EMA")
    vol = read_volume(read_cohort(tiny_cohort)[0].path)
    x, _ = to_model_space(vol.data, vol.affine, model.config.space)
    pipe = LDAEPipeline(model)
    out = pipe.edit(x, model.directions["disease"], [-1.0, 1.0], steps=3)
    assert out.shape == (2, 1, 32, 40, 32) and torch.isfinite(out).all()


def test_completed_stages_are_kept_not_retrained(trained, tiny_cohort):
    from LDAELib.training import TrainingSession

    work, bundle = trained
    before = {p: p.stat().st_mtime_ns for p in (work / "ddpm" / "checkpoints").rglob("*") if p.is_file()}
    messages = []
    TrainingSession(tiny_recipe(), tiny_cohort, work, progress=False, echo=messages.append).run("all")
    assert {p: p.stat().st_mtime_ns for p in (work / "ddpm" / "checkpoints").rglob("*") if p.is_file()} == before
    assert any("already complete" in m for m in messages) and any("kept" in m for m in messages if m.startswith("bundle"))


def test_a_changed_model_refuses_the_work_folder(trained, tiny_cohort):
    from LDAELib.training import TrainingSession
    from LDAELib.training.recipe_file import apply_overrides

    work, _ = trained
    with pytest.raises(LDAEError, match="other model or data settings"):
        TrainingSession(apply_overrides(tiny_recipe(), ["model.unet_args.base_channel=16"]), tiny_cohort, work, progress=False)


# ----------------------------------------------------------------------------------------- resume
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(trained, tiny_cohort, tmp_path):
    """Representation stage (dropout on, frozen ε-branch): stop after 8 steps, restart from step 5, finish."""
    from LDAELib.training import TrainingSession
    from LDAELib.training.checkpoint import final_checkpoint, list_checkpoints, load_checkpoint

    work, _ = trained
    recipe = tiny_recipe(steps=12, checkpoint_interval=5)
    runs = {}
    for name in ("straight", "resumed"):
        w = upstream_copy(work, tmp_path / name)
        if name == "resumed":
            s = TrainingSession(recipe, tiny_cohort, w, progress=False, echo=lambda m: None)
            r = s.train_representation(stop_at=8)
            assert r.interrupted and [n for n, _ in list_checkpoints(w / "representation")] == [5]
            assert final_checkpoint(w / "representation") is None
        res = TrainingSession(recipe, tiny_cohort, w, progress=False, echo=lambda m: None).train_representation()
        runs[name] = load_checkpoint(final_checkpoint(w / "representation"))
        if name == "resumed":
            assert res.resumed_from == 5
    a, b = runs["straight"], runs["resumed"]
    for group in ("model", "ema"):
        assert a.groups[group].keys() == b.groups[group].keys()
        for k in a.groups[group]:
            assert torch.equal(a.groups[group][k], b.groups[group][k]), (group, k)
    steps = [json.loads(l)["step"] for l in (tmp_path / "resumed" / "representation" / "log.jsonl").read_text().splitlines()]
    straight = [json.loads(l)["step"] for l in (tmp_path / "straight" / "representation" / "log.jsonl").read_text().splitlines()]
    assert steps == straight  # the log reads like one run


def test_decoder_stage_refines_only_the_decoder_and_the_bundle_takes_it(trained, tiny_cohort, tmp_path):
    """``decoder.steps > 0``: the encoder stays as trained (so the latents, the DDPM and the
    representation stay valid and are not trained again), the decoder's loss on μ falls, and the
    bundle holds the refined decoder beside the autoencoder stage's encoder."""
    from LDAELib.training import TrainingSession
    from LDAELib.training.config import DecoderStageConfig
    from LDAELib.weights import load_model

    work, bundle0 = trained
    w = upstream_copy(work, tmp_path / "dec")
    for part in ("representation", "probes"):
        shutil.copytree(work / part, w / part)
    recipe = tiny_recipe()
    recipe.decoder = DecoderStageConfig(steps=20, batch_size=2, lr=1e-3, log_interval=5, checkpoint_interval=10, val_volumes=2, edge_weight=0.5)
    latents = (w / "latents" / "latents.safetensors").read_bytes()
    ddpm = {p: p.stat().st_mtime_ns for p in (w / "ddpm").rglob("*") if p.is_file()}
    messages = []
    bundle = TrainingSession(recipe, tiny_cohort, w, progress=False, echo=messages.append).run("all")
    assert (w / "latents" / "latents.safetensors").read_bytes() == latents
    assert {p: p.stat().st_mtime_ns for p in (w / "ddpm").rglob("*") if p.is_file()} == ddpm
    rows = _ema_rows(w / "decoder" / "log.jsonl")
    assert rows[-1]["train_fixed_loss"] < rows[0]["train_fixed_loss"], (rows[0], rows[-1])
    train_rows = [r for r in map(json.loads, (w / "decoder" / "log.jsonl").read_text().splitlines()) if r["split"] == "train"]
    assert train_rows and all("edge" in r for r in train_rows)  # the edge term is on and logged
    old, new = load_model(bundle0).autoencoder.state_dict(), load_model(bundle).autoencoder.state_dict()
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed), sorted(changed)[:5]
    assert any(k.startswith("decoder.") for k in changed)
    meta = json.loads((bundle / "ldae_bundle.json").read_text())["source"]["training"]
    assert meta["stages"]["decoder"]["steps"] == 20 and meta["fingerprints"]["decoder"]
    assert not any(m.startswith("decoder: not refined") for m in messages)

    # the refined decoder into a bundle trained elsewhere on the same autoencoder (the demo model's case)
    session = TrainingSession(recipe, tiny_cohort, w, progress=False, echo=messages.append)
    out = session.refine_bundle_decoder(bundle0, tmp_path / "refined")
    a, b, c = load_model(bundle0), load_model(bundle), load_model(out)
    assert all(torch.equal(c.autoencoder.state_dict()[k], b.autoencoder.state_dict()[k]) for k in new)
    assert all(torch.equal(v, a.shift_unet.state_dict()[k]) for k, v in c.shift_unet.state_dict().items())
    assert torch.equal(c.directions["disease"].weight, a.directions["disease"].weight)
    assert c.identity["source"]["training"]["stages"]["decoder"]["steps"] == 20
    assert (out / "training_split.json").read_text() == (bundle0 / "training_split.json").read_text()
    with torch.no_grad():  # a bundle whose encoder differs is refused
        next(a.autoencoder.encoder.parameters()).add_(0.5)
    from LDAELib.weights.bundle import save_bundle
    a.identity = {**a.identity["source"], "licence": "test"}
    save_bundle(a, tmp_path / "other")
    with pytest.raises(LDAEError, match="not trained on this work folder's autoencoder"):
        session.refine_bundle_decoder(tmp_path / "other", tmp_path / "refused")
    assert not (tmp_path / "refused").exists()

    # The other way round (a retrained representation keeping a decoder refined elsewhere): the
    # folder without a decoder stage writes its bundle with the refined bundle's decoder.
    from LDAELib.cli import main as ldae

    assert ldae(["train", "bundle", "--cohort", str(tiny_cohort), "--workdir", str(work), "--decoder-from", str(bundle),
                 "--output", str(tmp_path / "taken"), "-q"]) == 0
    d = load_model(tmp_path / "taken")
    assert all(torch.equal(d.autoencoder.state_dict()[k], b.autoencoder.state_dict()[k]) for k in new)  # the refined decoder
    assert all(torch.equal(v, a.shift_unet.state_dict()[k]) for k, v in d.shift_unet.state_dict().items())  # this folder's stages
    training = d.identity["source"]["training"]
    assert training["stages"]["decoder"]["steps"] == 20 and training["fingerprints"]["decoder"] == meta["fingerprints"]["decoder"]
    assert training["decoder_from"]["weights_sha256"] and training["recipe"]["decoder"]["steps"] == 20
    with pytest.raises(LDAEError, match="not trained on this work folder's autoencoder"):
        TrainingSession(tiny_recipe(), tiny_cohort, work, progress=False, echo=messages.append).export_bundle(
            tmp_path / "refused", decoder_from=tmp_path / "other")
    with pytest.raises(LDAEError, match="no refined decoder"):  # bundle0 was never refined
        TrainingSession(tiny_recipe(), tiny_cohort, work, progress=False, echo=messages.append).export_bundle(
            tmp_path / "refused", decoder_from=bundle0)
    with pytest.raises(LDAEError, match="refines the decoder itself"):
        TrainingSession(recipe, tiny_cohort, w, progress=False, echo=messages.append).export_bundle(
            tmp_path / "refused", decoder_from=bundle)
    assert not (tmp_path / "refused").exists()
    assert ldae(["train", "ddpm", "--cohort", str(tiny_cohort), "--workdir", str(work), "--decoder-from", str(bundle)]) != 0


def test_decoder_stage_is_off_by_default_and_checks_its_settings(trained, tiny_cohort):
    from LDAELib.training import TrainingSession
    from LDAELib.training.config import DecoderStageConfig, Recipe

    assert not tiny_recipe().decoder.enabled and tiny_recipe().decoder.steps == 0
    assert Recipe.from_dict(tiny_recipe().to_dict()).decoder.steps == 0
    assert DecoderStageConfig(steps=5).enabled
    for bad in ({"augment": 1.5}, {"ssim_weight": -1.0}, {"edge_weight": -1.0}, {"lr": 0.0}):
        with pytest.raises(LDAEError):
            DecoderStageConfig(**bad)
    work, _ = trained
    messages = []
    assert TrainingSession(tiny_recipe(), tiny_cohort, work, progress=False, echo=messages.append).run("decoder") is None
    assert any(m.startswith("decoder: not refined") for m in messages)
    assert not (work / "decoder").exists()
    r = subprocess.run([sys.executable, "-m", "LDAELib.cli", "train", "bundle", "--cohort", str(tiny_cohort), "--workdir", str(work),
                        "--into-bundle", str(work / "bundle"), "-q"], capture_output=True, text=True, check=False)
    assert r.returncode != 0 and "goes with the decoder stage" in r.stderr and "Traceback" not in r.stderr


def test_adversarial_decoder_term_trains_a_discriminator_that_resumes_and_stays_out_of_the_bundle(trained, tiny_cohort, tmp_path):
    """``adversarial_weight > 0``: a patch discriminator trains from ``adversarial_start`` and its
    term enters the decoder's loss ``adversarial_warmup`` steps later (the logs say when); an
    interrupted run resumes to the same decoder, EMA, discriminator and discriminator optimizer as an
    uninterrupted one; a complete plain stage extended with the term (the demo model's path) resumes
    from its last checkpoint with a fresh discriminator; the bundle holds no discriminator."""
    from LDAELib.training import TrainingSession
    from LDAELib.training.checkpoint import final_checkpoint, list_checkpoints, load_checkpoint
    from LDAELib.training.config import DecoderStageConfig
    from LDAELib.training.trainer import AUXILIARY
    from LDAELib.weights import load_model

    work, bundle0 = trained
    adv = dict(batch_size=2, lr=1e-3, log_interval=1, checkpoint_interval=5, val_volumes=2,
               adversarial_weight=0.1, adversarial_start=4, adversarial_warmup=3, discriminator_lr=1e-3)
    runs = {}
    for name in ("straight", "resumed", "plain"):
        w = upstream_copy(work, tmp_path / name)
        recipe = tiny_recipe()
        recipe.decoder = DecoderStageConfig(steps=12, **(adv if name != "plain" else {**adv, "adversarial_weight": 0.0}))
        if name == "resumed":
            r = TrainingSession(recipe, tiny_cohort, w, progress=False, echo=lambda m: None).train_decoder(stop_at=8)
            assert r.interrupted and [n for n, _ in list_checkpoints(w / "decoder")] == [5]
        res = TrainingSession(recipe, tiny_cohort, w, progress=False, echo=lambda m: None).train_decoder()
        assert res.resumed_from == (5 if name == "resumed" else None)
        runs[name] = (w, load_checkpoint(final_checkpoint(w / "decoder")))
    (w, a), (_, b), (_, plain) = runs["straight"], runs["resumed"], runs["plain"]
    assert set(a.groups) == {"model", "ema", "discriminator"} and set(plain.groups) == {"model", "ema"}
    for group in ("model", "ema", "discriminator"):
        assert all(torch.equal(a.groups[group][k], b.groups[group][k]) for k in a.groups[group]), group
    sa, sb = a.optimizer[AUXILIARY]["state"], b.optimizer[AUXILIARY]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    # the term moved the decoder: same seed and data, without it the decoder ends elsewhere
    assert any(not torch.equal(a.groups["model"][k], plain.groups["model"][k]) for k in a.groups["model"] if ".decoder." in k)
    rows = [json.loads(l) for l in (w / "decoder" / "log.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in rows if r["split"] == "train"}
    assert all(train[s]["d_loss"] == 0 for s in range(1, 5)) and all(train[s]["d_loss"] > 0 for s in range(5, 13))
    assert all(train[s]["adv_g"] == 0 for s in range(1, 8)) and all(train[s]["adv_g"] != 0 for s in range(8, 13))
    assert not any("adv_g" in r or "d_loss" in r for r in rows if r["split"] == "ema")  # validation: reconstruction only

    # a complete plain stage (12 steps), extended to 16 with the term from step 12: resumes, fresh discriminator
    w = runs["plain"][0]
    recipe = tiny_recipe()
    recipe.decoder = DecoderStageConfig(steps=16, **{**adv, "adversarial_start": 12, "adversarial_warmup": 1})
    res = TrainingSession(recipe, tiny_cohort, w, progress=False, echo=lambda m: None).train_decoder()
    assert res.resumed_from == 12 and res.steps == 16
    ext = load_checkpoint(final_checkpoint(w / "decoder"))
    assert "discriminator" in ext.groups and AUXILIARY in ext.optimizer
    bundle = TrainingSession(recipe, tiny_cohort, w, progress=False, echo=lambda m: None).refine_bundle_decoder(bundle0, tmp_path / "b")
    m = load_model(bundle)  # loads strictly: the bundle's autoencoder has no discriminator keys
    assert not any("discriminator" in k for k in m.autoencoder.state_dict())
    assert all(torch.equal(v, ext.groups["ema"]["autoencoder." + k]) for k, v in m.autoencoder.state_dict().items() if k.startswith("decoder."))


def test_adversarial_decoder_settings_are_checked():
    from LDAELib.training.config import DecoderStageConfig

    assert not DecoderStageConfig(steps=5).adversarial and DecoderStageConfig(steps=5, adversarial_weight=0.01).adversarial
    for bad in ({"adversarial_weight": -0.1}, {"adversarial_start": -1}, {"adversarial_warmup": -1},
                {"discriminator_lr": 0.0}, {"discriminator_width": 12}):
        with pytest.raises(LDAEError, match=next(iter(bad)).split("_")[0]):
            DecoderStageConfig(steps=5, **bad)


def test_code_regression_spreads_the_codes_and_stays_out_of_the_bundle(trained, tiny_cohort, tmp_path):
    """The optional auxiliary head: its loss is logged and falls, codes spread more than without it,
    and the bundle holds only the encoder and the ShiftUNet (it loads strictly)."""
    from LDAELib.training import TrainingSession
    from LDAELib.weights import load_model

    work, _ = trained
    spread = {}
    for weight in (0.0, 1.0):
        w = upstream_copy(work, tmp_path / f"w{weight}")
        recipe = tiny_recipe()
        recipe.representation.code_regression_weight = weight
        session = TrainingSession(recipe, tiny_cohort, w, progress=False, echo=lambda m: None)
        session.train_representation()
        rows = [r for r in map(json.loads, (w / "representation" / "log.jsonl").read_text().splitlines()) if r["split"] == "train"]
        spread[weight] = np.mean([r["code_sd"] for r in rows[-2:]])
        if weight:
            reg = [r["code_regression"] for r in rows]
            assert reg[-1] < reg[0], reg
            bundle = session.run("all")
            load_model(bundle)  # strict: an extra head would be an unknown key
        else:
            assert all("code_regression" not in r for r in rows)
    assert spread[1.0] > spread[0.0], spread


def test_code_regression_settings_are_checked():
    from LDAELib.training.config import RepresentationStageConfig

    with pytest.raises(LDAEError, match="code_regression_grid"):
        RepresentationStageConfig(code_regression_grid=(4, 0, 4))
    with pytest.raises(LDAEError, match="code_regression_weight"):
        RepresentationStageConfig(code_regression_weight=-1.0)
    assert RepresentationStageConfig(code_regression_columns="ventricles_ml, age").code_regression_columns == ("ventricles_ml", "age")
    with pytest.raises(LDAEError, match="no target"):
        RepresentationStageConfig(code_regression_weight=0.1, code_regression_latent=False)
    with pytest.raises(LDAEError, match="column names"):
        RepresentationStageConfig(code_regression_columns=[3])


def test_code_regression_targets_combine_latent_and_columns():
    """The head's targets: pooled latent features, then the columns, each standardised over the rows
    it was fitted on; the loss is the mean error of each part, summed."""
    from LDAELib.training.representation import CodeRegression

    class FakeLatents:
        mu = torch.zeros(6, 2, 4, 4, 4)

        def scaled_means(self, rows):
            return torch.stack([torch.full((2, 4, 4, 4), float(r)) + torch.arange(2.0).view(2, 1, 1, 1) for r in rows])

    rows = [0, 1, 2, 3, 4, 5]
    values = torch.tensor([[30.0 + 2 * r, 1500.0 - 10 * r] for r in rows])
    head = CodeRegression.fitted(8, (2, 2, 2), FakeLatents(), rows, ("ventricles_ml", "whole_brain_ml"), values)
    assert head.n_latent == 2 * 8
    target = head.target(FakeLatents().scaled_means(rows), values)
    assert target.shape == (6, 18)
    assert torch.allclose(target.mean(0), torch.zeros(18), atol=1e-5)
    assert torch.allclose(target.std(0), torch.ones(18), atol=1e-5)
    # The zero-initialised head predicts 0: each part's error is its targets' mean square.
    y = torch.randn(6, 8)
    expected = target[:, :16].pow(2).mean() + target[:, 16:].pow(2).mean()
    assert torch.allclose(head(y, target), expected)
    only = CodeRegression.fitted(8, None, FakeLatents(), rows, ("ventricles_ml",), values[:, :1])
    assert only.n_latent == 0 and only.target(None, values[:, :1]).shape == (6, 1)
    with pytest.raises(LDAEError, match="do not vary"):
        CodeRegression.fitted(8, None, FakeLatents(), rows, ("age",), torch.ones(6, 1))


def _representation_objectives(recipe, cohort, work):
    """(the training session of ``work``, a function: representation stage settings → the stage's
    objective on that session's data, latents and EMA ε-branch)."""
    from LDAELib.training import TrainingSession
    from LDAELib.training.checkpoint import load_checkpoint
    from LDAELib.training.representation import RepresentationObjective
    from LDAELib.training.session import _strip

    session = TrainingSession(recipe, cohort, work, progress=False, echo=lambda m: None)
    lat = session.latents()
    unet = _strip(load_checkpoint(session._require("ddpm", "representation"), with_optimizer=False).groups["ema"], "unet.")
    return session, lambda config: RepresentationObjective(recipe.model, config, session.data, lat, unet, torch.device("cpu"), {})


def test_code_augment_changes_what_the_encoder_sees_not_the_target(trained, tiny_cohort):
    """code_augment: training batches give the encoder changed scans (the same change on every call
    for a step), the latent target and the validation batches stay as stored."""
    work, _ = trained
    recipe = tiny_recipe()
    recipe.representation.code_augment = 1.0
    session, objective = _representation_objectives(recipe, tiny_cohort, work)
    obj = objective(recipe.representation)
    rows = obj.items[:2]
    stored = session.data.volumes.batch(rows)
    a, b = obj._rows(rows, 3), obj._rows(rows, 3)
    assert torch.equal(a["x"], b["x"]) and not torch.allclose(a["x"], stored, atol=1e-3)
    assert torch.equal(a["z0"], b["z0"])
    assert torch.equal(obj._rows(rows, -1)["x"], stored)  # fixed (validation) batches
    recipe.representation.code_augment = 0.0
    c = objective(recipe.representation)._rows(rows, 3)
    assert torch.equal(c["x"], stored) and torch.equal(c["z0"], a["z0"])


def test_code_shift_moves_what_the_encoder_sees_by_whole_voxels(trained, tiny_cohort):
    """code_shift: each training item's scan reaches the encoder rolled by at most code_shift voxels
    per axis (the same roll on every call for a step; not all items unmoved), the latent target and
    the validation batches stay as stored; a shift that is not a small whole number is refused."""
    import dataclasses

    from LDAELib.training.config import RepresentationStageConfig

    work, _ = trained
    recipe = tiny_recipe()
    recipe.representation.code_augment, recipe.representation.code_shift = 0.0, 2
    session, objective = _representation_objectives(recipe, tiny_cohort, work)
    obj, plain = objective(recipe.representation), objective(dataclasses.replace(recipe.representation, code_shift=0))
    rows = obj.items[:4]
    stored = session.data.volumes.batch(rows)
    moved = 0
    for step in (3, 4):
        a, b = obj._rows(rows, step), obj._rows(rows, step)
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["z0"], plain._rows(rows, step)["z0"])
        assert torch.equal(plain._rows(rows, step)["x"], stored)
        for i in range(len(rows)):
            rolls = [(dx, dy, dz) for dx in range(-2, 3) for dy in range(-2, 3) for dz in range(-2, 3)
                     if torch.equal(a["x"][i, 0], torch.roll(stored[i, 0], (dx, dy, dz), dims=(0, 1, 2)))]
            assert rolls, "an item is not a whole-voxel roll of its stored scan within ±2"
            moved += rolls[0] != (0, 0, 0)
    assert moved > 0
    assert torch.equal(obj._rows(rows, -1)["x"], stored)
    for bad in (9, 1.5, -1):
        with pytest.raises(LDAEError, match="code_shift"):
            RepresentationStageConfig(code_shift=bad)


def test_code_regression_on_cohort_columns_runs_and_names_a_missing_column(trained, tiny_cohort, tmp_path):
    """A stage with column targets trains and logs the head's loss; a column the table lacks stops
    the stage before any step, with one message naming it."""
    from LDAELib.training import TrainingSession

    work, _ = trained

    recipe = tiny_recipe()
    recipe.representation.code_regression_weight = 1.0
    recipe.representation.code_regression_columns = ("ventricle_scale", "age")
    w = upstream_copy(work, tmp_path / "columns")
    TrainingSession(recipe, tiny_cohort, w, progress=False, echo=lambda m: None).train_representation()
    reg = [r["code_regression"] for r in map(json.loads, (w / "representation" / "log.jsonl").read_text().splitlines()) if r["split"] == "train"]
    # Two parts (latent and columns), each about 1 while the zero-initialised head learns.
    assert all(np.isfinite(reg)) and 1.0 < reg[0] < 4.0, reg

    recipe.representation.code_regression_columns = ("ventricles_ml",)
    missing = upstream_copy(work, tmp_path / "missing")
    with pytest.raises(LDAEError, match="ventricles_ml"):
        TrainingSession(recipe, tiny_cohort, missing, progress=False, echo=lambda m: None).train_representation()
    assert not (missing / "representation" / "log.jsonl").exists()
    # … and a run from scratch stops as soon as it reads the cohort, before the autoencoder stage.
    fresh = tmp_path / "fresh"
    with pytest.raises(LDAEError, match="ldae cohort --labels"):
        TrainingSession(recipe, tiny_cohort, fresh, progress=False, echo=lambda m: None).run("all")
    assert not (fresh / "autoencoder").exists()


# ------------------------------------------------------------------------------------ checkpoints
class _Payload:
    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def __reduce__(self):
        return (Path.touch, (self.flag,))


def _rehash(ckpt: Path) -> None:
    from LDAELib.weights.common import sha256_file

    st = json.loads((ckpt / "state.json").read_text())
    for f in st["files"]:
        st["files"][f] = {"sha256": sha256_file(ckpt / f), "bytes": (ckpt / f).stat().st_size}
    (ckpt / "state.json").write_text(json.dumps(st))


def test_checkpoints_with_pickled_code_are_refused(tmp_path):
    from LDAELib.training.checkpoint import load_checkpoint, save_checkpoint

    p = save_checkpoint(tmp_path, 3, {"model": {"w": torch.ones(2)}}, {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}, {})
    assert load_checkpoint(p).optimizer["param_groups"][0]["lr"] == 0.1
    flag = tmp_path / "code-ran"
    torch.save({"state": {}, "param_groups": [], "evil": _Payload(flag)}, p / "optimizer.pt")
    _rehash(p)
    with pytest.raises(LDAEError, match="refused"):
        load_checkpoint(p)
    assert not flag.exists()


def test_modified_checkpoint_is_refused(tmp_path):
    from LDAELib.training.checkpoint import load_checkpoint, save_checkpoint

    p = save_checkpoint(tmp_path, 1, {"model": {"w": torch.ones(4)}}, None, {})
    with open(p / "weights.safetensors", "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\x00\x00\x80\x7f")
    with pytest.raises(LDAEError, match="SHA-256"):
        load_checkpoint(p)


def test_a_failed_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    from LDAELib.training import checkpoint as ck

    good = ck.save_checkpoint(tmp_path, 10, {"model": {"w": torch.ones(2)}}, {"state": {}, "param_groups": []}, {})

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ck.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(tmp_path, 20, {"model": {"w": torch.zeros(2)}}, {"state": {}, "param_groups": []}, {})
    assert ck.latest_checkpoint(tmp_path) == good
    assert torch.equal(ck.load_checkpoint(good).groups["model"]["w"], torch.ones(2))
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


# ----------------------------------------------------------------------------------------- probes
def test_probes_point_the_right_way_on_synthetic_codes():
    """Codes with a disease axis and an age axis: +alpha goes towards atrophy and towards older."""
    from LDAELib.training.config import ProbeConfig
    from LDAELib.training.data import CohortRow
    from LDAELib.training.probes import auc, fit_directions, predicted_age, probe_metrics

    g = torch.Generator().manual_seed(0)
    n, e = 80, 16
    disease = torch.arange(n) % 2
    age = 55 + 30 * torch.rand(n, generator=g)
    codes = 0.3 * torch.randn(n, e, generator=g)
    codes[:, 0] += 2.0 * disease
    codes[:, 1] += (age - 70) / 10
    rows = [CohortRow(f"s{i}", Path("x"), {"group": "disease" if int(disease[i]) else "healthy", "age": str(float(age[i]))}) for i in range(n)]
    dirs = fit_directions(codes, rows, ProbeConfig())
    d, a = dirs["disease"], dirs["age"]
    assert auc(d.score(codes).numpy(), disease.numpy().astype(bool)) > 0.95
    assert d.score(d.apply(codes, 1.0)).mean() > d.score(codes).mean()
    assert d.weight[0] > 0 and abs(float(d.weight[0])) > abs(float(d.weight[1]))
    change = predicted_age(a, a.apply(codes, 1.0)) - predicted_age(a, codes)
    years = a.meta["years_per_alpha"]
    assert years > 0 and torch.allclose(change, torch.full_like(change, years), rtol=1e-4)
    assert a.alpha_unit == f"{years:.1f} years" and "1 alpha ≈" in a.describe()
    assert probe_metrics(dirs, codes, rows, ProbeConfig())["age_mae_years"] < 5


def test_cohort_calibration_makes_a_unit_of_alpha_what_the_training_codes_show():
    """calibration 'cohort': +1 disease alpha moves a healthy code to the disease group's mean position,
    +1 age alpha to where visits years_per_alpha older lie. The probe's own reading differs: its
    predicted ages spread less than the true ones (regression to the mean), so it asks for a larger
    move than the codes of older visits actually make."""
    from LDAELib.training.config import ProbeConfig
    from LDAELib.training.data import CohortRow
    from LDAELib.training.probes import fit_directions, position

    with pytest.raises(LDAEError, match="calibration"):
        ProbeConfig(calibration="logit")
    with pytest.raises(LDAEError, match="years_per_alpha"):
        ProbeConfig(calibration="cohort")
    g = torch.Generator().manual_seed(1)
    n, e = 120, 24
    disease = torch.arange(n) % 2
    age = 55 + 30 * torch.rand(n, generator=g)
    codes = torch.randn(n, e, generator=g)
    codes[:, 0] += 1.5 * disease
    codes[:, 1] += 0.8 * (age - 70) / 10
    codes[:, 2:6] *= 1e-3  # nearly constant dimensions: a free gain for an overfitted probe
    rows = [CohortRow(f"s{i}", Path("x"), {"group": "disease" if int(disease[i]) else "healthy", "age": str(float(age[i]))}) for i in range(n)]
    dirs = fit_directions(codes, rows, ProbeConfig(calibration="cohort", years_per_alpha=5.0, l2=1e-4))
    d, a = dirs["disease"], dirs["age"]
    healthy, sick = disease == 0, disease == 1
    moved = position(d, d.apply(codes[healthy], 1.0)).mean()
    assert float(moved) == pytest.approx(float(position(d, codes[sick]).mean()), abs=1e-4)
    assert d.alpha_unit and "group" in d.alpha_unit and a.alpha_unit == "5.0 years"
    pa = position(a, codes)
    slope = float(torch.cov(torch.stack([pa, age.double()]))[0, 1] / age.double().var())
    step = position(a, a.apply(codes, 1.0)) - pa
    assert torch.allclose(step, torch.full_like(step, 5.0 * slope), rtol=1e-4)
    probe = fit_directions(codes, rows, ProbeConfig(years_per_alpha=5.0, l2=1e-4))["age"]
    assert a.scale < probe.scale


def test_cross_validated_probe_metrics_hold_out_whole_subjects():
    """Codes that carry the group and the age score well across subject folds; codes that carry only
    each subject's identity (labels drawn per subject, no shared signal) score near chance, although
    a probe fitted on all of them would separate its own training visits."""
    from LDAELib.training.config import ProbeConfig
    from LDAELib.training.data import CohortRow
    from LDAELib.training.probes import cross_validated_metrics, fit_directions, probe_metrics

    g = torch.Generator().manual_seed(3)
    n_sub, visits, e = 60, 3, 32
    sick = torch.arange(n_sub) % 2
    age0 = 60 + 25 * torch.rand(n_sub, generator=g)
    identity = torch.randn(n_sub, e, generator=g)
    rows, signal, noise = [], [], []
    for s in range(n_sub):
        for v in range(visits):
            age = float(age0[s]) + v
            rows.append(CohortRow(f"sub-{s:03d}", Path("x"), {"group": "disease" if int(sick[s]) else "healthy", "age": str(age)}))
            c = identity[s] + 0.1 * torch.randn(e, generator=g)
            noise.append(c.clone())
            c[0] += 3 * float(sick[s])
            c[1] += (age - 72) / 2.5
            signal.append(c)
    cfg = ProbeConfig(l2=1e-3)
    good = cross_validated_metrics(torch.stack(signal), rows, cfg)
    assert good["subjects"] == n_sub and len(good["disease_auc_folds"]) == 5
    assert good["disease_auc"] > 0.8 and good["age_mae_years"] < 5
    bad = cross_validated_metrics(torch.stack(noise), rows, cfg)
    assert abs(bad["disease_auc"] - 0.5) < 0.2 and bad["age_mae_years"] > 8
    seen = probe_metrics(fit_directions(torch.stack(noise), rows, cfg), torch.stack(noise), rows, cfg)
    assert seen["disease_auc"] > bad["disease_auc"] + 0.15  # what scoring on the training visits would claim


def test_longitudinal_age_axis_follows_the_subjects_not_the_spread_between_them():
    """age_axis 'longitudinal': the age direction moves a code as its own subject's code moves with
    age (here along dimension 1), although across subjects an unrelated dimension (2) tracks age
    and a probe follows that one; one unit = years_per_alpha years of the within-subject change; the
    group setting takes the axis from one group; cross-validated metrics use the same fit."""
    from LDAELib.training.config import ProbeConfig
    from LDAELib.training.data import CohortRow
    from LDAELib.training.probes import cross_validated_metrics, fit_directions

    with pytest.raises(LDAEError, match="years_per_alpha"):
        ProbeConfig(age_axis="longitudinal")
    with pytest.raises(LDAEError, match="age_axis"):
        ProbeConfig(age_axis="cross")
    g = torch.Generator().manual_seed(4)
    n_sub, e = 40, 16
    rows, codes = [], []
    for s in range(n_sub):
        start, base = 55 + 30 * float(torch.rand(1, generator=g)), torch.randn(e, generator=g)
        for v in range(3):
            age = start + 2 * v
            c = base + 0.05 * torch.randn(e, generator=g)
            c[1] += 0.2 * age  # within-subject ageing
            c[2] += 0.3 * (start - 70)  # who is old, not how a subject ages
            c[0] += 2.0 * (s % 2)
            codes.append(c)
            rows.append(CohortRow(f"s{s}", Path("x"), {"group": "disease" if s % 2 else "healthy", "age": str(age)}))
    codes = torch.stack(codes)
    cfg = ProbeConfig(age_axis="longitudinal", years_per_alpha=5.0, calibration="cohort")
    a = fit_directions(codes, rows, cfg)["age"]
    step = (a.apply(codes, 1.0) - codes)[0]
    assert float(step[1]) == pytest.approx(5 * 0.2, rel=0.05) and float(step[1]) > 10 * abs(float(step[2]))
    assert a.alpha_unit == "5.0 years of within-subject ageing" and a.meta["years_per_alpha"] == 5.0
    assert a.meta["calibration"].startswith("longitudinal")  # whatever probes.calibration says
    probe = fit_directions(codes, rows, ProbeConfig(years_per_alpha=5.0))["age"]
    assert abs(float(probe.weight[2])) > abs(float(probe.weight[1]))  # the probe reads the spread between subjects
    healthy = fit_directions(codes, rows, ProbeConfig(age_axis="longitudinal", years_per_alpha=5.0, age_axis_group="healthy"))["age"]
    assert healthy.meta["axis_subjects"] == n_sub // 2
    with pytest.raises(LDAEError, match="age_axis_group"):
        fit_directions(codes, rows, ProbeConfig(age_axis="longitudinal", years_per_alpha=5.0, age_axis_group="nobody"))
    assert cross_validated_metrics(codes, rows, cfg)["age_mae_years"] < 8


def test_probes_are_fitted_again_when_their_settings_change(trained, tiny_cohort, tmp_path):
    """Changing a probe setting (here years_per_alpha) in a finished work folder refits the probes
    instead of keeping the old ones; unchanged settings keep them."""
    from LDAELib.training import TrainingSession
    from LDAELib.weights import load_model

    work, _ = trained
    w = tmp_path / "run"
    shutil.copytree(work, w, ignore=shutil.ignore_patterns("bundle"))
    before = json.loads((w / "probes" / "probes.json").read_text())
    recipe = tiny_recipe()
    recipe.probes.years_per_alpha = 8.0
    said = []
    record = TrainingSession(recipe, tiny_cohort, w, progress=False, echo=said.append).fit_probes()
    assert record["directions"]["age"]["alpha_unit"] == "8.0 years" != before["directions"]["age"]["alpha_unit"]
    assert record["settings"]["years_per_alpha"] == 8.0 and not any("kept" in m for m in said)
    session = TrainingSession(recipe, tiny_cohort, w, progress=False, echo=said.append)
    session.fit_probes()
    assert said[-1] == "probes: already fitted, kept"
    with pytest.raises(LDAEError, match="another bundle"):  # the old bundle holds the old directions
        session.export_bundle(work / "bundle")
    bundle = session.export_bundle(w / "bundle")
    assert load_model(bundle).directions["age"].alpha_unit == "8.0 years"


def test_a_recipe_with_code_guidance_ships_the_training_codes_mean_as_reference(trained, tiny_cohort, tmp_path):
    """code_guidance is an inference setting: the same work folder serves it, the probes keep the
    training codes' mean, and the bundle carries both; probes from before are fitted again."""
    from safetensors.torch import load_file, save_file

    from LDAELib.training import TrainingSession
    from LDAELib.training.recipe_file import apply_overrides
    from LDAELib.weights import load_model

    work, _ = trained
    w = tmp_path / "run"
    shutil.copytree(work, w, ignore=shutil.ignore_patterns("bundle"))
    recipe = apply_overrides(tiny_recipe(), ["model.code_guidance=4"])
    assert recipe.model.code_guidance == 4.0
    said = []
    session = TrainingSession(recipe, tiny_cohort, w, progress=False, echo=said.append)
    session.fit_probes()
    assert said[-1] == "probes: already fitted, kept"
    mean = load_file(str(w / "probes" / "directions.safetensors"))["_reference_code"]
    model = load_model(session.export_bundle(w / "bundle"))
    assert model.config.code_guidance == 4.0 and torch.equal(model.reference_code, mean) and mean.abs().sum() > 0
    # probes written before the reference code existed are fitted again, not kept
    tensors = load_file(str(w / "probes" / "directions.safetensors"))
    del tensors["_reference_code"]
    save_file(tensors, str(w / "probes" / "directions.safetensors"))
    said.clear()
    TrainingSession(recipe, tiny_cohort, w, progress=False, echo=said.append).fit_probes()
    assert not any("kept" in m for m in said)
    assert torch.equal(load_file(str(w / "probes" / "directions.safetensors"))["_reference_code"], mean)
    with pytest.raises(LDAEError, match="code_guidance"):
        apply_overrides(tiny_recipe(), ["model.code_guidance=-1"])
    # mean-free guidance is an inference setting too: the same work folder and probes serve it
    mf = apply_overrides(tiny_recipe(), ["model.code_guidance=4", "model.code_guidance_mean_free=true"])
    said.clear()
    session = TrainingSession(mf, tiny_cohort, w, progress=False, echo=said.append)
    session.fit_probes()
    assert said[-1] == "probes: already fitted, kept"
    shutil.rmtree(w / "bundle")
    model = load_model(session.export_bundle(w / "bundle"))
    assert model.config.code_guidance_mean_free and model.config.code_guidance == 4.0
    with pytest.raises(LDAEError, match="needs code guidance"):
        apply_overrides(tiny_recipe(), ["model.code_guidance_mean_free=true"])


# --------------------------------------------------------------------------------- command line
def test_dry_run_prints_the_plan_with_measured_times(tiny_cohort, tmp_path, capsys):
    from LDAELib.training.__main__ import main
    from LDAELib.training.recipe_file import save_recipe

    save_recipe(tiny_recipe(), tmp_path / "tiny.yaml")
    assert main(["--dry-run", "--cohort", str(tiny_cohort), "--config", str(tmp_path / "tiny.yaml"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for word in ("autoencoder", "ddpm", "representation", "probes", "total", "train 4 subjects / 12 visits"):
        assert word in out
    assert not (tmp_path / "split.json").exists()
    # a decoder stage with the adversarial term from step 4 of 10: its 6 adversarial steps are a row of their own
    assert main(["--dry-run", "--cohort", str(tiny_cohort), "--config", str(tmp_path / "tiny.yaml"), "--device", "cpu",
                 "--set", "decoder.steps=10", "--set", "decoder.adversarial_weight=0.01", "--set", "decoder.adversarial_start=4"]) == 0
    rows = {ln.split()[0]: ln.split() for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith(("decoder", "+adversarial"))}
    assert rows["decoder"][1] == "4" and rows["+adversarial"][1] == "6", rows
    assert main(["--write-recipe", str(tmp_path / "copy.json"), "--cohort", "x", "--config", str(tmp_path / "tiny.yaml"), "--set", "ddpm.steps=3"]) == 0
    assert json.loads((tmp_path / "copy.json").read_text())["ddpm"]["steps"] == 3
    # without --config, a work folder's own recipe (with the --set it was started with) is the one in use
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(tmp_path / "copy.json", work / "recipe.json")
    assert main(["--write-recipe", str(tmp_path / "again.json"), "--cohort", "x", "--workdir", str(work), "--set", "probes.years_per_alpha=8"]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["ddpm"]["steps"] == 3 and again["probes"]["years_per_alpha"] == 8
    assert again["model"] == json.loads((tmp_path / "copy.json").read_text())["model"]


# ------------------------------------------------------------------------------- data parallel
_RANK_SCRIPT = textwrap.dedent("""
    import sys, torch
    from safetensors.torch import save_file
    from LDAELib.training import TrainingSession, load_recipe
    from LDAELib.training.distributed import setup, teardown
    torch.set_num_threads(1)
    recipe_path, cohort, work, out = sys.argv[1:5]
    ctx = setup("cpu")
    res = TrainingSession(load_recipe(recipe_path), cohort, work, ctx, progress=False).train_autoencoder()
    save_file({k: v.contiguous() for k, v in res.model.state_dict().items()}, f"{out}/rank{ctx.rank}.safetensors")
    teardown(ctx)
""")


def test_two_process_ddp_matches_one_process_of_the_same_global_batch(tiny_cohort, tmp_path):
    """torchrun with 2 CPU processes (gloo): replicas stay identical, equal a 1-process run, rank 0 checkpoints."""
    from safetensors.torch import load_file

    from LDAELib.training import TrainingSession
    from LDAELib.training.checkpoint import final_checkpoint, load_checkpoint
    from LDAELib.training.recipe_file import save_recipe

    recipe = tiny_recipe(steps=4, batch_size=4, checkpoint_interval=2)
    save_recipe(recipe, tmp_path / "recipe.json")
    (tmp_path / "rank.py").write_text(_RANK_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(tmp_path / "rank.py"), str(tmp_path / "recipe.json"), str(tiny_cohort), str(tmp_path / "ddp"), str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    ck = load_checkpoint(final_checkpoint(tmp_path / "ddp" / "autoencoder"))
    assert ck.state["world_size"] == 2 and ck.step == 4
    assert all(torch.equal(ck.groups["model"][k], r0[k]) for k in r0)

    torch.set_num_threads(1)
    try:
        single = TrainingSession(recipe, tiny_cohort, tmp_path / "one", progress=False, echo=lambda m: None).train_autoencoder()
    finally:
        torch.set_num_threads(2)
    one = single.model.state_dict()
    worst = max(float((one[k] - r0[k]).abs().max()) for k in r0)
    assert worst < 1e-4, worst


# ------------------------------------------------------------------ augmentation, SSIM term, latent shift
def test_augmentation_keeps_the_background_and_the_range_and_is_seeded():
    from LDAELib.testing import phantom_brain
    from LDAELib.training.augment import augment_volume

    data, _ = phantom_brain((32, 40, 32), 6.0, seed=1)
    x = torch.from_numpy(data / data.max()).float()
    outs = [augment_volume(x, torch.Generator().manual_seed(s)) for s in (5, 5, 6)]
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    for y in outs:
        assert y.shape == x.shape and float(y.min()) >= 0.0 and float(y.max()) == pytest.approx(1.0)
        assert torch.all(y[x == 0] == 0)  # brain-extracted background stays exactly 0
        assert not torch.allclose(y, x, atol=1e-3)


def test_differentiable_ssim_equals_the_evaluation_ssim_away_from_the_edges():
    from LDAELib.evaluation.similarity import ssim
    from LDAELib.training.autoencoder import ssim_3d

    g = torch.Generator().manual_seed(0)
    a = torch.rand((1, 1, 24, 28, 24), generator=g)
    b = (a + 0.2 * torch.randn(a.shape, generator=g)).clamp(0, 1).requires_grad_(True)
    s = ssim_3d(b, a)
    assert float(s.detach()) == pytest.approx(ssim(b.detach(), a, data_range=1.0), abs=1e-5)
    s.backward()
    assert b.grad is not None and torch.isfinite(b.grad).all() and float(b.grad.abs().sum()) > 0


def test_autoencoder_settings_for_ssim_and_augmentation_are_checked():
    from LDAELib.training.config import AutoencoderStageConfig

    with pytest.raises(LDAEError, match="augment"):
        AutoencoderStageConfig(augment=1.5)
    with pytest.raises(LDAEError, match="ssim_weight"):
        AutoencoderStageConfig(ssim_weight=-1)
    with pytest.raises(LDAEError, match="edge_weight"):
        AutoencoderStageConfig(edge_weight=-0.1)


def test_edge_term_is_zero_on_the_target_and_penalises_a_blur_more_than_l1_does():
    """``edge_weight``: mean |∇rec − ∇x| is 0 for rec = x, grows when rec is a softened x, and gives
    the decoder a gradient; the loss logs it as ``edge``."""
    from scipy import ndimage as ndi

    from LDAELib.training.autoencoder import edge_difference, reconstruction_loss

    g = torch.Generator().manual_seed(1)
    x = (torch.rand((1, 1, 20, 24, 20), generator=g) > 0.5).float()
    x = torch.from_numpy(ndi.gaussian_filter(x.numpy(), 0.7)).float()
    soft = torch.from_numpy(ndi.gaussian_filter(x.numpy(), 1.0)).float()
    assert float(edge_difference(x, x)) == 0.0
    assert float(edge_difference(soft, x)) > 0.01
    rec = soft.clone().requires_grad_(True)
    loss0, parts0 = reconstruction_loss(rec, x, 0.0)
    loss1, parts1 = reconstruction_loss(rec, x, 0.0, edge_weight=2.0)
    assert "edge" not in parts0 and float(parts1["edge"]) == pytest.approx(float(edge_difference(soft, x)))
    assert float(loss1.detach()) == pytest.approx(float(loss0.detach()) + 2.0 * float(parts1["edge"]), rel=1e-6)
    loss1.backward()
    assert rec.grad is not None and torch.isfinite(rec.grad).all() and float(rec.grad.abs().sum()) > 0


def test_latent_shift_is_learned_shipped_and_undone_by_the_pipeline(tiny_cohort, tmp_path):
    """With ``model.latent_shift`` the diffusion trains on (μ − mean μ)·scale, the bundle carries the
    mean, and the pipeline's scale/unscale are exact inverses that reproduce the training latents."""
    from LDAELib.pipeline import LDAEPipeline
    from LDAELib.training import TrainingSession
    from LDAELib.training.autoencoder import Latents
    from LDAELib.weights import load_model

    recipe = tiny_recipe(steps=6)
    recipe.model.latent_shift = True
    recipe.autoencoder.ssim_weight, recipe.autoencoder.augment = 0.5, 1.0
    bundle = TrainingSession(recipe, tiny_cohort, tmp_path, progress=False, echo=lambda s: None).run("all")
    lat = Latents.load(tmp_path / "latents")
    n_train = lat.meta["n_train"]
    assert lat.meta["latent_shift"] and torch.allclose(lat.shift, lat.mu[:n_train].mean(0))
    z0 = lat.scaled_means(lat.rows[:n_train])
    assert abs(float(z0.mean())) < 0.05  # centred: the shift took the mean out
    model = load_model(bundle)
    assert model.config.latent_shift and torch.equal(model.latent_shift, lat.shift)
    assert torch.allclose(model.scale_latent(lat.mu[:2]), lat.to_z0(lat.mu[:2]))
    assert torch.allclose(model.unscale_latent(model.scale_latent(lat.mu[:2])), lat.mu[:2], atol=1e-5)
    pipe = LDAEPipeline(model)
    x = torch.from_numpy(TrainingSession(recipe, tiny_cohort, tmp_path, progress=False, echo=lambda s: None).data.volumes[lat.rows[0]])
    enc = pipe.encode(x, steps=None)
    assert torch.allclose(enc.z0[0], lat.to_z0(lat.mu[0]), atol=1e-4)
    (bundle / "latent_shift.safetensors").unlink()
    with pytest.raises(LDAEError, match="latent_shift"):
        load_model(bundle)


def test_latent_batches_draw_the_mean_or_a_sample_and_the_demo_recipe_uses_the_mean():
    """``latent: mean`` gives the diffusion stages (μ − shift)·scale, the z0 the pipeline encodes;
    ``sample`` adds σ·ε. The demo recipe trains both diffusion stages on the mean (docs/training.md)."""
    from LDAELib.training.autoencoder import Latents
    from LDAELib.training.config import DEMO_RECIPE
    from LDAELib.training.recipe_file import load_recipe
    from LDAELib.training.ddpm import LatentBatches

    g = torch.Generator().manual_seed(0)
    mu, sigma = torch.randn(3, 2, 4, 5, 4, generator=g), torch.full((3, 2, 4, 5, 4), 0.5)
    lat = Latents([10, 11, 12], mu, sigma, 2.0, {}, mu.mean(0))
    mean = LatentBatches(lat, 1000, "mean", 0, 2, torch.device("cpu"))([11, 12], step=3)
    sample = LatentBatches(lat, 1000, "sample", 0, 2, torch.device("cpu"))([11, 12], step=3)
    assert torch.equal(mean["z0"], lat.scaled_means([11, 12]))
    assert torch.equal(mean["noise"], sample["noise"]) and torch.equal(mean["t"], sample["t"])
    spread = (sample["z0"] - mean["z0"]) / 2.0  # σ·ε, unscaled
    assert 0.4 < float(spread.std()) < 0.6
    recipe = load_recipe(DEMO_RECIPE)
    assert recipe.ddpm.latent == "mean" and recipe.representation.latent == "mean"


def test_shift_blocks_can_start_as_copies_of_the_eps_branch():
    """shift_init=eps_branch: the gradient estimator's blocks start as the ε-branch's, blind to the
    code, and g starts at zero; the default keeps the zero (guided-diffusion) start."""
    from LDAELib.nets.unet import ShiftUNet
    from LDAELib.training.config import RepresentationStageConfig
    from LDAELib.training.representation import copy_eps_branch_into_shift_blocks

    with pytest.raises(LDAEError, match="shift_init"):
        RepresentationStageConfig(shift_init="random")
    assert RepresentationStageConfig().shift_init == "zero"
    torch.manual_seed(0)
    net = ShiftUNet(tiny_recipe().model.unet).eval()
    copy_eps_branch_into_shift_blocks(net)
    assert int(torch.count_nonzero(net.shift_out[-1].weight)) > 0  # not touched: the objective zeroes it
    net.shift_out.load_state_dict(net.out.state_dict())  # with the ε-branch's head, g is ε exactly …
    x, t = torch.randn(2, 3, 8, 10, 8), torch.tensor([10, 900])
    with torch.no_grad():
        eps, g = net(x, t, torch.randn(2, 16))
        _, g_other = net(x, t, torch.randn(2, 16) * 5)
    assert torch.equal(eps, g) and torch.equal(g, g_other)  # … and the code changes nothing yet
    state = net.state_dict()
    for k, v in state.items():
        if k.startswith("shift_output_blocks.") and "emb_z_layers" not in k:
            assert torch.equal(v, state[k.replace("shift_output_blocks.", "output_blocks.", 1)]), k


def test_coarse_loss_counts_white_errors_once_and_smooth_errors_pool_cubed_times():
    """coarse_loss_weight: the pooled ε-error, times the voxels pooled, is about the plain error for
    white noise and pool³ times it for an error constant over each pooled block."""
    from LDAELib.training.config import RepresentationStageConfig
    from LDAELib.training.representation import RepresentationLoss

    for bad in (dict(coarse_loss_weight=-1.0), dict(coarse_loss_pool=0), dict(coarse_loss_pool=2.5)):
        with pytest.raises(LDAEError, match="coarse_loss"):
            RepresentationStageConfig(**bad)

    class Fixed(torch.nn.Module):  # stands in for the encoder and the ShiftUNet: ε is given, g = 0
        def __init__(self, eps):
            super().__init__()
            self.eps = eps

        def forward(self, zt, t, y):
            return self.eps, torch.zeros_like(self.eps)

    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(4, 3, 8, 8, 8, generator=gen)
    white = noise + 0.3 * torch.randn(noise.shape, generator=gen)
    smooth = noise + 0.3 * torch.randn(4, 3, 2, 2, 2, generator=gen).repeat_interleave(4, 2).repeat_interleave(4, 3).repeat_interleave(4, 4)
    encoder = lambda x: torch.zeros(x.shape[0], 16)  # noqa: E731
    x, z0, t = torch.zeros(4, 1, 16, 16, 16), torch.zeros_like(noise), torch.full((4,), 500)
    for eps, ratio in ((white, 1.0), (smooth, 64.0)):
        loss = RepresentationLoss(encoder, Fixed(eps), 1000, 0.1, "axial", coarse_loss_weight=1.0, coarse_loss_pool=4)
        loss.encoder = encoder
        _, parts = loss(x, z0, t, noise)
        assert float(parts["coarse_mse"]) / float(parts["mse"]) == pytest.approx(ratio, rel=0.35)


def test_paired_items_take_coarse_anatomy_from_the_code_and_detail_from_z_t():
    """pair_probability: z_t is built from the partner scan A, the target's x̂0 keeps A's fine detail
    and takes the item's own (B's) coarse anatomy; a pair of one scan is the plain objective."""
    from LDAELib.training.config import RepresentationStageConfig
    from LDAELib.training.representation import RepresentationLoss, coarse_part, pair_candidates

    for bad in (dict(pair_probability=1.5), dict(pair_with="template"), dict(pair_pool=0), dict(pair_min_t=-1)):
        with pytest.raises(LDAEError, match="pair_"):
            RepresentationStageConfig(**bad)

    class Denoiser(torch.nn.Module):  # ε that makes x̂0 exactly the given x0 (g = 0)
        def __init__(self, x0):
            super().__init__()
            self.x0 = x0

        def forward(self, zt, t, y):
            ab = self.ab[t].view(-1, 1, 1, 1, 1)
            return (zt - ab.sqrt() * self.x0) / (1 - ab).sqrt(), torch.zeros_like(zt)

    gen = torch.Generator().manual_seed(0)
    b = torch.randn(2, 3, 8, 8, 8, generator=gen)
    offset = torch.tensor([0.7, -0.4]).view(2, 1, 1, 1, 1)
    detail = 0.5 * torch.randn(b.shape, generator=gen)
    a = b + offset + detail
    noise, t = torch.randn(b.shape, generator=gen), torch.tensor([300, 700])
    x = torch.zeros(2, 1, 16, 16, 16)

    def mse(x0, **kw):
        net = Denoiser(x0)
        loss = RepresentationLoss(lambda v: torch.zeros(v.shape[0], 16), net, 1000, 0.1, "axial", pair_pool=2)
        net.ab, loss.encoder = loss.alphas_cumprod, (lambda v: torch.zeros(v.shape[0], 16))
        return float(loss(x, b, t, noise, **kw)[1]["mse"])

    assert mse(b) < 1e-9 and mse(b, z0_pair=b.clone()) < 1e-9  # plain objective: x̂0 = the scan
    kept = a - coarse_part(a - b, 2)  # A's detail (minus its block means), B's coarse level
    assert mse(kept, z0_pair=a) < 1e-9
    assert mse(b, z0_pair=a) > 0.01 and mse(a, z0_pair=a) > 0.01  # neither copying B nor keeping A
    # the offset between the scans is coarse and goes entirely to B's level:
    assert torch.allclose(coarse_part(offset.expand_as(b).clone(), 2), offset.expand_as(b), atol=1e-6)

    class Row:
        def __init__(self, subject):
            self.subject = subject

    rows = [Row("s1"), Row("s1"), Row("s2"), Row("s1"), Row("s3")]
    assert pair_candidates(rows, [0, 1, 2, 3, 4], "subject") == {0: [1, 3], 1: [0, 3], 2: [], 3: [0, 1], 4: []}
    assert pair_candidates(rows, [0, 2, 4], "any") == {0: [2, 4], 2: [0, 4], 4: [0, 2]}


def test_paired_training_builds_z_t_from_another_visit_of_the_same_subject(trained, tiny_cohort, tmp_path):
    """pair_probability = 1 in a real (tiny) run: every item's z_t comes from another visit of its
    subject, so the frozen ε-branch alone misses the paired target by more than the plain one; the
    partner draw is seeded and stays within the subject."""
    from LDAELib.training import TrainingSession
    from LDAELib.training.data import read_cohort
    from LDAELib.training.representation import RepresentationObjective

    work, _ = trained
    logs = {}
    for p in (0.0, 1.0):
        w = upstream_copy(work, tmp_path / f"p{p}")
        recipe = tiny_recipe()
        recipe.representation.pair_probability = p
        session = TrainingSession(recipe, tiny_cohort, w, progress=False, echo=lambda m: None)
        session.train_representation()
        logs[p] = [json.loads(r) for r in (w / "representation" / "log.jsonl").read_text().splitlines()]
    train = {p: np.mean([r["mse_eps_only"] for r in rows if r["split"] == "train"]) for p, rows in logs.items()}
    assert train[1.0] > 1.05 * train[0.0], train

    obj = object.__new__(RepresentationObjective)  # the partner draw alone: seeded, same subject
    obj.config = tiny_recipe().representation
    obj.config.pair_probability = 1.0
    rows = read_cohort(tiny_cohort)
    items = list(range(len(rows)))
    from LDAELib.training.representation import pair_candidates
    obj.partners = pair_candidates(rows, items, "subject")
    for r in items:
        a = obj._partner(r, 3)
        assert a == obj._partner(r, 3)
        assert (a != r) == bool(obj.partners[r]) and rows[a].subject == rows[r].subject


def test_brain_histogram_matching_removes_contrast_and_keeps_the_background():
    """matching.py: a scan and a copy of it in another contrast (gain and gamma inside the brain)
    come out alike once both are matched to one reference; the map is monotone, the background is
    untouched, and a scan without a brain is refused with a message."""
    from LDAELib.testing import phantom_brain
    from LDAELib.training.matching import brain_quantiles, match_brain_histogram, reference_quantiles

    x = np.asarray(phantom_brain((32, 40, 32))[0], dtype=np.float32)
    x = x / x.max()
    brain = x > 0.02
    other = x.copy()
    other[brain] = np.clip(0.85 * x[brain] ** 1.4 + 0.03, 0.021, 1.0)
    assert np.abs(other - x)[brain].mean() > 0.05  # a real contrast change
    ref = reference_quantiles([brain_quantiles(x), brain_quantiles(other)])
    mx, mo = match_brain_histogram(x, ref), match_brain_histogram(other, ref)
    assert np.abs(mx - mo)[brain].mean() < 0.01 * np.abs(other - x)[brain].mean() + 1e-3
    assert np.array_equal(mx[~brain], x[~brain]) and np.array_equal(mo[~brain], other[~brain])
    order = np.argsort(x[brain])
    assert np.all(np.diff(mx[brain][order]) >= -1e-6)  # monotone: the anatomy's ranking is kept
    with pytest.raises(LDAEError, match="voxels above"):
        match_brain_histogram(np.zeros((8, 8, 8), np.float32), ref)


def test_contrast_free_targets_take_the_pairs_and_the_code_target_from_matched_latents(trained, tiny_cohort, tmp_path):
    """contrast_free_targets: the paired items' coarse difference comes from the intensity-matched
    latents of the same two scans (zero for unpaired items) and the code regression's latent target
    too; z_t stays built from the stored latents; the matched latents are encoded once; a short run
    trains; the setting is refused where it would change nothing."""
    from LDAELib.training import TrainingSession
    from LDAELib.training.checkpoint import load_checkpoint
    from LDAELib.training.config import RepresentationStageConfig
    from LDAELib.training.representation import RepresentationLoss, RepresentationObjective
    from LDAELib.training.session import _strip

    with pytest.raises(LDAEError, match="contrast_free_targets"):
        RepresentationStageConfig(contrast_free_targets=True)
    with pytest.raises(LDAEError, match="true or false"):
        RepresentationStageConfig(contrast_free_targets="yes", pair_probability=1.0)

    work, _ = trained
    w = upstream_copy(work, tmp_path / "matched")
    recipe = tiny_recipe()
    rc = recipe.representation
    rc.pair_probability, rc.pair_with, rc.code_regression_weight, rc.contrast_free_targets = 1.0, "any", 0.1, True
    session = TrainingSession(recipe, tiny_cohort, w, progress=False, echo=lambda m: None)
    lat, matched = session.latents(), session.matched_latents()
    assert matched.rows == lat.rows and matched.scale == lat.scale
    assert not torch.allclose(matched.mu, lat.mu)  # each scan moved onto the common reference
    stamp = (w / "latents_matched" / "latents.safetensors").stat().st_mtime_ns
    assert session.matched_latents().rows == lat.rows
    assert (w / "latents_matched" / "latents.safetensors").stat().st_mtime_ns == stamp  # kept, not encoded again

    unet = _strip(load_checkpoint(session._require("ddpm", "representation"), with_optimizer=False).groups["ema"], "unet.")
    with pytest.raises(LDAEError, match="matched latents"):
        RepresentationObjective(recipe.model, rc, session.data, lat, unet, torch.device("cpu"), {})
    obj = RepresentationObjective(recipe.model, rc, session.data, lat, unet, torch.device("cpu"), {}, matched)
    rows = obj.items[:4]
    for step in range(20):
        b = obj._rows(rows, step)
        if "pair_delta" in b:
            break
    pairs = [obj._partner(r, step) if int(t) >= rc.pair_min_t else r for r, t in zip(rows, b["t"])]
    assert any(a != r for a, r in zip(pairs, rows))
    for i, (a, r) in enumerate(zip(pairs, rows)):
        expect = (matched.scaled_means([a]) - matched.scaled_means([r]))[0] if a != r else torch.zeros_like(b["pair_delta"][i])
        assert torch.allclose(b["pair_delta"][i], expect)
        assert torch.equal(b["z0_pair"][i], obj.draw([a], step)["z0"][0])  # z_t from the stored latent
    head = obj.module.code_regression
    assert torch.allclose(b["code_target"], head.target(matched.scaled_means(rows), obj._column_values(rows)))

    # The loss takes the given difference's coarse part; the stored latents' difference is the default.
    gen = torch.Generator().manual_seed(1)
    z0, z0_pair = torch.randn(2, 2, 4, 4, 4, generator=gen), torch.randn(2, 2, 4, 4, 4, generator=gen)
    noise, t = torch.randn(z0.shape, generator=gen), torch.tensor([400, 800])

    class Net(torch.nn.Module):
        def forward(self, zt, t, y):
            return torch.zeros_like(zt), torch.zeros_like(zt)

    loss = RepresentationLoss(lambda v: torch.zeros(v.shape[0], 16), Net(), 1000, 0.1, "axial", pair_pool=2)
    x = torch.zeros(2, 1, 16, 16, 16)
    default = loss(x, z0, t, noise, z0_pair=z0_pair)[1]["mse"]
    same = loss(x, z0, t, noise, z0_pair=z0_pair, pair_delta=z0_pair - z0)[1]["mse"]
    other = loss(x, z0, t, noise, z0_pair=z0_pair, pair_delta=torch.zeros_like(z0))[1]["mse"]
    assert torch.allclose(default, same) and not torch.allclose(default, other)
    assert torch.allclose(other, noise.pow(2).mean())  # no coarse difference: the target is the noise

    session.train_representation()
    log = [json.loads(r) for r in (w / "representation" / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["mse"]) for r in log if r["split"] == "train")


def test_a_second_training_in_the_same_work_folder_stops_at_once(tiny_cohort, tmp_path):
    """While one process trains in a work folder, another `ldae train` there (run or a hand-over load)
    fails before writing anything and names the first; when the first ends, however it ends, the
    folder is free again."""
    from LDAELib.training import TrainingSession

    work = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from LDAELib.training.lock import workdir_lock
            with workdir_lock({str(work)!r}):
                print("held", flush=True)
                time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        session = TrainingSession(tiny_recipe(steps=2), tiny_cohort, work, progress=False, echo=lambda m: None)
        with pytest.raises(LDAEError, match=rf"another ldae train is working in .*pid {holder.pid}"):
            session.run("all")
        with pytest.raises(LDAEError, match="another ldae train"):
            session.load_stage("autoencoder", tmp_path / "any.safetensors")
        assert not (work / "autoencoder").exists()
    finally:
        holder.kill()  # killed, not left to release the lock itself
        holder.wait()
    session.run("autoencoder")
    assert (work / "autoencoder" / "final.json").is_file()
