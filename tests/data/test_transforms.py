"""Augmentation: image/label alignment, padding, determinism, worker independence."""
import numpy as np
import pytest
import torch

from rspnet.data import (IGNORE_INDEX, MEAN, PALETTE, STD, SyntheticScenes, TrainTransform,
                         ValTransform, denormalize, worker_init_fn)
from rspnet.data.transforms import to_tensors


@pytest.fixture(scope="module")
def blocks():
    """A label of 8x8 blocks of random classes and an image whose colour is
    the palette colour of the label, so the label can be read back from the
    image wherever interpolation has not mixed two blocks."""
    rng = np.random.default_rng(0)
    label = np.kron(rng.integers(0, 19, (6, 9)), np.ones((8, 8), np.int64)).astype(np.uint8)
    return PALETTE[label], label


def _uniform_interior(label, radius):
    """Pixels whose (2r+1)^2 neighbourhood has one label, not 255.  Pixels
    near the crop edge are excluded: a block edge may lie just outside."""
    h, w = label.shape
    pad = np.pad(label, radius, constant_values=IGNORE_INDEX)
    same = np.ones_like(label, bool)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            same &= pad[dy:dy + h, dx:dx + w] == label
    return same & (label != IGNORE_INDEX)


@pytest.mark.parametrize("scale_range", [(0.5, 0.5), (2.0, 2.0), (0.5, 2.0)])
def test_image_and_label_stay_aligned(blocks, scale_range):
    image, label = blocks
    transform = TrainTransform(crop_size=(40, 56), scale_range=scale_range, jitter=0.0, seed=3)
    checked = 0
    for index in range(6):
        out_image, out_label = transform(image, label, index)
        assert out_image.shape == (3, 40, 56) and out_label.shape == (40, 56)
        lbl = out_label.numpy()
        # The bilinear (or, downscaling, antialiased) footprint of an output
        # pixel reaches at most to the source pixels that its two neighbours
        # take their nearest label from; where those agree with it, the colour
        # must be exactly that block's.
        interior = _uniform_interior(lbl, radius=1)
        rgb = denormalize(out_image).astype(int)
        expected = PALETTE[lbl[interior]].astype(int)
        assert np.abs(rgb[interior] - expected).max() <= 2
        checked += interior.sum()
    assert checked > 1000


def test_crop_padding_is_ignore_and_mean_colour(blocks):
    image, label = blocks                                # 48 x 72
    transform = TrainTransform(crop_size=(40, 56), scale_range=(0.5, 0.5), flip=False,
                               jitter=0.0)
    out_image, out_label = transform(image, label, 0)
    # Scaled to 24 x 36, placed top-left, the rest padding.
    assert (out_label[:24, :36] != IGNORE_INDEX).all()
    assert (out_label[24:] == IGNORE_INDEX).all() and (out_label[:, 36:] == IGNORE_INDEX).all()
    assert (out_image[:, 24:] == 0).all() and (out_image[:, :, 36:] == 0).all()
    mean_colour = np.round(np.array(MEAN) * 255)
    np.testing.assert_array_equal(denormalize(out_image)[30, 50], mean_colour)


def test_deterministic_per_seed_epoch_index(blocks):
    image, label = blocks
    transform = TrainTransform(crop_size=(32, 32), seed=7)
    first = [transform(image, label, i) for i in (0, 1, 2)]
    # Same samples in another order: identical (no hidden RNG state).
    for i in (2, 0, 1):
        again = transform(image, label, i)
        assert torch.equal(again[0], first[i][0]) and torch.equal(again[1], first[i][1])
    assert not torch.equal(first[0][0], first[1][0])
    transform.set_epoch(1)
    assert not torch.equal(transform(image, label, 0)[0], first[0][0])
    other_seed = TrainTransform(crop_size=(32, 32), seed=8)
    assert not torch.equal(other_seed(image, label, 0)[0], first[0][0])


def test_jitter_changes_colours_not_geometry(blocks):
    image, label = blocks
    plain = TrainTransform(crop_size=(32, 48), jitter=0.0, seed=1)
    jittered = TrainTransform(crop_size=(32, 48), jitter=0.4, seed=1)
    for index in range(4):
        a_image, a_label = plain(image, label, index)
        b_image, b_label = jittered(image, label, index)
        assert torch.equal(a_label, b_label)
        assert not torch.allclose(a_image, b_image)


def test_class_crops_hold_the_only_labelled_class(blocks):
    """With every crop class-placed and one small patch the only labelled
    pixels, every crop holds the patch, at every scale, and at positions
    spread over the whole window (drawn among the windows that hold it)."""
    image, _ = blocks
    label = np.full((48, 72), IGNORE_INDEX, np.uint8)
    label[30:32, 60:62] = 3
    transform = TrainTransform(crop_size=(16, 16), class_crops=1.0, flip=False, jitter=0.0, seed=5)
    rows, cols = [], []
    for index in range(200):
        _, out = transform(image, label, index)
        ys, xs = (out == 3).nonzero(as_tuple=True)
        assert len(ys), f"sample {index}: the crop misses the only labelled class"
        rows.append(int(ys.min()))
        cols.append(int(xs.min()))
    assert min(rows) <= 1 and max(rows) >= 13 and min(cols) <= 1 and max(cols) >= 13


@pytest.mark.parametrize("class_crops", [0.0, 0.5, 1.0])
def test_class_crops_draw_classes_uniformly(class_crops):
    """1x1 crops of a label whose classes cover 90 / 9 / 1 % of it: a crop is
    class c with probability p/3 + (1 - p) * share(c) (class-uniform with
    probability p, else a uniform pixel); checked within 4.5 standard errors."""
    label = np.zeros((20, 50), np.uint8)
    label[:, 45:] = 1                        # 100 of 1000 pixels, 10 of which
    label[:2, 45:] = 2                       # are class 2: 9 % / 1 %
    image = np.zeros((20, 50, 3), np.uint8)
    transform = TrainTransform(crop_size=(1, 1), scale_range=(1.0, 1.0), flip=False, jitter=0.0,
                               class_crops=class_crops, seed=11)
    n = 3000
    counts = np.bincount([int(transform(image, label, i)[1]) for i in range(n)], minlength=3)
    expected = class_crops / 3 + (1 - class_crops) * np.array([0.90, 0.09, 0.01])
    se = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(counts / n - expected) < 4.5 * se), (counts / n, expected)


def test_class_crops_is_a_probability():
    with pytest.raises(ValueError, match="class_crops is a probability"):
        TrainTransform(crop_size=(8, 8), class_crops=1.2)


def test_val_transform(blocks):
    image, label = blocks
    plain_image, plain_label = ValTransform()(image, label)
    ref_image, ref_label = to_tensors(image, label)
    assert torch.equal(plain_image, ref_image) and torch.equal(plain_label, ref_label)
    expected = (torch.from_numpy(image).permute(2, 0, 1) / 255.0
                - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(plain_image, expected)
    # Halving 8x8 blocks: nearest-exact picks one pixel of each 2x2, all equal.
    small_image, small_label = ValTransform(size=(24, 36))(image, label)
    assert small_image.shape == (3, 24, 36)
    np.testing.assert_array_equal(small_label.numpy(), label[::2, ::2])


def test_independent_of_worker_count():
    def batches(workers):
        ds = SyntheticScenes("train", size=(24, 48), length=4, seed=2,
                             transform=TrainTransform(crop_size=(16, 32), seed=2))
        loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=workers,
                                             worker_init_fn=worker_init_fn)
        return [b for batch in loader for b in batch]

    for a, b in zip(batches(0), batches(2)):
        assert torch.equal(a, b)
