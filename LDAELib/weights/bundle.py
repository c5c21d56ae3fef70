"""Our model bundle: a folder of safetensors files, a JSON config, a SHA-256 manifest and the licence.

    ldae_bundle.json              format, name, LDAEConfig, directions' metadata, provenance
    autoencoder.safetensors       AutoencoderKL state dict (MONAI ≥ 1.4 key names)
    semantic_encoder.safetensors  semantic encoder (the backbone once; the alias is restored on load)
    shift_unet.safetensors        ShiftUNet
    directions.safetensors        <name>.weight / <name>.mean / <name>.std per direction
    latent_shift.safetensors      only when the config sets latent_shift: the mean latent m (C×d×h×w, float32)
    reference_code.safetensors    only when the config sets code_guidance ≠ 1: the reference code ȳ (latent_dim, float32)
    LICENSE.txt                   the licence the weights come under
    README.md, …                  optional documents (a model card), written with ``extra_files``
    manifest.json                 {"files": {name: {"sha256", "bytes"}}} of every file above

Loading checks every hash before anything is read, so a truncated or modified file is named, and
refuses a file that the manifest does not list: everything in a bundle is accounted for.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..directions import Direction
from ..errors import LDAEError
from ..model import LDAEConfig, LDAEModel
from ..nets.semantic_encoder import normalise_semantic_encoder_keys
from .common import load_strict, sha256_file

BUNDLE_JSON, MANIFEST = "ldae_bundle.json", "manifest.json"
FORMAT, VERSION = "ldae-bundle", 1
_PARTS = {"autoencoder": "autoencoder.safetensors", "semantic_encoder": "semantic_encoder.safetensors", "shift_unet": "shift_unet.safetensors"}
_DIRECTIONS = "directions.safetensors"
_SHIFT = "latent_shift.safetensors"
_REFERENCE = "reference_code.safetensors"
_LICENCE = "LICENSE.txt"


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / BUNDLE_JSON).is_file()


def _unshared(sd: dict[str, torch.Tensor], drop_prefix: str | None = None) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies (safetensors refuses shared storage), without the aliased keys."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items() if not (drop_prefix and k.startswith(drop_prefix))}


def save_bundle(model: LDAEModel, folder: str | Path, *, name: str | None = None, licence: str | None = None,
                dtype: torch.dtype = torch.float32, extra_files: dict[str, str] | None = None) -> Path:
    """Write ``model`` as a bundle into ``folder`` (created; must not exist or be empty).

    ``dtype``: storage of the weights (float16 halves the files; they are read back as float32).
    ``extra_files``: {name: text} of documents to ship inside the bundle (e.g. its model card).
    Written into a temporary folder beside it and renamed at the end, so a failure leaves nothing.
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise LDAEError(f"{folder} exists and is not empty; choose a new folder for the bundle")
    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=parent))
    try:
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a bundle is as readable as any new folder
        cast = lambda sd: {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}  # noqa: E731
        save_file(cast(_unshared(model.autoencoder.state_dict())), str(tmp / _PARTS["autoencoder"]))
        save_file(cast(_unshared(model.semantic_encoder.state_dict(), "slice_distributed.")), str(tmp / _PARTS["semantic_encoder"]))
        save_file(cast(_unshared(model.shift_unet.state_dict())), str(tmp / _PARTS["shift_unet"]))
        dirs = {}
        for dname, d in model.directions.items():
            dirs[f"{dname}.weight"], dirs[f"{dname}.mean"], dirs[f"{dname}.std"] = d.weight, d.mean, d.std
        save_file(_unshared(dirs), str(tmp / _DIRECTIONS))
        if model.latent_shift is not None:  # float32 whatever ``dtype``: it is added to every latent
            save_file({"latent_shift": model.latent_shift.float().contiguous()}, str(tmp / _SHIFT))
        if model.config.guided:
            if model.reference_code is None:
                raise LDAEError("the model's configuration asks for code guidance but it has no reference code to save")
            save_file({"reference_code": model.reference_code.detach().to("cpu", torch.float32).contiguous()}, str(tmp / _REFERENCE))
        identity = dict(model.identity)
        licence = licence or identity.get("licence") or "See the model card that came with these weights."
        (tmp / _LICENCE).write_text(licence.rstrip() + "\n")
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "name": name or identity.get("name", "LDAE model"),
            "config": model.config.to_dict(),
            "dtype": str(dtype).replace("torch.", ""),
            "directions": {dname: d.settings() for dname, d in model.directions.items()},
            "source": {k: v for k, v in identity.items() if k != "licence"},
        }
        (tmp / BUNDLE_JSON).write_text(json.dumps(meta, indent=2))
        for fname, text in (extra_files or {}).items():
            if Path(fname).name != fname or fname in (MANIFEST, BUNDLE_JSON, _LICENCE, _DIRECTIONS, _SHIFT, _REFERENCE, *_PARTS.values()):
                raise LDAEError(f"cannot add {fname!r} to a bundle: give a plain file name that is not one of the bundle's own files")
            (tmp / fname).write_text(text)
        files = sorted(p.name for p in tmp.iterdir())
        for f in files:  # safetensors writes its files private; a bundle's files are as readable as its folder
            os.chmod(tmp / f, 0o666 & ~umask)
        manifest = {"files": {f: {"sha256": sha256_file(tmp / f), "bytes": (tmp / f).stat().st_size} for f in files}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if folder.exists():
            folder.rmdir()
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def verify_bundle(folder: str | Path) -> dict[str, str]:
    """Check every file against the manifest → {file: sha256}. Raises LDAEError naming a bad file."""
    folder = Path(folder)
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise LDAEError(f"{folder} has no {MANIFEST}; it is not a complete LDAE bundle. Re-create it with 'ldae convert'.")
    try:
        manifest = json.loads(mpath.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise LDAEError(f"{mpath} is damaged; re-create the bundle with 'ldae convert'") from None
    if not isinstance(manifest, dict):
        raise LDAEError(f"{mpath} is damaged; re-create the bundle with 'ldae convert'")
    unlisted = sorted(p.name for p in folder.iterdir() if p.name != MANIFEST and p.name not in manifest and not p.name.startswith("."))
    if unlisted:
        raise LDAEError(f"{folder} holds {', '.join(unlisted)}, which its manifest does not list, so it cannot be checked; "
                        "remove it, or copy the whole bundle again")
    hashes = {}
    for fname, entry in manifest.items():
        if not isinstance(entry, dict) or Path(fname).name != fname:
            raise LDAEError(f"{mpath} is damaged (entry {fname!r}); re-create the bundle with 'ldae convert'")
        p = folder / fname
        if not p.is_file():
            raise LDAEError(f"bundle file missing: {p}. Copy the whole bundle folder again.")
        if p.stat().st_size != entry.get("bytes"):
            raise LDAEError(f"{p} has {p.stat().st_size} bytes, the manifest says {entry.get('bytes')}: the file is truncated or modified. Copy it again.")
        digest = sha256_file(p)
        if digest != entry.get("sha256"):
            raise LDAEError(f"{p} does not match its SHA-256 in the manifest: the file is corrupt or modified. Copy it again.")
        hashes[fname] = digest
    for required in (BUNDLE_JSON, *_PARTS.values()):
        if required not in hashes:
            raise LDAEError(f"the bundle manifest does not list {required}; re-create the bundle")
    return hashes


def manifest_hashes(folder: str | Path) -> dict[str, str]:
    """{file: sha256} as the manifest records them, not checked (what ``verify=False`` trusts)."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())["files"]
        return {str(k): str(v.get("sha256")) for k, v in manifest.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise LDAEError(f"{folder} has no readable {MANIFEST}; it is not a complete LDAE bundle") from None


OPERATIONS = ("reconstruct", "edit", "interpolate", "vary")


INFERENCE_SETTINGS = ("code_guidance_mean_free",)
"""Model settings that only change how inference uses the weights, which ``annotate_bundle`` may change."""


def annotate_bundle(folder: str | Path, *, limitations: dict[str, str] | None = None, documents: dict[str, str] | None = None,
                    space: dict | None = None, directions: dict[str, dict | Direction] | None = None,
                    inference: dict | None = None) -> Path:
    """Record in a bundle what its model does badly, by operation (``LDAEModel.limitations``):
    ``{"vary": "…"}``; an empty text removes an operation's note. ``documents``: {name: text} of
    files to add or replace beside the weights (its model card, README.md). ``space``: model-space
    settings to change (``ModelSpaceConfig``; e.g. ``{"antialias": True}``): how inputs are brought
    to the grid, which the weights do not fix. ``directions``: {name: {field: value}} changes how an
    existing direction edits and is described (``edit_sign``, ``scale``, ``alpha_unit``, ``meta``;
    e.g. after ``ldae orient``); a ``Direction`` instead of the dict adds or replaces that direction
    whole, tensors included (``directions.safetensors`` is rewritten). ``inference``: model settings
    of :data:`INFERENCE_SETTINGS` (e.g. ``{"code_guidance_mean_free": True}``). The network weights are untouched; ``ldae_bundle.json``
    and the manifest are rewritten, so the model id changes.

    The bundle is verified first. The change is made in a copy beside it that then takes its place,
    so a failure leaves the bundle as it was.
    """
    folder = Path(folder)
    if not is_bundle(folder):
        raise LDAEError(f"{folder} is not an LDAE bundle (no {BUNDLE_JSON})")
    limitations, documents = dict(limitations or {}), dict(documents or {})
    for name in documents:
        if Path(name).name != name or name in (MANIFEST, BUNDLE_JSON, _LICENCE, _DIRECTIONS, _SHIFT, _REFERENCE, *_PARTS.values()):
            raise LDAEError(f"cannot add {name!r} to a bundle: give a plain file name that is not one of the bundle's own files")
    unknown = sorted(set(limitations) - set(OPERATIONS))
    if unknown:
        raise LDAEError(f"unknown operation(s) {', '.join(unknown)}: a limitation names one of {', '.join(OPERATIONS)}")
    if any(not isinstance(v, str) for v in limitations.values()):
        raise LDAEError("each limitation is a text (an empty text removes the note)")
    verify_bundle(folder)
    meta = json.loads((folder / BUNDLE_JSON).read_text())
    if space:
        from ..space import ModelSpaceConfig

        old_space = ModelSpaceConfig.from_dict(meta["config"].get("space", {}))
        new_space = ModelSpaceConfig.from_dict({**old_space.to_dict(), **space})
        if (new_space.spacing_mm, new_space.shape) != (old_space.spacing_mm, old_space.shape):
            raise LDAEError("the model grid (spacing_mm, shape) is fixed by the weights; only how inputs are brought to it can change")
        meta["config"]["space"] = new_space.to_dict()
    if inference:
        from ..model import LDAEConfig

        unknown = sorted(set(inference) - set(INFERENCE_SETTINGS))
        if unknown:
            raise LDAEError(f"{', '.join(unknown)} cannot be changed in a bundle: the settings inference alone uses are "
                            f"{', '.join(INFERENCE_SETTINGS)}")
        try:
            written = LDAEConfig.from_dict({**meta["config"], **inference}).to_dict()  # checks the combination
        except ValueError as e:
            raise LDAEError(f"cannot change {', '.join(inference)}: {e}") from e
        for key in inference:  # only these keys change; a setting at its default is left out, as save_bundle does
            if key in written:
                meta["config"][key] = written[key]
            else:
                meta["config"].pop(key, None)
    new_tensors = None
    if directions:
        whole = {n: d for n, d in directions.items() if isinstance(d, Direction)}
        changes = {n: d for n, d in directions.items() if not isinstance(d, Direction)}
        meta["directions"] = _changed_directions(folder, meta.get("directions", {}), changes)
        if whole:
            new_tensors = _read(folder / _DIRECTIONS) if (folder / _DIRECTIONS).exists() else {}
            for n, d in whole.items():
                new_tensors[f"{n}.weight"], new_tensors[f"{n}.mean"], new_tensors[f"{n}.std"] = d.weight, d.mean, d.std
                meta["directions"][n] = d.settings()
    source = dict(meta.get("source") or {})
    lim = {k: v for k, v in dict(source.get("limitations") or {}).items() if isinstance(v, str)}
    for op, text in limitations.items():
        if text.strip():
            lim[op] = text.strip()
        else:
            lim.pop(op, None)
    if lim:
        source["limitations"] = {op: lim[op] for op in OPERATIONS if op in lim}
    else:
        source.pop("limitations", None)
    meta["source"] = source
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    old = folder.parent / f".{folder.name}.replaced"
    try:
        os.chmod(tmp, folder.stat().st_mode & 0o7777)  # mkdtemp makes it private; keep the bundle's own mode
        for f in folder.iterdir():
            shutil.copy2(f, tmp / f.name)
        (tmp / BUNDLE_JSON).write_text(json.dumps(meta, indent=2))
        manifest = json.loads((tmp / MANIFEST).read_text())
        for name, text in documents.items():
            (tmp / name).write_text(text)
        rewritten = [BUNDLE_JSON, *documents]
        if new_tensors is not None:
            save_file(_unshared(new_tensors), str(tmp / _DIRECTIONS))
            os.chmod(tmp / _DIRECTIONS, (folder / _DIRECTIONS).stat().st_mode & 0o777 if (folder / _DIRECTIONS).exists() else 0o644)
            rewritten.append(_DIRECTIONS)
        for name in rewritten:
            manifest["files"][name] = {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
        manifest["files"] = dict(sorted(manifest["files"].items()))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        verify_bundle(tmp)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(tmp, folder)
    except BaseException:
        if old.exists() and not folder.exists():
            os.replace(old, folder)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return folder


_DIRECTION_FIELDS = ("edit_sign", "scale", "alpha_unit", "meta")


def _changed_directions(folder: Path, old: dict, changes: dict[str, dict]) -> dict:
    """The bundle's direction settings with ``changes`` applied, each checked by building the direction."""
    if not changes:
        return dict(old)
    unknown = sorted(set(changes) - set(old))
    if unknown:
        raise LDAEError(f"the bundle has no direction(s) {', '.join(unknown)}; it has {', '.join(old) or 'none'}")
    tensors = _read(folder / _DIRECTIONS)
    out = {}
    for name, settings in old.items():
        change = dict(changes.get(name) or {})
        bad = sorted(set(change) - set(_DIRECTION_FIELDS))
        if bad:
            raise LDAEError(f"direction '{name}': {', '.join(bad)} cannot be changed here (only {', '.join(_DIRECTION_FIELDS)}); "
                            "a new probe needs a new bundle")
        d = Direction.from_settings(name, tensors[f"{name}.weight"], tensors[f"{name}.mean"], tensors[f"{name}.std"], {**settings, **change})
        out[name] = d.settings()
    return out


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise LDAEError(f"{path} could not be read ({err}); copy the bundle again") from None


def load_bundle(folder: str | Path, *, verify: bool = True) -> LDAEModel:
    """Read a bundle written by ``save_bundle`` (hashes checked first unless ``verify=False``)."""
    folder = Path(folder)
    if not is_bundle(folder):
        raise LDAEError(f"{folder} is not an LDAE bundle (no {BUNDLE_JSON})")
    hashes = verify_bundle(folder) if verify else manifest_hashes(folder)
    try:
        meta = json.loads((folder / BUNDLE_JSON).read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
            raise ValueError("no config")
    except (OSError, ValueError) as err:
        raise LDAEError(f"{folder / BUNDLE_JSON} is damaged ({str(err)[:80]}); copy the bundle again") from None
    if meta.get("format") != FORMAT or int(meta.get("version", 0)) > VERSION:
        raise LDAEError(f"{folder} is a bundle of format {meta.get('format')} v{meta.get('version')}; this LDAE reads {FORMAT} v{VERSION}. Update LDAE.")
    try:
        config = LDAEConfig.from_dict(meta["config"])
    except (TypeError, ValueError, KeyError) as err:
        raise LDAEError(f"{folder / BUNDLE_JSON} holds a model configuration this LDAE cannot read ({str(err)[:120]})") from None
    if (folder / _DIRECTIONS).exists() and _DIRECTIONS not in hashes:
        raise LDAEError(f"the bundle manifest does not list {_DIRECTIONS}; copy the whole bundle again")
    dsd = _read(folder / _DIRECTIONS) if (folder / _DIRECTIONS).exists() else {}
    directions = {}
    for dname, dm in meta.get("directions", {}).items():
        try:
            w, mu, sd = dsd[f"{dname}.weight"], dsd[f"{dname}.mean"], dsd[f"{dname}.std"]
        except KeyError:
            raise LDAEError(f"{folder / _DIRECTIONS} lacks the tensors of direction '{dname}'; re-create the bundle") from None
        directions[dname] = Direction.from_settings(dname, w, mu, sd, dm)
    licence_path = folder / _LICENCE
    identity = {
        "name": meta.get("name", folder.name),
        "format": "bundle",
        "path": str(folder.resolve()),
        "files": hashes,
        "licence": licence_path.read_text().strip() if licence_path.exists() else "",
        "source": meta.get("source", {}),
    }
    model = LDAEModel(config, directions, identity)
    f32 = lambda sd: {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}  # noqa: E731
    load_strict(model.autoencoder, f32(_read(folder / _PARTS["autoencoder"])), "autoencoder", _PARTS["autoencoder"])
    load_strict(model.semantic_encoder, normalise_semantic_encoder_keys(f32(_read(folder / _PARTS["semantic_encoder"]))), "semantic encoder", _PARTS["semantic_encoder"])
    load_strict(model.shift_unet, f32(_read(folder / _PARTS["shift_unet"])), "ShiftUNet", _PARTS["shift_unet"])
    if config.latent_shift:
        if _SHIFT not in hashes:
            raise LDAEError(f"the bundle's config uses a latent shift but its manifest does not list {_SHIFT}; copy the whole bundle again")
        shift = _read(folder / _SHIFT).get("latent_shift")
        if shift is None or tuple(shift.shape) != tuple(config.latent_shape):
            raise LDAEError(f"{folder / _SHIFT} does not hold a latent_shift of shape {tuple(config.latent_shape)}; copy the bundle again")
        model.latent_shift = shift.float()
    if config.guided:
        if _REFERENCE not in hashes:
            raise LDAEError(f"the bundle's config uses code guidance but its manifest does not list {_REFERENCE}; copy the whole bundle again")
        ref = _read(folder / _REFERENCE).get("reference_code")
        if ref is None or tuple(ref.shape) != (config.unet.latent_dim,) or not torch.isfinite(ref).all():
            raise LDAEError(f"{folder / _REFERENCE} does not hold a finite reference_code of {config.unet.latent_dim} numbers; copy the bundle again")
        model.reference_code = ref.float()
    return model
