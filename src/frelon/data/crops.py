"""A detection study's augmentation settings (`detection.augment`), whole: the defaults of the crop it
chooses, checked. Plain data, no imports of torch: the pipeline's spec step reads it."""

from __future__ import annotations

from frelon.errors import FrelonError

# A detection study's augmentation: flipped half the time, colour jitter 0.4 (the paper's PCA lighting is not
# applied), and one of two crops (`crop`):
# - random (the official code's default): a square crop of a side s x the image's longer side, s drawn
#   from `scales`, its centre uniform in the image less `border` pixels at each edge (halved until it
#   leaves room on the image's shorter sides);
# - shift (the official --not_rand_crop, uniform): s uniform in `scale`, the crop's centre moved from the
#   image's by up to `translate` of the input's side.
CROP_DEFAULTS = {"random": {"scales": [0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3], "border": 128},
                 "shift": {"scale": [0.6, 1.3], "translate": 0.2}}
AUGMENT_DEFAULTS = {"crop": "random", "flip": 0.5, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.0}


def detection_augment(options: dict | None) -> dict:
    """A detection study's `augment` settings, whole: AUGMENT_DEFAULTS and the chosen crop's defaults
    overridden by `options`; a setting of the other crop, or an unknown one, is named as an error."""
    options = dict(options or {})
    crop = options.get("crop", AUGMENT_DEFAULTS["crop"])
    if crop not in CROP_DEFAULTS:
        raise FrelonError(f"detection.augment.crop {crop!r}: unknown; give random (CenterNet's: scales, border) or "
                          f"shift (scale, translate)")
    known = set(AUGMENT_DEFAULTS) | set(CROP_DEFAULTS[crop])
    other = sorted(k for k in options if k not in known and any(k in c for c in CROP_DEFAULTS.values()))
    if other:
        mode = next(m for m, c in CROP_DEFAULTS.items() if other[0] in c)
        raise FrelonError(f"detection.augment {other}: settings of crop: {mode}, but the crop is {crop}; set "
                          f"crop: {mode}, or use {sorted(CROP_DEFAULTS[crop])}")
    unknown = sorted(set(options) - known)
    if unknown:
        raise FrelonError(f"detection.augment {unknown}: unknown; the settings are {sorted(known)}")
    return {**AUGMENT_DEFAULTS, **CROP_DEFAULTS[crop], **options}
