"""The detection input: the evaluation's letterbox, and training's one warp per image, seeded per sample, with
its colour jitter done on the whole batch."""

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from frelon.data.transforms import (COLOUR, Augmentation, Letterbox, Padded, apply, augmentation_options, crop_border,
                                    detection_transform, draw_augmentation, jitter_colour, training_matrix,
                                    warp_boxes, warp_image)
from frelon.errors import FrelonError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
STILL = Augmentation(zoom=1.0, shift=(0.0, 0.0), flip=False, colour=(1.0, 1.0, 1.0, 0.0))
NO_COLOUR = {"brightness": 0, "contrast": 0, "saturation": 0, "hue": 0}


def picture():
    """A 60x100 image with a white box at x 10..29, y 5..24 (XYWH [10, 5, 20, 20])."""
    image = torch.zeros(3, 60, 100, dtype=torch.uint8)
    image[:, 5:25, 10:30] = 255
    return image, [[10.0, 5.0, 20.0, 20.0]], [3]


def photo(height: int = 60, width: int = 100, seed: int = 0) -> Image.Image:
    """Random pixels: every resampling difference shows."""
    pixels = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return F.to_pil_image(pixels)


def test_a_flip_moves_the_box_with_the_pixels():
    image, boxes, labels = picture()
    flip = v2.Compose([v2.ConvertBoundingBoxFormat("XYXY"), v2.RandomHorizontalFlip(1.0)])
    out_image, target = apply(flip, image, boxes, labels, seed=0, epoch=0, index=0)
    assert target["boxes"].tolist() == [[70.0, 5.0, 90.0, 25.0]]  # x -> 100 - x
    assert out_image[0, 5:25, 70:90].min() == 255 and out_image[0, 5:25, 10:30].max() == 0


def test_evaluation_letterboxes_the_image_without_stretching_it():
    image, boxes, labels = picture()  # 60 x 100: scaled by 0.5 to 30 x 50, centred with 10 rows above
    letterbox = Letterbox(60, 100, 50)
    out_image, target = apply(detection_transform(letterbox), image, boxes, labels, seed=0, epoch=0, index=0)
    assert out_image.shape == (3, 50, 50)
    assert torch.allclose(target["boxes"], torch.tensor([[5.0, 12.5, 15.0, 22.5]]))
    assert out_image[:, :10].max() == 0 and out_image[:, 40:].max() == 0  # padding, not picture
    assert target["labels"].tolist() == [3] and target["dropped"] == 0
    assert torch.allclose(letterbox.to_original(target["boxes"]), torch.tensor([[10.0, 5.0, 30.0, 25.0]]))


def test_boxes_mapped_back_are_clipped_to_the_original_image():
    letterbox = Letterbox(60, 100, 50)
    assert letterbox.to_original(torch.tensor([[-4.0, 0.0, 60.0, 50.0]])).tolist() == [[0.0, 0.0, 100.0, 60.0]]


@pytest.mark.parametrize("height, width, size", [(60, 100, 64), (375, 500, 128), (77, 31, 96)])
def test_a_draw_of_no_zoom_shift_or_flip_gives_the_evaluation_input_exactly(height, width, size):
    image, letterbox = photo(height, width), Letterbox(height, width, size)
    boxes = [[3.0, 4.0, width / 2, height / 3]]
    evaluation, target = apply(detection_transform(letterbox), image, boxes, [1], seed=0, epoch=0, index=0)
    matrix = training_matrix(letterbox, STILL)
    assert torch.equal(warp_image(image, matrix, size), F.to_dtype(evaluation, torch.uint8, scale=True))
    warped, labels, dropped = warp_boxes(boxes, [1], matrix, size)
    assert torch.allclose(warped, target["boxes"]) and labels.tolist() == [1] and dropped == 0


def test_the_mirror_is_the_unmirrored_warp_flipped_with_x1_and_x2_swapped():
    image, letterbox = photo(61, 97), Letterbox(61, 97, 64)
    boxes = [[10.0, 5.0, 20.0, 30.0]]
    for augmentation in (STILL, STILL._replace(zoom=1.4, shift=(0.1, -0.05))):
        plain = training_matrix(letterbox, augmentation)
        mirrored = training_matrix(letterbox, augmentation._replace(flip=True))
        assert torch.equal(warp_image(image, mirrored, 64), warp_image(image, plain, 64).flip(-1))
        (x1, y1, x2, y2), = warp_boxes(boxes, [0], plain, 64)[0].tolist()
        assert warp_boxes(boxes, [0], mirrored, 64)[0][0].tolist() == pytest.approx([64 - x2, y1, 64 - x1, y2])


def test_a_zoom_in_interpolates_bilinearly_in_one_resampling():
    ramp = torch.arange(0, 256, 16, dtype=torch.uint8).view(1, 1, 16).expand(3, 16, 16)  # 16 steps left to right
    matrix = training_matrix(Letterbox(16, 16, 64), STILL._replace(zoom=2.0))  # x8 in all
    row = warp_image(F.to_pil_image(ramp.contiguous()), matrix, 64)[0, 32].int()
    assert len(row.unique()) > 40  # nearest-neighbour copies would keep 16 values
    assert (row.diff() >= 0).all() and row.diff().max() <= 3  # and a smooth ramp, not steps of 16


def test_pixels_the_picture_does_not_cover_are_black_and_out_is_filled():
    image = F.to_pil_image(torch.full((3, 20, 40), 200, dtype=torch.uint8))
    matrix = training_matrix(Letterbox(20, 40, 40), STILL._replace(zoom=0.5, shift=(0.25, 0.0)))
    out = torch.full((3, 40, 40), 7, dtype=torch.uint8)
    warped = warp_image(image, matrix, 40, out=out)
    assert warped.data_ptr() == out.data_ptr()
    # the 40x20 picture at half size, 20x10 centred, moved 10 right: x 20..40, y 15..25
    assert (warped[:, 15:25, 20:40] == 200).all() and warped[:, :15].max() == 0 and warped[:, :, :20].max() == 0
    with pytest.raises(ValueError, match="scale, offset and a left-right mirror only"):
        warp_image(image, torch.tensor([[1.0, 0.2, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64), 40)


def test_training_warps_keep_boxes_on_their_object_and_are_seeded_per_sample():
    image, boxes, labels = picture()
    pil, letterbox = F.to_pil_image(image), Letterbox(60, 100, 64)
    options = augmentation_options(NO_COLOUR)
    checked = flipped = 0
    for index in range(40):
        augmentation = draw_augmentation(options, seed=0, epoch=1, index=index, letterbox=letterbox)
        matrix = training_matrix(letterbox, augmentation)
        out, (box, _, dropped) = warp_image(pil, matrix, 64), warp_boxes(boxes, labels, matrix, 64)
        assert out.shape == (3, 64, 64) and out.dtype == torch.uint8
        if dropped:
            assert len(box) == 0
            continue
        x0, y0, x1, y1 = box[0].round().int().tolist()
        inside = out[0, y0 + 1:y1 - 1, x0 + 1:x1 - 1]
        if inside.numel() >= 4:  # the box still frames the white square, and nothing white lies outside it
            assert inside.float().mean() > 200
            outside = out[0].clone()
            outside[max(0, y0 - 1):y1 + 1, max(0, x0 - 1):x1 + 1] = 0
            assert outside.max() < 30
            checked += 1
        flipped += augmentation.flip
    assert checked >= 20 and 0 < flipped < checked
    draws = [draw_augmentation(options, seed=0, epoch=epoch, index=7, letterbox=letterbox) for epoch in (1, 1, 2)]
    assert draws[0] == draws[1] and draws[0] != draws[2]
    assert draw_augmentation(options, seed=1, epoch=1, index=7, letterbox=letterbox) != draws[0]


def test_the_draws_follow_centernets_ranges_and_settings_of_zero_switch_steps_off():
    o = augmentation_options({"crop": "shift", "hue": 0.1})
    draws = [draw_augmentation(o, seed=3, epoch=0, index=i) for i in range(2000)]
    zooms = torch.tensor([d.zoom for d in draws])
    assert 1 / 1.3 <= zooms.min() < 0.8 and 1.6 < zooms.max() <= 1 / 0.6  # a crop of 0.6-1.3 of the side
    shifts = torch.tensor([d.shift for d in draws])
    assert shifts.abs().max() <= 0.2 and shifts.abs().max() > 0.19
    assert 0.45 < sum(d.flip for d in draws) / len(draws) < 0.55
    colour = torch.tensor([d.colour for d in draws])
    assert (colour[:, :3] >= 0.6).all() and (colour[:, :3] <= 1.4).all() and colour[:, 3].abs().max() <= 0.1
    still = draw_augmentation(augmentation_options({"crop": "shift", "scale": [1, 1], "translate": 0, "flip": 0,
                                                      **NO_COLOUR}), 3, 0, 5)
    assert still == STILL


def test_the_random_crop_is_centernets_a_side_from_the_scales_centred_anywhere_in_the_image_but_its_border():
    letterbox, o = Letterbox(300, 500, 64), augmentation_options({})
    assert o["crop"] == "random" and o["scales"] == pytest.approx([0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3])
    draws = [draw_augmentation(o, seed=3, epoch=0, index=i, letterbox=letterbox) for i in range(4000)]
    sides = torch.tensor([1 / d.zoom for d in draws])
    for side in o["scales"]:  # each side equally often
        assert 0.10 < ((sides - side).abs() < 1e-9).float().mean() < 0.15, side
    centres = []
    for d in draws:  # the image point the crop centres on: the input's centre mapped back
        matrix = training_matrix(letterbox, d._replace(flip=False))
        centres.append(((torch.tensor([32.0, 32.0], dtype=torch.float64) - matrix[:, 2]) / matrix.diagonal()).tolist())
    x, y = torch.tensor(centres).T
    assert crop_border(128, 500) == 128 and crop_border(128, 300) == 128 and crop_border(128, 200) == 64
    assert 128 <= x.min() < 130 and 370 < x.max() <= 372 and 128 <= y.min() < 129.5 and 170.5 < y.max() <= 172
    for values, low, high in ((x, 128, 372), (y, 128, 172)):  # uniform: each quarter of the range a quarter
        quarters = ((values - low) / (high - low) * 4).floor().clamp(max=3).long().bincount(minlength=4) / len(values)
        assert (quarters - 0.25).abs().max() < 0.03
    assert crop_border(128, 96) == 32 and crop_border(128, 40) == 16 and crop_border(0, 40) == 0
    with pytest.raises(ValueError, match="give the image's letterbox"):
        draw_augmentation(o, 0, 0, 0)


def test_keep_resolution_pads_the_image_to_the_next_multiple_of_32_and_maps_boxes_back():
    padded = Padded(480, 640)
    assert padded.canvas == (512, 672) and (padded.left, padded.top) == (16, 16)
    assert Padded(512, 500).canvas == (544, 512)  # (side | 31) + 1: a side already a multiple gets 32 more
    boxes = torch.tensor([[16.0, 16.0, 116.0, 66.0], [600.0, 400.0, 700.0, 600.0]], dtype=torch.float64)
    assert padded.to_original(boxes).tolist() == [[0.0, 0.0, 100.0, 50.0], [584.0, 384.0, 640.0, 480.0]]
    image = torch.randint(0, 256, (3, 480, 640), dtype=torch.uint8)
    out, _ = apply(detection_transform(padded), image, [], [], 0, 0, 0)
    assert out.shape == (3, 512, 672) and torch.allclose(out[:, 16:496, 16:656], image.float() / 255, atol=1e-6)
    assert out[:, :16].abs().max() == 0 and out[:, :, 656:].abs().max() == 0


def test_wrong_augmentation_settings_are_named():
    with pytest.raises(FrelonError, match=r"detection.augment \['translate'\]: settings of crop: shift, but the "
                                          r"crop is random; set crop: shift"):
        augmentation_options({"translate": 0.2})
    with pytest.raises(FrelonError, match=r"detection.augment \['scales'\]: settings of crop: random"):
        augmentation_options({"crop": "shift", "scales": [1.0]})
    with pytest.raises(FrelonError, match="detection.augment.crop 'centre': unknown"):
        augmentation_options({"crop": "centre"})
    with pytest.raises(FrelonError, match="detection.augment.scales"):
        augmentation_options({"scales": [0.5, 0]})
    with pytest.raises(FrelonError, match=r"detection.augment \['flips'\]: unknown"):
        augmentation_options({"flips": 0.5})
    with pytest.raises(FrelonError, match="detection.augment.scale"):
        augmentation_options({"crop": "shift", "scale": [1.3, 0.6]})
    with pytest.raises(FrelonError, match="detection.augment.hue 0.7: must be between 0 and 0.5"):
        augmentation_options({"hue": 0.7})


def test_a_box_pushed_out_of_the_picture_is_dropped_with_its_label_and_counted():
    boxes, labels = [[10.0, 5.0, 20.0, 20.0], [60.0, 30.0, 30.0, 25.0]], [3, 5]
    letterbox, options = Letterbox(60, 100, 64), augmentation_options({"crop": "shift", "translate": 0.9})
    dropped = 0
    for index in range(30):
        matrix = training_matrix(letterbox, draw_augmentation(options, 0, 0, index))
        kept, kept_labels, lost = warp_boxes(boxes, labels, matrix, 64)
        assert len(kept) == len(kept_labels) == 2 - lost and set(kept_labels.tolist()) <= {3, 5}
        assert (kept >= 0).all() and (kept <= 64).all() and (kept[:, 2:] - kept[:, :2] >= 1).all()
        dropped += lost
    assert 0 < dropped < 60
    # a box left narrower than a pixel is dropped (1 px at a scale of 0.64); the others keep their labels
    kept, kept_labels, lost = warp_boxes([[99.0, 0.0, 1.0, 10.0], *boxes], [1, *labels],
                                         training_matrix(letterbox, STILL), 64)
    assert kept_labels.tolist() == [3, 5] and lost == 1 and len(kept) == 2


def per_image_colour(image: torch.Tensor, factors: dict[str, float]) -> torch.Tensor:
    """torchvision's adjust_* on one image, in COLOUR's order."""
    adjust = {"brightness": F.adjust_brightness, "contrast": F.adjust_contrast, "saturation": F.adjust_saturation,
              "hue": F.adjust_hue}
    for name in (n for n in COLOUR if n in factors):
        image = adjust[name](image, factors[name])
    return image


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("names", [COLOUR, ("contrast", "saturation"), ("brightness",), ("hue",)])
def test_the_batched_colour_jitter_is_torchvisions_image_by_image(device, names):
    generator = torch.Generator().manual_seed(len(names))
    images = torch.rand(5, 3, 24, 32, generator=generator)
    images[0] = images[0, :1]  # a grey image: no hue, no saturation to change
    factors = {name: torch.rand(5, generator=generator) * 1.2 + 0.2 for name in names if name != "hue"}
    if "hue" in names:
        factors["hue"] = torch.rand(5, generator=generator) - 0.5
    expected = torch.stack([per_image_colour(image, {n: float(f[b]) for n, f in factors.items()})
                            for b, image in enumerate(images)])
    got = jitter_colour(images.clone().to(device), {n: f.to(device) for n, f in factors.items()}).cpu()
    assert torch.allclose(got, expected, atol=1e-4 if "hue" in names else 1e-5, rtol=0)


def test_no_colour_factors_leave_the_images_untouched():
    images = torch.rand(2, 3, 8, 8)
    assert jitter_colour(images, {}) is images
    with pytest.raises(ValueError, match=r"colour operations \['gamma'\]: unknown"):
        jitter_colour(images, {"gamma": torch.ones(2)})
