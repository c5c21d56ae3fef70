"""Weight files: the authors' formats load; bad files give one clear error naming the file; bundles round-trip."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from LDAELib.errors import LDAEError
from LDAELib.weights import load_model
from LDAELib.weights.bundle import annotate_bundle, save_bundle, verify_bundle
from conftest import load_fixture


def _copy_official(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


def test_lightning_checkpoint_loads_like_the_inference_files(tmp_path, official_model):
    """A representation-learning Lightning checkpoint (vae./ema_encoder./ema_decoder. prefixes)."""
    enc = load_fixture("semantic_encoder_state_dict.pt")
    dec = load_fixture("shift_unet_state_dict_fp16.pt")
    vae = load_fixture("aekl_state_dict.pt")
    sd = {}
    for prefix, part in (("vae.", vae), ("encoder.", enc), ("ema_encoder.", enc), ("decoder.", dec), ("ema_decoder.", dec)):
        sd.update({prefix + k: v for k, v in part.items()})
    ckpt = {"epoch": 3, "global_step": 10, "pytorch-lightning_version": "2.4.0", "state_dict": sd,
            "hyper_parameters": {"lr": 1e-4, "mode": "representation-learning"}}
    torch.save(ckpt, tmp_path / "last.ckpt")
    (tmp_path / "ldae_config.json").write_text(json.dumps({"vae_args": {"norm_num_groups": 8}}))
    model = load_model(tmp_path)
    assert _same_weights(model, official_model)


def test_authors_yaml_config_is_read(tmp_path, official_dir):
    d = _copy_official(official_dir, tmp_path / "m")
    (d / "ldae_config.json").unlink()
    (d / "ldae_repr_learn.yaml").write_text("fit:\n  model:\n    init_args:\n      vae_args:\n        norm_num_groups: 8\n")
    assert load_model(d).config.autoencoder.norm_num_groups == 8


def test_missing_config_gives_a_shape_error_naming_the_tensor(tmp_path, official_dir):
    """Without the groups setting the reduced AEKL cannot be built with 32 groups of 16 channels."""
    d = _copy_official(official_dir, tmp_path / "m")
    (d / "ldae_config.json").unlink()
    with pytest.raises(LDAEError, match="settings|groups"):
        load_model(d)


def test_missing_file_is_named(tmp_path, official_dir):
    d = _copy_official(official_dir, tmp_path / "m")
    (d / "decoder.pth").unlink()
    with pytest.raises(LDAEError, match="decoder.pth"):
        load_model(d)


def test_missing_folder(tmp_path):
    with pytest.raises(LDAEError, match="not found"):
        load_model(tmp_path / "nope")


def test_truncated_checkpoint_is_named(tmp_path, official_dir):
    d = _copy_official(official_dir, tmp_path / "m")
    data = (d / "encoder.pth").read_bytes()
    (d / "encoder.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(LDAEError, match=r"encoder\.pth.*(truncated|corrupt)"):
        load_model(d)


def test_garbage_file_is_named(tmp_path, official_dir):
    d = _copy_official(official_dir, tmp_path / "m")
    (d / "autoencoderkl.pth").write_bytes(b"<html>Google Drive - virus scan warning</html>")
    with pytest.raises(LDAEError, match="autoencoderkl.pth"):
        load_model(d)


def test_swapped_files_are_detected(tmp_path, official_dir):
    d = _copy_official(official_dir, tmp_path / "m")
    (d / "encoder.pth").rename(d / "tmp")
    (d / "decoder.pth").rename(d / "encoder.pth")
    (d / "tmp").rename(d / "decoder.pth")
    with pytest.raises(LDAEError, match="swapped"):
        load_model(d)


def test_incomplete_state_dict_names_the_missing_tensor(tmp_path, official_dir):
    d = _copy_official(official_dir, tmp_path / "m")
    sd = torch.load(d / "decoder.pth", weights_only=True)
    del sd["shift_out.2.weight"]
    torch.save(sd, d / "decoder.pth")
    with pytest.raises(LDAEError, match=r"shift_out\.2\.weight"):
        load_model(d)


def test_nan_weights_are_refused(tmp_path, official_dir):
    d = _copy_official(official_dir, tmp_path / "m")
    sd = torch.load(d / "autoencoderkl.pth", weights_only=True)
    sd["quant_conv_mu.conv.bias"][0] = float("nan")
    torch.save(sd, d / "autoencoderkl.pth")
    with pytest.raises(LDAEError, match="NaN"):
        load_model(d)


class _Payload:
    def __reduce__(self):  # what a malicious pickle would run
        return (print, ("unpickled code ran",))


def test_pickled_code_is_never_run(tmp_path, official_dir, capsys):
    d = _copy_official(official_dir, tmp_path / "m")
    torch.save({"weight": _Payload()}, d / "encoder.pth")
    with pytest.raises(LDAEError, match="refused"):
        load_model(d)
    assert "unpickled code ran" not in capsys.readouterr().out


def test_authors_probe_becomes_direction_cn_with_their_sign(tmp_path, official_dir):
    d = _copy_official(official_dir, tmp_path / "m")
    w = torch.randn(1, 64)
    torch.save({"weight": w, "bias": torch.tensor([0.89])}, d / "disease_classifier.ckpt")
    torch.save(torch.zeros(64), d / "semantic_mean.pt")
    torch.save(torch.ones(64), d / "semantic_std.pt")
    cn = load_model(d).directions["cn"]
    y = torch.zeros(1, 64)
    assert float(cn.score(cn.apply(y, +1.0))) > float(cn.score(y)) > float(cn.score(cn.apply(y, -1.0)))
    assert "CN" in cn.positive and "AD" in cn.negative


def test_bundle_round_trip_keeps_weights_directions_and_hashes(tmp_path, official_model):
    from LDAELib.directions import Direction

    official_model.directions["test"] = Direction("test", torch.randn(64), torch.zeros(64), torch.ones(64), positive="up")
    try:
        out = save_bundle(official_model, tmp_path / "bundle", name="fixture model")
    finally:
        del official_model.directions["test"]
    files = verify_bundle(out)
    assert {"autoencoder.safetensors", "shift_unet.safetensors", "semantic_encoder.safetensors", "LICENSE.txt"} <= set(files)
    back = load_model(out)
    assert _same_weights(back, official_model)
    assert back.directions["test"].positive == "up"
    assert back.identity["files"] == files
    assert back.config.to_dict() == official_model.config.to_dict()
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # not left private, as a temporary folder is made
    assert {f.stat().st_mode & 0o777 for f in out.iterdir()} == {0o666 & ~umask}  # nor its files (safetensors writes them private)


def test_tampered_bundle_file_is_named(tmp_path, official_model):
    out = save_bundle(official_model, tmp_path / "bundle")
    p = out / "shift_unet.safetensors"
    data = bytearray(p.read_bytes())
    data[-10] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(LDAEError, match="shift_unet.safetensors.*SHA-256"):
        load_model(out)


def test_truncated_bundle_file_is_named(tmp_path, official_model):
    out = save_bundle(official_model, tmp_path / "bundle")
    p = out / "autoencoder.safetensors"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(LDAEError, match="autoencoder.safetensors.*truncated"):
        load_model(out)


def test_bundle_is_not_written_over_a_non_empty_folder(tmp_path, official_model):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("x")
    with pytest.raises(LDAEError, match="not empty"):
        save_bundle(official_model, tmp_path / "b")
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["keep.txt"]


def _as_if_saved_on_mps(path: Path) -> None:
    """Rewrite a torch zip file's storage location tags from 'cpu' to 'mps' (same length)."""
    import zipfile

    src = zipfile.ZipFile(path)
    items = [(i, src.read(i.filename)) for i in src.infolist()]
    src.close()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info, data in items:
            if info.filename.endswith("data.pkl"):
                assert b"cpu" in data
                data = data.replace(b"cpu", b"mps")
            dst.writestr(info, data)


def test_files_saved_on_apple_mps_load_on_the_cpu(tmp_path, official_dir):
    d = _copy_official(official_dir, tmp_path / "m")
    torch.save(torch.zeros(64), d / "semantic_mean.pt")
    torch.save(torch.ones(64), d / "semantic_std.pt")
    torch.save({"weight": torch.ones(1, 64), "bias": torch.zeros(1)}, d / "disease_classifier.ckpt")
    for name in ("semantic_mean.pt", "semantic_std.pt", "disease_classifier.ckpt", "autoencoderkl.pth"):
        _as_if_saved_on_mps(d / name)
    with pytest.raises(Exception):  # what a plain torch.load does on a machine without mps
        torch.load(d / "semantic_mean.pt", weights_only=True)
    model = load_model(d)
    assert "cn" in model.directions and float(model.directions["cn"].std.mean()) == 1.0


def test_public_api_is_importable_lazily():
    import LDAELib

    assert LDAELib.load_model is load_model
    with pytest.raises(AttributeError):
        LDAELib.nothing_here


def test_annotate_bundle_records_limitations_and_leaves_the_weights(tmp_path, small_bundle):
    b = Path(shutil.copytree(small_bundle, tmp_path / "b"))
    b.chmod(0o755)
    before = verify_bundle(b)
    plain = load_model(b)
    assert plain.limitations == {}
    annotate_bundle(b, limitations={"vary": "  variations do not look like a brain  "})
    after = verify_bundle(b)
    assert {f: h for f, h in after.items() if f.endswith(".safetensors")} == {f: h for f, h in before.items() if f.endswith(".safetensors")}
    model = load_model(b)
    assert model.limitations == {"vary": "variations do not look like a brain"}
    assert model.identity["id"] != plain.identity["id"]  # the card changed, so caches keyed on it start afresh
    annotate_bundle(b, limitations={"edit": "weak"})  # adds; keeps the earlier note
    assert load_model(b).limitations == {"edit": "weak", "vary": "variations do not look like a brain"}
    annotate_bundle(b, limitations={"vary": "", "edit": ""})
    assert load_model(b).limitations == {}
    assert "limitations" not in json.loads((b / "ldae_bundle.json").read_text())["source"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temporary copy left beside it
    assert b.stat().st_mode & 0o777 == 0o755  # as readable as before


def test_annotate_bundle_changes_how_inputs_reach_the_grid_not_the_grid(tmp_path, small_bundle):
    b = Path(shutil.copytree(small_bundle, tmp_path / "b"))
    before = load_model(b)
    assert before.config.space.antialias is False
    weights = {f: h for f, h in verify_bundle(b).items() if f.endswith(".safetensors")}
    annotate_bundle(b, space={"antialias": True})
    after = load_model(b)
    assert after.config.space.antialias is True
    assert (after.config.space.spacing_mm, after.config.space.shape) == (before.config.space.spacing_mm, before.config.space.shape)
    assert {f: h for f, h in verify_bundle(b).items() if f.endswith(".safetensors")} == weights
    assert after.identity["id"] != before.identity["id"]
    card = (b / "ldae_bundle.json").read_bytes()
    for bad, message in (({"shape": [8, 8, 8]}, "fixed by the weights"), ({"antialias": "yes"}, "antialias must be"),
                         ({"blur": 1}, "Unknown model-space setting")):
        with pytest.raises(LDAEError, match=message):
            annotate_bundle(b, space=bad)
    assert (b / "ldae_bundle.json").read_bytes() == card


def test_annotate_bundle_reorients_or_replaces_directions(tmp_path, small_bundle):
    """``directions``: edit_sign, scale, unit and meta of a direction change in the card; its probe
    tensors (and every weight) stay, and what cannot be changed this way is refused with nothing
    written. A whole ``Direction`` adds or replaces one, tensors included; the networks stay."""
    b = Path(shutil.copytree(small_bundle, tmp_path / "b"))
    before = load_model(b)
    weights = {f: h for f, h in verify_bundle(b).items() if f.endswith(".safetensors")}
    annotate_bundle(b, directions={"disease": {"edit_sign": -1, "meta": {"rendered": {"flipped": True}}}})
    after = load_model(b)
    d0, d1 = before.directions["disease"], after.directions["disease"]
    assert d1.edit_sign == -1 and d1.meta == {"rendered": {"flipped": True}} and torch.equal(d1.weight, d0.weight)
    y = torch.randn(2, d0.dim)
    assert torch.allclose(d1.apply(y, 1.0), d0.apply(y, -1.0), atol=1e-5)
    assert {f: h for f, h in verify_bundle(b).items() if f.endswith(".safetensors")} == weights
    assert after.identity["id"] != before.identity["id"]
    card = (b / "ldae_bundle.json").read_bytes()
    for bad, message in (({"age": {"edit_sign": -1}}, "no direction"), ({"disease": {"edit_sign": 3}}, "edit_sign must be"),
                         ({"disease": {"bias": 1.0}}, "cannot be changed here"), ({"disease": {"scale": 0}}, "scale must be")):
        with pytest.raises(LDAEError, match=message):
            annotate_bundle(b, directions=bad)
    assert (b / "ldae_bundle.json").read_bytes() == card

    from LDAELib.directions import Direction

    g = torch.Generator().manual_seed(9)
    age = Direction("age", torch.randn(d0.dim, generator=g), torch.zeros(d0.dim), torch.ones(d0.dim), positive="older", scale=0.3, edit_sign=-1)
    annotate_bundle(b, directions={"age": age, "disease": {"alpha_unit": "the groups' gap"}})
    whole = load_model(b)
    assert set(whole.directions) == {"disease", "age"} and torch.equal(whole.directions["age"].weight, age.weight)
    assert (whole.directions["age"].scale, whole.directions["age"].edit_sign) == (pytest.approx(0.3), -1)
    assert torch.equal(whole.directions["disease"].weight, d0.weight) and whole.directions["disease"].alpha_unit == "the groups' gap"
    assert {f: h for f, h in verify_bundle(b).items() if f.endswith(".safetensors") and f != "directions.safetensors"} == \
        {f: h for f, h in weights.items() if f != "directions.safetensors"}


def test_annotate_bundle_refuses_bad_requests_and_changes_nothing(tmp_path, small_bundle):
    b = Path(shutil.copytree(small_bundle, tmp_path / "b"))
    card = (b / "ldae_bundle.json").read_bytes()
    with pytest.raises(LDAEError, match="unknown operation"):
        annotate_bundle(b, limitations={"dance": "no"})
    with pytest.raises(LDAEError, match="not an LDAE bundle"):
        annotate_bundle(tmp_path, limitations={"vary": "x"})
    data = b / "autoencoder.safetensors"
    data.write_bytes(data.read_bytes()[:-1] + b"\0")
    with pytest.raises(LDAEError, match="SHA-256"):
        annotate_bundle(b, limitations={"vary": "x"})
    assert (b / "ldae_bundle.json").read_bytes() == card
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_malformed_limitations_are_ignored(small_bundle):
    model = load_model(small_bundle)
    model.identity["source"] = {"limitations": ["vary"]}
    assert model.limitations == {}
    model.identity["source"] = {"limitations": {"vary": 3, "edit": " ", "interpolate": "blurred"}}
    assert model.limitations == {"interpolate": "blurred"}


def test_documents_can_join_a_bundle_and_are_then_checked_like_its_weights(tmp_path, small_bundle):
    """A model card added with annotate_bundle is listed in the manifest (so it is verified), and
    saving with float16 storage halves the weight files and reads back as float32."""
    import shutil

    from LDAELib.weights import load_model
    from LDAELib.weights.bundle import annotate_bundle, save_bundle

    b = Path(shutil.copytree(small_bundle, tmp_path / "b"))
    annotate_bundle(b, documents={"README.md": "# Model card\n"})
    model = load_model(b)
    assert "README.md" in model.identity["files"]
    (b / "README.md").write_text("# edited\n")
    with pytest.raises(LDAEError, match="README.md"):
        load_model(b)
    with pytest.raises(LDAEError, match="plain file name"):
        annotate_bundle(small_bundle, documents={"../x.md": "no"})
    half = save_bundle(load_model(small_bundle), tmp_path / "half", dtype=torch.float16)
    full = sum((small_bundle / f).stat().st_size for f in ("shift_unet.safetensors", "autoencoder.safetensors"))
    assert sum((half / f).stat().st_size for f in ("shift_unet.safetensors", "autoencoder.safetensors")) < 0.55 * full
    assert next(load_model(half).shift_unet.parameters()).dtype == torch.float32
