"""`ldae demo` on the shipped example scans, its PNG previews, and the shipped example scans."""
import struct
import subprocess
import sys
import zlib

import nibabel as nib
import numpy as np
import pytest

from LDAELib.evaluation.previews import comparison_image, orthogonal_slices, write_png
from LDAELib.resources import example_scans


def read_png(path):
    """Decode an 8-bit gray/RGB PNG with filter 0 rows (what write_png writes), checking every CRC."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert zlib.crc32(tag + body) & 0xFFFFFFFF == crc, tag
        chunks.setdefault(tag, b"")
        chunks[tag] += body
        pos += 12 + n
    w, h, depth, color, *_ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    ch = {0: 1, 2: 3}[color]
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(h, 1 + w * ch)
    assert depth == 8 and (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(h, w, ch) if ch == 3 else raw[:, 1:].reshape(h, w)


def test_png_round_trip(tmp_path):
    img = (np.arange(5 * 7 * 3) % 256).astype(np.uint8).reshape(5, 7, 3)
    assert np.array_equal(read_png(write_png(tmp_path / "a.png", img)), img)
    gray = img[..., 0]
    assert np.array_equal(read_png(write_png(tmp_path / "g.png", gray)), gray)
    with pytest.raises(ValueError):
        write_png(tmp_path / "f.png", img.astype(np.float32))


def test_slices_follow_slicer_orientation():
    """A marker at the subject's right, anterior, superior corner appears top-left in the axial view
    (anterior up, the subject's right on the image's left), top-left in the coronal view and
    top-right in the sagittal view (anterior to the right), whatever the storage order."""
    vol = np.zeros((20, 24, 16), np.float32)
    vol[17, 20, 13] = 1.0  # x → R, y → A, z → S in an RAS affine
    ras = np.diag([2.0, 2.0, 2.0, 1.0])
    las = ras.copy(); las[0, 0] = -2.0  # noqa: E702
    flipped = vol[::-1].copy()  # the same subject stored L→R
    for data, affine in ((vol, ras), (flipped, las)):
        axial, coronal, sagittal = orthogonal_slices(data, affine, center=(17, 20, 13), pixel_mm=2.0)
        for view, (top, left) in ((axial, (True, True)), (coronal, (True, True)), (sagittal, (True, False))):
            r, c = np.unravel_index(np.argmax(view), view.shape)
            assert (r < view.shape[0] / 2) == top and (c < view.shape[1] / 2) == left


def test_comparison_image_has_three_rows_and_columns_and_shows_the_change():
    scan = example_scans()[0]
    img = nib.load(str(scan.path))
    src = np.asarray(img.dataobj, np.float32)
    res = src.copy()
    res[40:50, 50:60, 40:50] += 500.0
    out = comparison_image(src, res, img.affine, pixel_mm=2.0)
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    same = comparison_image(src, src, img.affine, pixel_mm=2.0)
    # identical volumes → a white (zero) difference column; a change → red somewhere
    third = out[:, 2 * out.shape[1] // 3 + 2:]
    assert ((third[..., 0] > 200) & (third[..., 1] < 60)).any()
    assert not ((same[..., 0] > 200) & (same[..., 1] < 60)).any()


def test_comparison_image_with_a_reference_adds_the_edit_column():
    """result − reference isolates the edit: a change shared by result and reference (the blur of a
    reconstruction) shows in the third column only, the edit in both."""
    scan = example_scans()[0]
    img = nib.load(str(scan.path))
    src = np.asarray(img.dataobj, np.float32)
    recon = src.copy()
    recon[20:30, 20:30, 40:50] += 500.0          # what the reconstruction changed
    res = recon.copy()
    res[60:70, 70:80, 40:50] += 500.0            # what the edit changed on top
    three = comparison_image(src, res, img.affine, pixel_mm=2.0)
    four = comparison_image(src, res, img.affine, pixel_mm=2.0, reference=recon)
    assert four.shape[0] == three.shape[0] and four.shape[1] > three.shape[1] * 1.2
    plain = comparison_image(src, recon, img.affine, pixel_mm=2.0, reference=recon)
    last = plain[:, 3 * plain.shape[1] // 4 + 2:]
    assert not ((last[..., 0] > 200) & (last[..., 1] < 60)).any()  # no edit → blank fourth column
    last = four[:, 3 * four.shape[1] // 4 + 2:]
    assert ((last[..., 0] > 200) & (last[..., 1] < 60)).any()
    with pytest.raises(ValueError, match="reference"):
        comparison_image(src, res, img.affine, reference=recon[:-1])


def test_example_scans_are_two_visits_of_one_subject():
    a, b = example_scans()
    assert a.subject == b.subject and a.months == 0 and b.months > a.months
    assert a.path.is_file() and b.path.is_file()
    ia, ib = nib.load(str(a.path)), nib.load(str(b.path))
    assert ia.shape == ib.shape == (91, 109, 91) and np.allclose(ia.affine, ib.affine)
    assert b.ventricles_ml > a.ventricles_ml and a.group == "disease"


@pytest.mark.slow
def test_demo_writes_outputs_and_previews(tmp_path, small_bundle):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "LDAELib.cli", "demo", str(out), "--model", str(small_bundle), "--steps", "1",
                        "--threads", "1", "-q"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    src = nib.load(str(example_scans()[0].path))
    names = sorted(p.name for p in (out / "previews").glob("*.png"))
    assert "reconstruction.png" in names and "interpolation.png" in names
    assert any(n.startswith("edit_") for n in names)
    for png in (out / "previews").glob("*.png"):
        assert read_png(png).shape[2] == 3
    for nii in list(out.glob("*.nii.gz")) + list((out / "interpolation").glob("*.nii.gz")):
        img = nib.load(str(nii))
        assert img.shape == src.shape and np.allclose(img.affine, src.affine)
        assert nii.with_name(nii.name.replace(".nii.gz", ".json")).is_file()
    assert len(list((out / "interpolation").glob("*.nii.gz"))) == 3
