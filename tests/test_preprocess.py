import math

import numpy as np
import pytest
import torch
from PIL import Image

from fos.config import PreprocessCfg
from fos.data import load_sfosd_test
from fos.composite import fit_composite, stretch_composite, teacher_input, teacher_view
from fos.preprocess import (
    GEOMETRY_DIM, InputError, enlarged_box, foreground_input, geometry_batch, load_image,
    norm_to_pixel_box, prepare_background, to_tensor, validate_box,
)

GRAY = (128 / 255 - 0.5) / 0.5


def solid(w, h, rgb):
    return Image.new("RGB", (w, h), rgb)


@pytest.mark.data
def test_norm_box_matches_fosd_int_rule_and_fg_size(data_root):
    assert norm_to_pixel_box([0.05, 0.3615, 0.365625, 0.69014], 320, 213) == (16, 76, 117, 146)  # int(76.99) = 76
    ts = load_sfosd_test(data_root)
    q = ts.categories["cow"].queries[0]
    bg = Image.open(q.bg_path)
    x1, y1, x2, y2 = norm_to_pixel_box(q.bbox, *bg.size)
    fg = Image.open(ts.categories["cow"].fg_paths[ts.categories["cow"].fg_names.index(q.name)])
    assert fg.size == (x2 - x1, y2 - y1)  # the pack crops each foreground to its box


def test_enlarged_box_hand_computed():
    # w = h = 100 -> each side grows by int(100 * (sqrt2 - 1) / 2) = 20
    assert enlarged_box((100, 50, 200, 150), 320, 240) == (80, 30, 220, 170)
    # clamped at the image border
    assert enlarged_box((0, 0, 50, 40), 320, 240) == (0, 0, 60, 48)
    x1, y1, x2, y2 = enlarged_box((100, 100, 200, 200), 1000, 1000)
    assert (x2 - x1) * (y2 - y1) == pytest.approx(2 * 100 * 100, rel=0.02)  # about twice the area


def test_background_input_fills_box_gray():
    prep = prepare_background(solid(320, 240, (255, 0, 0)), (160, 0, 320, 240), PreprocessCfg(student_view="whole"))
    assert prep.tensor.shape == (3, 224, 224)
    assert torch.allclose(prep.tensor[:, 100, 200], torch.full((3,), GRAY), atol=1e-6)
    assert torch.allclose(prep.tensor[:, 100, 20], torch.tensor([1.0, -1.0, -1.0]))
    # crop box: add_w = int(160*0.2071) = 33, add_h = int(240*0.2071) = 49 (clamped) -> (127, 0, 320, 240)
    assert prep.crop_box == (127, 0, 320, 240)
    assert prep.crop_box_net.tolist() == [float(int(127 / 320 * 224)), 0.0, 224.0, 224.0]


def test_context_view_hand_computed():
    """The default student view: the box grown 2x per side; the RoI is the teacher's crop inside it."""
    prep = prepare_background(solid(400, 400, (255, 0, 0)), (150, 150, 250, 250))
    # view: add int(100 * (2 - 1) / 2) = 50 per side -> (100, 100, 300, 300), 200 px shown at 224
    assert prep.view_box == (100, 100, 300, 300)
    # teacher crop: add int(100 * 0.2071) = 20 -> (130, 130, 270, 270); in the view (30, 30, 170, 170)
    assert prep.crop_box == (130, 130, 270, 270)
    assert prep.crop_box_net.tolist() == [float(int(30 / 200 * 224)), float(int(30 / 200 * 224)),
                                          float(int(170 / 200 * 224)), float(int(170 / 200 * 224))]
    # the gray box spans (50..150) / 200 * 224 = 56..168 of the input; red around it
    assert torch.allclose(prep.tensor[:, 112, 112], torch.full((3,), GRAY), atol=1e-6)
    assert torch.allclose(prep.tensor[:, 20, 20], torch.tensor([1.0, -1.0, -1.0]))
    # clamped at the border: the view stops at the image
    assert prepare_background(solid(400, 400, (255, 0, 0)), (0, 0, 100, 100)).view_box == (0, 0, 150, 150)
    # a saved config without the field is refused, not read as some default view
    with pytest.raises(ValueError, match="lacks the fields .*student_view"):
        PreprocessCfg.from_dict({"image_size": 224})
    with pytest.raises(ValueError, match="student_view"):
        PreprocessCfg(student_view="box")


def test_teacher_composite_geometry():
    bg = solid(400, 400, (255, 0, 0))
    prep = prepare_background(bg, (100, 100, 200, 300))  # box 100x200 -> crop (80, 59, 220, 341)
    assert prep.crop_box == (80, 59, 220, 341)
    comp = np.asarray(teacher_view(prep, stretch_composite(prep, solid(30, 30, (0, 0, 255)))))
    assert comp.shape == (224, 224, 3)
    blue = (comp[..., 2] > 200) & (comp[..., 0] < 50)
    # the foreground fills the box: 100*200 of 140*282 crop pixels
    assert blue.mean() == pytest.approx(100 * 200 / (140 * 282), abs=0.02)
    assert blue[112, 112] and not blue[2, 2] and comp[2, 2, 0] > 200


def test_foreground_padded_square_white():
    x = foreground_input(solid(100, 50, (0, 0, 0)))
    assert x.shape == (3, 224, 224)
    assert torch.allclose(x[:, 5, 112], torch.ones(3))  # top padding is white
    assert torch.allclose(x[:, 112, 112], -torch.ones(3))  # object is black


def test_to_tensor_normalization():
    t = to_tensor(np.array([[[0, 128, 255]]], dtype=np.uint8), PreprocessCfg())
    assert torch.allclose(t.flatten(), torch.tensor([-1.0, 128 / 255 * 2 - 1, 1.0]), atol=1e-6)


def test_geometry_features():
    # box 200x100 (aspect 2, area 20000); cutout 50x100 (aspect 0.5, area 5000): scale sqrt(4) = 2
    g = geometry_batch((0, 0, 200, 100), [(50, 100)])[0, :5]
    assert g == pytest.approx([math.log(2), math.log(0.5), math.log(4), math.log(2), math.log(2)])
    many = geometry_batch((10, 10, 110, 60), [(100, 50), (400, 200), (25, 50)])  # box 100x50
    assert many.shape == (3, GEOMETRY_DIM) and many.dtype == np.float32
    assert many[:, 3] == pytest.approx([0.0, -math.log(4), math.log(2)])
    assert many[:, 2] == pytest.approx([0.0, 0.0, math.log(4)]) and (many[:, 4] == np.abs(many[:, 3])).all()
    assert np.array_equal(many[1], geometry_batch((10, 10, 110, 60), [(400, 200)])[0], equal_nan=True)
    assert np.isnan(many[:, 5:]).all()  # colour statistics not given: NaN, never a silent zero
    ring, fgc = np.arange(6, dtype=np.float32), np.arange(18, dtype=np.float32).reshape(3, 6) / 10
    full = geometry_batch((10, 10, 110, 60), [(100, 50), (400, 200), (25, 50)], ring, fgc)
    assert np.array_equal(full[:, :5], many[:, :5]) and (full[:, 5:11] == ring).all() and np.allclose(full[:, 11:], fgc)


def test_colour_statistics_by_hand():
    from fos.preprocess import colour_stats, foreground_colour, prepare_background

    # mid gray: L = 53.39 (CIE), a = b = 0; white and black: L = 100 and 0
    gray = colour_stats(np.full((10, 3), 128, np.uint8))
    assert gray == pytest.approx([0.5339, 0, 0, 0, 0, 0], abs=2e-3)
    half = colour_stats(np.array([[0, 0, 0], [255, 255, 255]], np.uint8))
    assert half[[0, 3]] == pytest.approx([0.5, 0.5], abs=1e-3)
    red = colour_stats(np.array([[255, 0, 0]], np.uint8))  # sRGB red: L 53.2, a 80.1, b 67.2
    assert red[:3] == pytest.approx([0.532, 80.1 / 128, 67.2 / 128], abs=5e-3)
    # a cutout's statistics are its object pixels only (white is the surround)
    fg = Image.new("RGB", (20, 20), (255, 255, 255))
    fg.paste((255, 0, 0), (5, 5, 15, 15))
    assert foreground_colour(fg) == pytest.approx(red, abs=1e-4)
    # a background's ring statistics leave the box out
    bg = Image.new("RGB", (100, 80), (255, 0, 0))
    bg.paste((0, 0, 255), (40, 30, 60, 50))
    assert prepare_background(bg, (40, 30, 60, 50)).ring_colour == pytest.approx(red, abs=1e-4)


@pytest.mark.parametrize("box,msg", [
    (None, "no box given"),
    ((10, 10, 400, 50), "inside the 320x240 image"),
    ((-1, 0, 10, 10), "inside the 320x240 image"),
    ((50, 50, 50, 90), "empty or too small"),
    ((0.1, 0.2, 0.5, 0.6), "looks normalised to 0..1, but boxes are in pixels: multiply x by 320"),
    ((float("nan"), 0, 10, 10), "finite"),
    ("abc", "four numbers"),
])
def test_bad_boxes(box, msg):
    with pytest.raises(InputError, match=msg):
        validate_box(box, 320, 240)


def test_bad_images(tmp_path):
    p = tmp_path / "x.jpg"
    p.write_text("this is not an image")
    with pytest.raises(InputError, match="could not be read as an image"):
        load_image(str(p))
    with pytest.raises(InputError, match="does not exist"):
        load_image(str(tmp_path / "missing.png"))
    big = tmp_path / "big.png"
    solid(300, 300, (0, 0, 0)).save(big)
    with pytest.raises(InputError, match="over the limit"):
        load_image(str(big), cfg=PreprocessCfg(max_pixels=10_000))
    assert load_image(big.read_bytes()).size == (300, 300)
    # past PIL's own decompression-bomb limit (2 x 89 MP) the message is still ours, from the header alone
    huge = tmp_path / "huge.png"
    import zlib

    w = h = 20000
    raw = zlib.compress(b"".join(b"\x00" + b"\x00" * w for _ in range(2)))  # 2 rows are enough for the header
    import struct

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)

    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    with pytest.raises(InputError, match="20000x20000 = 400 MP, over the limit of 40 MP; downscale it first"):
        load_image(str(huge))


def test_transparent_png_is_flattened_on_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(load_image(rgba)).min() == 255


def test_fit_composite_keeps_aspect_skips_white_and_has_no_fringe():
    bg = prepare_background(solid(200, 200, (0, 255, 0)), (50, 50, 150, 150))
    fg = solid(100, 50, (255, 255, 255))
    fg.paste(solid(80, 50, (0, 0, 255)), (10, 0))  # object 80x50 with white margins
    out = np.asarray(fit_composite(bg, fg))
    assert out.shape == (200, 200, 3)
    blue = (out[..., 2] > 200) & (out[..., 1] < 50)
    ys, xs = np.nonzero(blue)
    # object scaled by min(100/80, 100/50) = 1.25 -> 100x62, standing on the box bottom; the matte is
    # eroded by one pixel and feathered, so the solid blue stays within a pixel or two of those edges
    assert 50 <= xs.min() <= 52 and 147 <= xs.max() <= 149
    assert 147 <= ys.max() <= 149 and 149 - ys.min() + 1 == pytest.approx(62, abs=3)
    assert tuple(out[60, 100]) == (0, 255, 0)  # above the object the original photo stays (not gray)
    # no white fringe anywhere: every pixel is a mix of the blue object and the green background
    assert (out.min(axis=2) < 128).all()
    with pytest.raises(InputError, match="no object pixels"):
        fit_composite(bg, solid(10, 10, (255, 255, 255)))


def test_teacher_input_by_rule():
    bg = prepare_background(solid(400, 400, (0, 255, 0)), (100, 100, 200, 300))
    fg = solid(50, 50, (0, 0, 255))
    stretch, fit = teacher_input(bg, fg), teacher_input(bg, fg, rule="fit")
    blue = lambda t: ((t[2] > 0.5) & (t[1] < -0.5)).float().mean().item()  # noqa: E731
    # stretch fills the 100x200 box, fit a 100x100 square of it (the same crop around the box)
    assert blue(stretch) == pytest.approx(100 * 200 / (140 * 282), abs=0.02)
    assert blue(fit) == pytest.approx(100 * 100 / (140 * 282), abs=0.02)
    with pytest.raises(InputError, match="unknown composite rule"):
        teacher_input(bg, fg, rule="paste")
