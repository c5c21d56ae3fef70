"""A finished training stage as one small float16 file, to carry a long training across machines.

Training the demo model can outlast one working session, and the work folder (checkpoints with their
float32 weights and optimizer state, caches, latents) is too large for git. What a later stage needs
of an earlier one is only that stage's final EMA weights, so a hand-over file holds exactly those,
stored in float16, beside what is needed to check that it is used in the same training:

    ldae train autoencoder --cohort C --workdir RUN --save-stage autoencoder.safetensors
    # … on another machine, same recipe and cohort:
    ldae train autoencoder --cohort C --workdir RUN2 --load-stage autoencoder.safetensors
    ldae train all --cohort C --workdir RUN2            # goes on with the next stage

The file's metadata (``ldae_handover``, JSON) records the stage, its step count, the recipe's model
and data settings, the split's subjects, the weights each earlier stage was trained on, the final
losses and the SHA-256 of the float32 weights it came from. Loading refuses a file made with other
model or data settings, another split, or on other weights of an earlier stage than the work
folder holds; settings of later stages may differ (an autoencoder serves a recipe with another
diffusion UNet). The loaded stage keeps the original weights' SHA-256 as its fingerprint, so a later
stage handed over from the same training is recognised as trained on it: the weights differ from
those originals by float16 rounding only (the demo autoencoder's decode(μ): SSIM 0.999996 against
float32, largest difference 5e-4 on a [0, 1] image).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import LDAEError
from ..weights.common import sha256_file
from .checkpoint import (
    final_checkpoint,
    load_checkpoint,
    mark_final,
    read_final,
    save_checkpoint,
)
from .config import comparable, comparable_for

FORMAT, VERSION = "ldae-stage-handover", 1
KEY = "ldae_handover"
STAGES = ("autoencoder", "ddpm", "representation")
FLOAT16_MAX = 65504.0


def split_digest(workdir: Path) -> str:
    """SHA-256 of the split's subject lists (which subjects are train, val and test)."""
    path = Path(workdir) / "split.json"
    try:
        subjects = json.loads(path.read_text())["subjects"]
    except (OSError, ValueError, KeyError) as err:
        raise LDAEError(f"{path} is missing or damaged ({err}); run 'ldae train' once in {workdir} to make the split") from None
    return hashlib.sha256(json.dumps(subjects, sort_keys=True).encode()).hexdigest()


def _recipe_of(workdir: Path) -> dict:
    try:
        return json.loads((Path(workdir) / "recipe.json").read_text())
    except (OSError, ValueError) as err:
        raise LDAEError(f"{workdir} has no readable recipe.json ({err}); is it an 'ldae train' work folder?") from None


def stage_name(stage: str) -> str:
    """``stage`` if a hand-over can hold it, else one clear error."""
    if stage not in STAGES:
        raise LDAEError(f"a hand-over holds one training stage ({', '.join(STAGES)}), not {stage!r}")
    return stage


def save_handover(workdir: str | Path, stage: str, path: str | Path) -> dict:
    """Write the finished ``stage`` of ``workdir`` to ``path`` (float16 EMA weights); returns its record."""
    workdir, path = Path(workdir), Path(path)
    stage_dir = workdir / stage_name(stage)
    fin, ck_path = read_final(stage_dir), final_checkpoint(stage_dir)
    if fin is None or ck_path is None:
        raise LDAEError(f"the {stage} stage is not complete in {workdir}: only a finished stage can be handed over")
    ck = load_checkpoint(ck_path, with_optimizer=False)
    weights, kept = {}, []
    for k, v in ck.groups["ema"].items():
        if v.is_floating_point() and float(v.abs().max()) <= FLOAT16_MAX:
            weights[k] = v.to(torch.float16).contiguous()
        else:
            weights[k] = v.contiguous()
            kept.append(k)
    state = ck.state
    record = {
        "format": FORMAT, "version": VERSION, "stage": stage, "step": ck.step,
        "recipe": comparable(_recipe_of(workdir)), "stage_config": state.get("config", {}),
        "split_sha256": split_digest(workdir), "upstream": fin.get("upstream", {}),
        "losses": fin.get("losses", {}), "seconds_per_step": fin.get("seconds_per_step"),
        "weights_sha256": state.get("handover", {}).get("weights_sha256") or state["files"]["weights.safetensors"]["sha256"],
        "extra": {k: state[k] for k in ("latent_scale",) if k in state},
        "not_float16": kept,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        save_file(weights, tmp, metadata={KEY: json.dumps(record, sort_keys=True)})
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors writes 0600; a hand-over is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {**record, "file_sha256": sha256_file(path), "bytes": path.stat().st_size}


def read_handover(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The record and the weights (as float32) of a hand-over file."""
    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        record = json.loads(meta.get(KEY, "null"))
        weights = load_file(str(path))
    except (OSError, SafetensorError, ValueError) as err:
        raise LDAEError(f"{path} could not be read as a stage hand-over ({err})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise LDAEError(f"{path} is not an LDAE stage hand-over (write one with 'ldae train STAGE --save-stage FILE')")
    if int(record.get("version", 0)) > VERSION:
        raise LDAEError(f"{path} was written by a newer LDAE (hand-over v{record.get('version')}); update LDAE")
    stage_name(record.get("stage"))
    return record, {k: (v.float() if v.is_floating_point() else v) for k, v in weights.items()}


def load_handover(workdir: str | Path, stage: str, path: str | Path, current_upstream: dict) -> dict:
    """Make ``stage``, read from ``path``, the finished stage of ``workdir``; returns the hand-over's record.

    ``current_upstream``: the fingerprints of the earlier stages in ``workdir`` now, which must be
    the ones the handed-over stage was trained on.
    """
    workdir = Path(workdir)
    record, weights = read_handover(path)
    if record["stage"] != stage:
        raise LDAEError(f"{path} holds the {record['stage']} stage, not {stage}; run 'ldae train {record['stage']} --load-stage {path}'")
    if comparable_for(stage, comparable(_recipe_of(workdir))) != comparable_for(stage, record["recipe"]):
        raise LDAEError(f"{path} was trained with other model or data settings than {workdir / 'recipe.json'} "
                        f"has for the {stage} stage and the ones before it; load it into a work folder started "
                        "with the same settings for those stages")
    if split_digest(workdir) != record["split_sha256"]:
        raise LDAEError(f"{path} was trained on another split of subjects than {workdir / 'split.json'}; "
                        "use the same cohort (same 'ldae cohort' seed and subjects) and split seed")
    if current_upstream != record["upstream"]:
        raise LDAEError(f"{path} was trained on other weights of an earlier stage than {workdir} holds; "
                        "load the earlier stages' hand-overs from the same training first")
    stage_dir = workdir / stage
    if read_final(stage_dir) is not None:
        raise LDAEError(f"the {stage} stage is already complete in {workdir}; delete {stage_dir} to replace it with {path}")
    step = int(record["step"])
    cfg = record.get("stage_config", {})
    state = {"stage": stage, "config": cfg, "batch_size": cfg.get("batch_size"), "total_steps": step, "world_size": 1,
             "ema_updates": step, "upstream": record["upstream"], "losses": record.get("losses", {}),
             "handover": {"file": Path(path).name, "weights_sha256": record["weights_sha256"], "stored": "float16"},
             **record.get("extra", {})}
    ck = save_checkpoint(stage_dir, step, {"model": weights, "ema": weights}, None, state)
    mark_final(stage_dir, ck, {"step": step, "upstream": record["upstream"], "losses": record.get("losses", {}),
                               "seconds_per_step": record.get("seconds_per_step"), "handover": Path(path).name})
    return record
