"""The authors' weights as they distribute them → an ``LDAEModel``.

A model folder holds either
* their three inference files ``autoencoderkl.pth``, ``encoder.pth`` (EMA semantic encoder) and
  ``decoder.pth`` (EMA ShiftUNet), plain state dicts; or
* a representation-learning Lightning checkpoint (``*.ckpt`` with ``vae.``, ``ema_encoder.``,
  ``ema_decoder.`` prefixes), optionally beside ``autoencoderkl.pth``;
and optionally ``disease_classifier.ckpt`` (a Linear(768,1) state dict) with ``semantic_mean.pt`` and
``semantic_std.pt``, which become the direction ``cn``. Widths are read from tensor shapes; what
shapes cannot tell comes from ``ldae_config.json`` or the authors' training YAML beside the files
(``fit.model.init_args``: ``vae_args``, ``unet_args``, ``enc_args``), else the authors' defaults.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..directions import Direction
from ..errors import LDAEError
from ..model import LATENT_SCALE, LDAEConfig, LDAEModel
from ..nets.autoencoder import AutoencoderConfig, convert_old_keys, infer_autoencoder_config
from ..nets.semantic_encoder import SemanticEncoderConfig, infer_semantic_encoder_config, normalise_semantic_encoder_keys
from ..nets.unet import UNetConfig, infer_unet_config
from ..space import ModelSpaceConfig
from .common import as_float32, load_strict, sha256_file, torch_load_safe

AEKL_FILE, ENCODER_FILE, DECODER_FILE = "autoencoderkl.pth", "encoder.pth", "decoder.pth"
PROBE_FILE, MEAN_FILE, STD_FILE = "disease_classifier.ckpt", "semantic_mean.pt", "semantic_std.pt"
CONFIG_JSON = "ldae_config.json"
LICENCE_NOTICE = (
    "LDAE pretrained weights by G. Lozupone et al. (2025), distributed by the authors for "
    "non-commercial research use only. Cite: Lozupone et al., Latent Diffusion Autoencoders, arXiv:2504.08635."
)

# A key that each kind of state dict must have: used to tell swapped or foreign files apart.
_SIGNATURES = {
    "autoencoder": "encoder.blocks.0.conv.weight",
    "semantic encoder": "positional_encoding.pe",
    "ShiftUNet": "label_emb.weight",
}


def _kind_of(sd: dict) -> str | None:
    for kind, key in _SIGNATURES.items():
        if key in sd:
            return kind
    if "input_blocks.0.0.weight" in sd:
        return "UNet without gradient estimator"
    return None


def _expect(sd: dict, kind: str, source: str) -> dict:
    found = _kind_of(sd)
    if found != kind:
        what = f"a {found}" if found else "no LDAE network"
        raise LDAEError(f"{source} should hold the {kind} but holds {what}; check that the files are not swapped or from another model")
    return sd


def _strip(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def read_user_config(folder: Path) -> dict:
    """The optional settings beside the weights: ``ldae_config.json`` or the authors' YAML."""
    j = folder / CONFIG_JSON
    if j.is_file():
        try:
            return json.loads(j.read_text())
        except json.JSONDecodeError as err:
            raise LDAEError(f"{j} is not valid JSON ({err}); fix or remove it") from None
    for y in sorted(list(folder.glob("*.yaml")) + list(folder.glob("*.yml"))):
        import yaml

        try:
            doc = yaml.safe_load(y.read_text())
        except yaml.YAMLError as err:
            raise LDAEError(f"{y} is not valid YAML ({str(err).splitlines()[0]}); fix or remove it") from None
        args = ((doc or {}).get("fit", {}) or {}).get("model", {}).get("init_args") if isinstance(doc, dict) else None
        if isinstance(args, dict) and any(k in args for k in ("vae_args", "unet_args", "enc_args")):
            return {k: args[k] for k in ("vae_args", "unet_args", "enc_args") if k in args}
    return {}


def _merge(inferred: dict, user: dict, allowed: set[str] | None = None) -> dict:
    out = dict(inferred)
    for k, v in (user or {}).items():
        if allowed is None or k in allowed:
            out[k] = v
    return out


def build_config(sds: dict[str, dict], user: dict) -> LDAEConfig:
    """Config from shapes, overridden by the user's settings (which shapes cannot contradict)."""
    ae = infer_autoencoder_config(sds["autoencoder"]).to_dict()
    vae_args = dict(user.get("vae_args", {}))
    if "channels" in vae_args:
        vae_args["num_channels"] = vae_args.pop("channels")
    ae = AutoencoderConfig.from_dict(_merge(ae, vae_args, set(ae) | set(AutoencoderConfig._IGNORED)))
    un = infer_unet_config(sds["ShiftUNet"]).to_dict()
    un = UNetConfig.from_dict(_merge(un, user.get("unet_args", {})))
    en = infer_semantic_encoder_config(sds["semantic encoder"]).to_dict()
    enc_user = user.get("enc_args", {}) or {}
    aliases = {"num_heads": "num_heads", "seq_len": "seq_len"}
    en = SemanticEncoderConfig.from_dict(_merge(en, {aliases[k]: v for k, v in enc_user.items() if k in aliases}))
    extra = user.get("ldae", {})
    return LDAEConfig(
        autoencoder=ae,
        unet=un,
        encoder=en,
        space=ModelSpaceConfig.from_dict(user.get("space", {})),
        latent_scale=float(extra.get("latent_scale", user.get("latent_scale", LATENT_SCALE))),
    )


def load_official_state_dicts(folder: Path) -> tuple[dict[str, dict], dict[str, Path]]:
    """Find and read the three networks' state dicts in ``folder`` → ({kind: state dict}, {kind: file})."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LDAEError(f"model folder not found: {folder}")
    sds: dict[str, dict] = {}
    files: dict[str, Path] = {}
    for ckpt in sorted(folder.glob("*.ckpt")):
        if ckpt.name == PROBE_FILE:
            continue
        raw = torch_load_safe(ckpt)
        if not (isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict)):
            continue
        st = raw["state_dict"]
        for kind, prefix in (("autoencoder", "vae."), ("semantic encoder", "ema_encoder."), ("ShiftUNet", "ema_decoder."), ("autoencoder", "model.")):
            part = _strip(st, prefix)
            if part and kind not in sds and _kind_of(part) == kind:
                sds[kind], files[kind] = part, ckpt
    for kind, name in (("autoencoder", AEKL_FILE), ("semantic encoder", ENCODER_FILE), ("ShiftUNet", DECODER_FILE)):
        path = folder / name
        if path.exists():
            raw = torch_load_safe(path)
            if not isinstance(raw, dict):
                raise LDAEError(f"{path.name} is not a state dict (found {type(raw).__name__}); download it again")
            if isinstance(raw.get("state_dict"), dict):  # a Lightning checkpoint under the plain name
                raw = _strip(raw["state_dict"], "model.") or raw["state_dict"]
            sds[kind], files[kind] = _expect(raw, kind, path.name), path
    missing = [n for k, n in (("autoencoder", AEKL_FILE), ("semantic encoder", ENCODER_FILE), ("ShiftUNet", DECODER_FILE)) if k not in sds]
    if missing:
        raise LDAEError(
            f"{folder} lacks {', '.join(missing)}. Download the authors' weights (autoencoderkl.pth, encoder.pth, "
            f"decoder.pth) into that folder, or point --model at a bundle made by 'ldae convert'."
        )
    return {k: as_float32(v) for k, v in sds.items()}, files


def load_official_directions(folder: Path, emb_dim: int) -> dict[str, Direction]:
    """The authors' disease probe as the direction ``cn`` (+alpha towards CN, −alpha towards AD)."""
    folder = Path(folder)
    probe = folder / PROBE_FILE
    if not probe.exists():
        return {}
    mean_p, std_p = folder / MEAN_FILE, folder / STD_FILE
    if not (mean_p.exists() and std_p.exists()):
        raise LDAEError(f"{PROBE_FILE} needs {MEAN_FILE} and {STD_FILE} beside it (the normalisation of the codes); download them too")
    sd = torch_load_safe(probe)
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    w = sd.get("weight") if isinstance(sd, dict) else None
    if w is None or w.numel() != emb_dim:
        raise LDAEError(f"{PROBE_FILE} should hold a Linear({emb_dim}, 1) probe (weight 1×{emb_dim}); it does not")
    mean, std = torch_load_safe(mean_p), torch_load_safe(std_p)
    for p, t in ((mean_p, mean), (std_p, std)):
        if not isinstance(t, torch.Tensor) or t.numel() != emb_dim:
            raise LDAEError(f"{p.name} should hold a tensor of {emb_dim} values")
    bias = float(sd["bias"].reshape(-1)[0]) if "bias" in sd else 0.0
    return {
        "cn": Direction(
            "cn", w.float(), mean.float(), std.float(), bias, positive="CN (cognitively normal)", negative="AD (Alzheimer's disease)",
            meta={"source": "authors' disease_classifier.ckpt"},
        )
    }


def load_official(folder: str | Path) -> LDAEModel:
    """Build an ``LDAEModel`` from a folder of the authors' files (see module docstring)."""
    folder = Path(folder)
    sds, files = load_official_state_dicts(folder)
    try:
        config = build_config(sds, read_user_config(folder))
    except (KeyError, ValueError, TypeError) as err:
        raise LDAEError(f"cannot work out the model's settings from the files in {folder}: {err}") from None
    directions = load_official_directions(folder, config.encoder.emb_dim)
    hashes = {p.name: sha256_file(p) for p in sorted(set(files.values()))}
    for extra in (PROBE_FILE, MEAN_FILE, STD_FILE, CONFIG_JSON):
        if (folder / extra).exists():
            hashes[extra] = sha256_file(folder / extra)
    identity = {
        "name": "LDAE (Lozupone et al. 2025), authors' weights",
        "format": "official",
        "path": str(folder.resolve()),
        "files": hashes,
        "licence": LICENCE_NOTICE,
    }
    try:
        model = LDAEModel(config, directions, identity)
    except ValueError as err:
        raise LDAEError(
            f"the networks cannot be built with the settings read from {folder}: {err}. For a reduced model, give the "
            f"settings shapes cannot tell (e.g. {{\"vae_args\": {{\"norm_num_groups\": 8}}}}) in {CONFIG_JSON} beside the files."
        ) from None
    ae_sd = convert_old_keys(sds["autoencoder"], set(model.autoencoder.state_dict()))
    load_strict(model.autoencoder, ae_sd, "autoencoder", files["autoencoder"].name)
    load_strict(model.semantic_encoder, normalise_semantic_encoder_keys(sds["semantic encoder"]), "semantic encoder", files["semantic encoder"].name)
    load_strict(model.shift_unet, sds["ShiftUNet"], "ShiftUNet", files["ShiftUNet"].name)
    return model
