"""Scans on disk (LDAELib.inference.image and .space): geometry as every reader sees it, Slicer's own
formats, no identifying header text in results, and the voxel order never changing what the network sees."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from LDAELib.cli import main
from LDAELib.inference.image import read_image, write_image
from LDAELib.inference.space import to_model
from LDAELib.testing import make_tiny_bundle, phantom_brain, tiny_config

SHAPE, SPACING = (45, 54, 45), 4.0


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("model") / "tiny")


def _itk_geometry(path):
    img = sitk.ReadImage(str(path))
    return np.array(img.GetOrigin()), np.array(img.GetDirection()), np.array(img.GetSpacing())


def _disagreeing(path, codes=(1, 2)):
    """A scan whose qform and sform disagree (or, with codes (0, 0), are both unset)."""
    data, s_aff = phantom_brain(SHAPE, SPACING, intensity=80.0)
    q_aff = np.diag([SPACING, SPACING, SPACING, 1.0])
    q_aff[:3, 3] = [-40.0, -130.0, -60.0]
    img = nib.Nifti1Image(data, s_aff)
    img.set_qform(q_aff, codes[0])
    img.set_sform(s_aff, codes[1])
    img.header["descrip"] = b"Jane Doe 1961-04-01"
    img.header["db_name"] = b"PATIENT-42"
    img.header["aux_file"] = b"mrn 123456"
    img.header["intent_name"] = b"ward 7"
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"Jane Doe, MRN 123456"))
    nib.save(img, str(path))
    return path


@pytest.mark.parametrize("codes", [(1, 2), (0, 0), (2, 0)])
def test_results_land_where_itk_and_nibabel_see_the_source(tmp_path, codes):
    src = _disagreeing(tmp_path / "in.nii.gz", codes)
    image = read_image(src)
    write_image(tmp_path / "out.nii.gz", image, image.data * 0.5, "LDAE test")
    for a, b in zip(_itk_geometry(src), _itk_geometry(tmp_path / "out.nii.gz")):  # Slicer's reader
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(nib.load(str(src)).affine, nib.load(str(tmp_path / "out.nii.gz")).affine, atol=1e-5)


def test_results_carry_no_identifying_header_text(tmp_path):
    src = _disagreeing(tmp_path / "in.nii.gz")
    image = read_image(src)
    write_image(tmp_path / "out.nii.gz", image, image.data, "LDAE reconstruction T=2")
    h = nib.load(str(tmp_path / "out.nii.gz")).header
    assert h["descrip"].tobytes().rstrip(b"\0") == b"LDAE reconstruction T=2"
    for field in ("db_name", "aux_file", "intent_name"):
        assert h[field].tobytes().strip(b"\0") == b"", field
    assert len(h.extensions) == 0


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nhdr", ".mhd"])
def test_slicer_formats_are_read_with_itk_geometry(tmp_path, suffix):
    data, affine = phantom_brain(SHAPE, SPACING, intensity=80.0)
    ref = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(ref))
    path = tmp_path / f"scan{suffix}"
    sitk.WriteImage(sitk.ReadImage(str(ref)), str(path))
    image = read_image(path)
    np.testing.assert_allclose(image.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(image.data, data)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nii"])
def test_an_edit_can_be_read_from_and_written_to_slicers_formats(tmp_path, bundle, capsys, suffix):
    data, affine = phantom_brain(SHAPE, SPACING, intensity=80.0)
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "ref.nii.gz"))
    src = tmp_path / f"scan{suffix}"
    sitk.WriteImage(sitk.ReadImage(str(tmp_path / "ref.nii.gz")), str(src))
    out = tmp_path / f"edited{suffix}"
    code = main([str(x) for x in ["edit", src, out, "--model", bundle, "--direction", "cn", "--alpha", "1", "--steps", "2",
                                  "--threads", "1", "-q", "--registered"]])
    assert code == 0, capsys.readouterr().err
    for a, b in zip(_itk_geometry(src), _itk_geometry(out)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert json.loads((tmp_path / "edited.json").read_text())["operation"] == "edit"


def test_the_voxel_order_does_not_change_what_the_network_sees():
    """The same registered brain stored L,A,S (the MNI grid's order) and R,A,S, P,I,… reaches model space identically,
    and each result goes back to its own file's order."""
    data, affine = phantom_brain(SHAPE, SPACING, intensity=80.0)
    space = tiny_config().space
    base = to_model(read_image_like(data, affine), "mni", space)
    flips = np.diag([-1.0, 1.0, 1.0, 1.0])
    flips[0, 3] = SHAPE[0] - 1
    ras = read_image_like(data[::-1].copy(), affine @ flips)  # R,A,S storage of the same brain
    perm = read_image_like(np.ascontiguousarray(data.transpose(1, 0, 2)), affine[:, [1, 0, 2, 3]])  # axes swapped
    for other in (ras, perm):
        prepared = to_model(other, "mni", space)
        np.testing.assert_array_equal(prepared.x, base.x)
        back = prepared.to_source(prepared.x)
        assert back.shape == other.data.shape
        np.testing.assert_allclose(back, to_model(other, "mni", space).to_source(base.x), atol=1e-6)
    # the way back puts a result on the source's own voxel order
    y = base.to_source(base.x)
    np.testing.assert_allclose(to_model(ras, "mni", space).to_source(base.x), y[::-1], atol=1e-4)


def read_image_like(data, affine):
    from LDAELib.inference.image import Image

    return Image(np.asarray(data, dtype=np.float32), np.asarray(affine, dtype=np.float64))


def test_the_default_precision_reproduces_the_float32_pipeline(official_dir, tmp_path, capsys):
    """``ldae`` with no precision option computes what the all-float32 pipeline computes (the authors'
    numbers), on every CPU: the fast decoder is one option away (--fast-decode)."""
    import torch

    from conftest import load_fixture
    from LDAELib.pipeline import LDAEPipeline
    from LDAELib.weights import load_model

    x = load_fixture("pipeline_autoencode_ddim3.pt")["x_image"][0, 0].numpy()
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    nib.save(nib.Nifti1Image(x, affine), str(tmp_path / "x.nii.gz"))
    code = main([str(a) for a in ["reconstruct", tmp_path / "x.nii.gz", tmp_path / "r.nii.gz", "--model", official_dir, "--steps", "3",
                                  "--model-space", "-q", "--threads", "2"]])
    assert code == 0, capsys.readouterr().err
    got = np.asarray(nib.load(str(tmp_path / "r.nii.gz")).dataobj)
    want = LDAEPipeline(load_model(official_dir)).reconstruct(torch.from_numpy(x), 3)[0, 0].numpy()
    scale = float(np.abs(want).max())
    assert float(np.abs(got - want).max()) <= 2e-4 * scale  # oneDNN sums in another order; the DDIM loop amplifies it
    assert json.loads((tmp_path / "r.json").read_text())["decode_dtype"] == "float32"
    from LDAELib.accel import cpu_has_fast_bf16

    if cpu_has_fast_bf16():  # where the fast decoder exists, it is the one that trades exactness (and says so)
        code = main([str(a) for a in ["reconstruct", tmp_path / "x.nii.gz", tmp_path / "f.nii.gz", "--model", official_dir, "--steps", "3",
                                      "--model-space", "-q", "--threads", "2", "--fast-decode"]])
        assert code == 0
        fast = np.asarray(nib.load(str(tmp_path / "f.nii.gz")).dataobj)
        assert float(np.abs(fast - want).max()) > 1e-3 * scale
        assert json.loads((tmp_path / "f.json").read_text())["decode_dtype"] == "bfloat16"
