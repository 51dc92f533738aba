"""Varied, muted backgrounds for the synthetic captioned images.

Real photographs (the ones bundled with scikit-image, so nothing is downloaded) give the images
the texture and clutter of crawled data; gradients and noise add variety. Every background is
desaturated and pulled toward mid-grey so that the saturated object colours stay unambiguous:
a caption saying "a red circle" must never be contradicted by a red region of the photo.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

# Photos bundled in skimage.data (loaded from the installed package, offline).
PHOTO_NAMES: tuple[str, ...] = (
    "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
    "camera", "coins", "moon", "grass", "gravel", "brick", "text", "page",
)
# Share of color kept when muting a background; the rest is replaced by the pixel's grey level.
SATURATION_KEPT = 0.3
# Contrast kept around mid-grey, so no background region is as dark or bright as a clean fill.
CONTRAST_KEPT = 0.75


@dataclass(frozen=True)
class Background:
    """A rendered background and the kind of it, which captions may mention."""

    image: Image.Image
    kind: str  # "photo" | "gradient" | "noise"


def _mute(rgb: np.ndarray) -> np.ndarray:
    """Desaturate and lower the contrast of a float (H, W, 3) image in [0, 255]."""
    grey = rgb.mean(axis=2, keepdims=True)
    mixed = grey + SATURATION_KEPT * (rgb - grey)
    return np.clip(128.0 + CONTRAST_KEPT * (mixed - 128.0), 0, 255).astype(np.uint8)


class BackgroundMaker:
    """Loads each bundled photo once, then cuts cheap random backgrounds from them.

    Loading is the slow part (a few hundred ms for the whole set); a background costs a crop, a
    resize and a blur of a small image, well under a millisecond at 128 px.
    """

    def __init__(self) -> None:
        import skimage.data  # imported here: only dataset generation needs it

        self.photos: list[Image.Image] = []
        for name in PHOTO_NAMES:
            arr = np.asarray(getattr(skimage.data, name)())
            if arr.ndim == 2:
                arr = np.repeat(arr[:, :, None], 3, axis=2)
            self.photos.append(Image.fromarray(_mute(arr[:, :, :3].astype(np.float32))))

    def make(self, rng: np.random.Generator, size: int) -> Background:
        """A `size` x `size` muted background, chosen and cut by `rng` (deterministic for it)."""
        kind = rng.choice(["photo", "gradient", "noise"], p=[0.6, 0.2, 0.2])
        if kind == "photo":
            image = self._photo(rng, size)
        elif kind == "gradient":
            image = self._gradient(rng, size)
        else:
            image = self._noise(rng, size)
        return Background(image=image, kind=str(kind))

    def _photo(self, rng: np.random.Generator, size: int) -> Image.Image:
        photo = self.photos[int(rng.integers(len(self.photos)))]
        w, h = photo.size
        side = int(min(w, h) * rng.uniform(0.35, 1.0))
        x0 = int(rng.integers(0, w - side + 1))
        y0 = int(rng.integers(0, h - side + 1))
        crop = photo.resize((size, size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        radius = float(rng.uniform(0.0, 2.0)) * size / 128
        return crop.filter(ImageFilter.GaussianBlur(radius)) if radius > 0.3 else crop

    @staticmethod
    def _gradient(rng: np.random.Generator, size: int) -> Image.Image:
        start, end = rng.uniform(0, 255, size=(2, 3))
        angle = rng.uniform(0, 2 * np.pi)
        ys, xs = np.mgrid[0:size, 0:size] / max(size - 1, 1)
        t = (np.cos(angle) * xs + np.sin(angle) * ys)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        rgb = start + t[:, :, None] * (end - start)
        return Image.fromarray(_mute(rgb))

    @staticmethod
    def _noise(rng: np.random.Generator, size: int) -> Image.Image:
        cells = int(rng.integers(3, 12))
        coarse = Image.fromarray(rng.integers(0, 256, size=(cells, cells, 3), dtype=np.uint8))
        blobs = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
        grain = rng.normal(0.0, 18.0, size=(size, size, 1))
        return Image.fromarray(_mute(blobs + grain))
