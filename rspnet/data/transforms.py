"""Sample transforms: uint8 numpy (image HxWx3, label HxW) -> normalised tensors.

Every transform is called as ``transform(image, label, index)``.  The training
transform draws its randomness from a ``torch.Generator`` seeded from
``(seed, epoch, index)`` rather than from global RNG state, so a sample's
augmentation depends only on which sample it is and in which epoch — not on the
number of DataLoader workers or on which worker happened to load it.
"""
from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F

from .labels import IGNORE_INDEX

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

_MEAN = torch.tensor(MEAN).view(3, 1, 1)
_STD = torch.tensor(STD).view(3, 1, 1)


def _image_to_float(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> float [3, H, W] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def _luma(image: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 grey of a [3, H, W] image, as [1, H, W]."""
    return (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None]


def _normalize(image: torch.Tensor) -> torch.Tensor:
    return (image - _MEAN) / _STD


def to_tensors(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain conversion: normalised FloatTensor[3,H,W], LongTensor[H,W]."""
    return (_normalize(_image_to_float(image)),
            torch.from_numpy(np.ascontiguousarray(label)).long())


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 picture -> FloatTensor[3,H,W] normalised as every data
    set's items (what a trained network expects)."""
    return _normalize(_image_to_float(image))


def denormalize(image: torch.Tensor) -> np.ndarray:
    """Normalised FloatTensor[3,H,W] (any device) -> uint8 HxWx3 picture."""
    rgb = image.detach().float().cpu() * _STD + _MEAN
    return (rgb.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def _resize(image: torch.Tensor, label: torch.Tensor,
            size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Image bilinear, label nearest.  'nearest-exact' picks the source pixel
    whose area contains the output pixel centre, the same pixel-centre
    convention as bilinear with align_corners=False, so the two stay aligned
    (plain 'nearest' is shifted by up to half a source pixel)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image, label
    downscale = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    image = F.interpolate(image[None], size=size, mode="bilinear",
                          align_corners=False, antialias=downscale)[0]
    label = F.interpolate(label[None, None].float(), size=size,
                          mode="nearest-exact")[0, 0].long()
    return image, label


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` in ``epoch`` of a run seeded ``seed``.
    Hashing with SeedSequence (instead of e.g. seed * P + index) keeps the
    streams of neighbouring (seed, epoch, index) triples unrelated."""
    return int(np.random.SeedSequence((seed, epoch, index)).generate_state(1, np.uint64)[0] >> 1)


class TrainTransform:
    """Random scale, random crop (with padding), horizontal flip, photometric
    jitter, normalisation.

    crop_size:   (H, W) of the output.
    base_size:   if given, the random scale is relative to this size instead of
                 the input's, so full-resolution Cityscapes can be trained at a
                 lower resolution with a single interpolation.
    scale_range: the random scale factor is uniform in this range.
    jitter:      brightness, contrast and saturation factors are uniform in
                 [1 - jitter, 1 + jitter]; 0 disables photometric jitter.
    class_crops: the probability that a crop is placed around one pixel of a
                 class drawn uniformly from the classes in the scaled label
                 (then one of its pixels uniformly, then the window uniformly
                 among those that hold that pixel), instead of uniformly over
                 the image: class-uniform sampling, so that a class with few
                 pixels (a rider, a pole) is in as many crops as one that
                 fills the picture.  0 (default) draws exactly what the plain
                 crop draws.
    seed:        base seed; call ``set_epoch`` so each epoch differs.

    Padding (where the scaled image is smaller than the crop) is 0 in the
    normalised image, i.e. the mean colour, and 255 (ignore) in the label.
    """

    def __init__(self, crop_size: tuple[int, int], base_size: tuple[int, int] | None = None,
                 scale_range: tuple[float, float] = (0.5, 2.0), flip: bool = True,
                 jitter: float = 0.3, class_crops: float = 0.0, seed: int = 0):
        if not 0.0 <= class_crops <= 1.0:
            raise ValueError(f"class_crops is a probability in [0, 1], got {class_crops}")
        self.class_crops = float(class_crops)
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.base_size = None if base_size is None else (int(base_size[0]), int(base_size[1]))
        self.scale_range = scale_range
        self.flip = flip
        self.jitter = jitter
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @staticmethod
    def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
        return lo + (hi - lo) * torch.rand((), generator=gen).item()

    def _jitter(self, image: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Brightness, contrast (towards the mean grey) and saturation (towards
        each pixel's grey), each clamped to [0, 1] as torchvision does."""
        j = self.jitter
        brightness, contrast, saturation = (self._uniform(gen, 1 - j, 1 + j) for _ in range(3))
        image = (image * brightness).clamp(0, 1)
        mean = _luma(image).mean()
        image = ((image - mean) * contrast + mean).clamp(0, 1)
        gray = _luma(image)
        return ((image - gray) * saturation + gray).clamp(0, 1)

    def _window(self, label: torch.Tensor, gen: torch.Generator) -> tuple[int, int]:
        """(top, left) of the crop window in the padded frame of the scaled
        ``label`` (see ``class_crops``)."""
        ch, cw = self.crop_size
        sh, sw = label.shape
        top_max, left_max = max(sh, ch) - ch, max(sw, cw) - cw
        if self.class_crops > 0 and torch.rand((), generator=gen).item() < self.class_crops:
            present = torch.unique(label)
            present = present[present != IGNORE_INDEX]
            if len(present):
                cls = present[int(torch.randint(len(present), (), generator=gen))]
                ys, xs = (label == cls).nonzero(as_tuple=True)
                k = int(torch.randint(len(ys), (), generator=gen))
                y, x = int(ys[k]), int(xs[k])
                t0, t1 = max(0, y - ch + 1), min(top_max, y)
                l0, l1 = max(0, x - cw + 1), min(left_max, x)
                return (t0 + int(torch.randint(t1 - t0 + 1, (), generator=gen)),
                        l0 + int(torch.randint(l1 - l0 + 1, (), generator=gen)))
        return (int(torch.randint(top_max + 1, (), generator=gen)),
                int(torch.randint(left_max + 1, (), generator=gen)))

    def __call__(self, image: np.ndarray, label: np.ndarray,
                 index: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index))
        img = _image_to_float(image)
        lbl = torch.from_numpy(np.ascontiguousarray(label)).long()

        scale = self._uniform(gen, *self.scale_range)
        base_h, base_w = self.base_size or img.shape[-2:]
        scaled = (max(1, round(base_h * scale)), max(1, round(base_w * scale)))
        img, lbl = _resize(img, lbl, scaled)

        # Padding goes to the bottom/right; the crop window is drawn in the
        # padded frame.  Only the part of the window that lies inside the image
        # is jittered and normalised, then written into a mean-coloured canvas.
        ch, cw = self.crop_size
        sh, sw = scaled
        top, left = self._window(lbl, gen)
        # Geometry is drawn before the photometric jitter so that the label of
        # a sample does not depend on the jitter setting.
        flip = self.flip and torch.rand((), generator=gen).item() < 0.5
        vh, vw = min(ch, sh - top), min(cw, sw - left)
        img = img[:, top:top + vh, left:left + vw]
        if self.jitter > 0:
            img = self._jitter(img, gen)
        out_img = torch.zeros(3, ch, cw)
        out_lbl = torch.full((ch, cw), IGNORE_INDEX, dtype=torch.long)
        out_img[:, :vh, :vw] = _normalize(img)
        out_lbl[:vh, :vw] = lbl[top:top + vh, left:left + vw]
        if flip:
            out_img, out_lbl = out_img.flip(-1), out_lbl.flip(-1)
        return out_img, out_lbl


class ValTransform:
    """Normalisation, optionally resizing to ``size`` (H, W) first (image
    bilinear, label nearest).  For official full-resolution evaluation leave
    ``size`` None."""

    def __init__(self, size: tuple[int, int] | None = None):
        self.size = None if size is None else (int(size[0]), int(size[1]))

    def __call__(self, image: np.ndarray, label: np.ndarray,
                 index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        img, lbl = to_tensors(image, label)
        if self.size is not None:
            img, lbl = _resize(img, lbl, self.size)
        return img, lbl


class TransformedSamples(torch.utils.data.Dataset):
    """A data set of raw samples (``sample(index)`` -> uint8 image, label)
    served through ``self.transform(image, label, index)``; ``set_epoch`` is
    forwarded to the transform so augmentations differ per epoch."""

    transform = None

    def sample(self, index: int):
        raise NotImplementedError

    def __getitem__(self, index: int):
        image, label = self.sample(index)
        return self.transform(image, label, index)

    def set_epoch(self, epoch: int) -> None:
        """Forwarded to the transform so augmentations differ per epoch."""
        if hasattr(self.transform, "set_epoch"):
            self.transform.set_epoch(epoch)


def worker_init_fn(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed Python's and NumPy's global RNGs from
    the per-worker torch seed.  rspnet's own transforms do not use global RNGs
    (see module docstring); this keeps any other code in a worker from sharing
    one forked NumPy state across workers."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
