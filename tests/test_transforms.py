"""Box-aware online augmentation for detection (torchvision.transforms.v2), seeded per sample."""

import torch
from torchvision.transforms import v2

from frelon.data.transforms import Letterbox, apply, detection_transform


def picture():
    """A 60x100 image with a white box at x 10..29, y 5..24 (XYWH [10, 5, 20, 20])."""
    image = torch.zeros(3, 60, 100, dtype=torch.uint8)
    image[:, 5:25, 10:30] = 255
    return image, [[10.0, 5.0, 20.0, 20.0]], [3]


def test_a_flip_moves_the_box_with_the_pixels():
    image, boxes, labels = picture()
    flip = v2.Compose([v2.ConvertBoundingBoxFormat("XYXY"), v2.RandomHorizontalFlip(1.0)])
    out_image, target = apply(flip, image, boxes, labels, seed=0, epoch=0, index=0)
    assert target["boxes"].tolist() == [[70.0, 5.0, 90.0, 25.0]]  # x -> 100 - x
    assert out_image[0, 5:25, 70:90].min() == 255 and out_image[0, 5:25, 10:30].max() == 0


def test_training_augmentation_keeps_boxes_on_their_object_and_is_seeded_per_sample():
    image, boxes, labels = picture()
    transform = detection_transform(Letterbox(60, 100, 64), train=True, options={"brightness": 0, "contrast": 0, "saturation": 0})
    checked = 0
    for index in range(20):
        out_image, target = apply(transform, image, boxes, labels, seed=0, epoch=1, index=index)
        assert out_image.shape == (3, 64, 64) and out_image.dtype == torch.float32
        if target["dropped"]:
            assert len(target["labels"]) == 0
            continue
        x0, y0, x1, y1 = target["boxes"][0].round().int().tolist()
        inside = out_image[0, y0 + 2:y1 - 2, x0 + 2:x1 - 2]
        if inside.numel() >= 4:  # the box still frames the white square
            assert inside.mean() > 0.8
            checked += 1
    assert checked >= 10
    a = apply(transform, image, boxes, labels, seed=0, epoch=1, index=7)
    b = apply(transform, image, boxes, labels, seed=0, epoch=1, index=7)
    c = apply(transform, image, boxes, labels, seed=0, epoch=2, index=7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    assert not torch.equal(a[0], c[0])


def test_evaluation_letterboxes_the_image_without_stretching_it():
    image, boxes, labels = picture()  # 60 x 100: scaled by 0.5 to 30 x 50, centred with 10 rows above
    letterbox = Letterbox(60, 100, 50)
    out_image, target = apply(detection_transform(letterbox, train=False), image, boxes, labels, seed=0, epoch=0,
                              index=0)
    assert out_image.shape == (3, 50, 50)
    assert torch.allclose(target["boxes"], torch.tensor([[5.0, 12.5, 15.0, 22.5]]))
    assert out_image[:, :10].max() == 0 and out_image[:, 40:].max() == 0  # padding, not picture
    assert target["labels"].tolist() == [3] and target["dropped"] == 0
    assert torch.allclose(letterbox.to_original(target["boxes"]), torch.tensor([[10.0, 5.0, 30.0, 25.0]]))


def test_boxes_mapped_back_are_clipped_to_the_original_image():
    letterbox = Letterbox(60, 100, 50)
    assert letterbox.to_original(torch.tensor([[-4.0, 0.0, 60.0, 50.0]])).tolist() == [[0.0, 0.0, 100.0, 60.0]]


def test_a_box_pushed_out_of_the_picture_is_dropped_and_counted():
    image, boxes, labels = picture()
    shift = v2.Compose([v2.ConvertBoundingBoxFormat("XYXY"),
                        v2.RandomAffine(degrees=0, translate=(0.9, 0.0)), v2.ClampBoundingBoxes(),
                        v2.SanitizeBoundingBoxes(min_size=1)])
    dropped = [apply(shift, image, boxes, labels, seed=0, epoch=0, index=i)[1]["dropped"] for i in range(30)]
    assert 0 < sum(dropped) < 30
