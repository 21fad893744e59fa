"""The synthetic street scenes: determinism, content, difficulty, data set API."""
import numpy as np
import pytest
import torch

from rspnet.data import (CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, SyntheticScenes,
                         denormalize, get_dataset, render_scene)
from rspnet.data.synthetic import scene_seed

H, W = 64, 128
KEY_CLASSES = ("road", "sidewalk", "building", "vegetation", "sky", "car", "person")


@pytest.fixture(scope="module")
def scenes():
    return [render_scene(seed, H, W) for seed in range(8)]


def test_render_shapes_and_values(scenes):
    for image, label in scenes:
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        assert label.shape == (H, W) and label.dtype == np.uint8
        valid = label[label != IGNORE_INDEX]
        assert valid.size > 0.8 * label.size
        assert valid.max() < NUM_CLASSES


def test_render_deterministic(scenes):
    for seed in (0, 3):
        image, label = render_scene(seed, H, W)
        np.testing.assert_array_equal(image, scenes[seed][0])
        np.testing.assert_array_equal(label, scenes[seed][1])
    assert not np.array_equal(scenes[0][0], scenes[1][0])
    assert not np.array_equal(scenes[0][1], scenes[1][1])


def test_render_is_independent_of_global_rng_state():
    np.random.seed(1)
    torch.manual_seed(1)
    first = render_scene(11, H, W)
    np.random.seed(2)
    torch.manual_seed(2)
    second = render_scene(11, H, W)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_layout_does_not_depend_on_size(scenes):
    # Same seed at twice the size (same aspect): the same street, so the
    # subsampled labels agree except along edges.
    for seed in (0, 1, 2):
        big = render_scene(seed, 2 * H, 2 * W)[1][1::2, 1::2]
        small = scenes[seed][1]
        valid = (big != IGNORE_INDEX) & (small != IGNORE_INDEX)
        assert (big[valid] == small[valid]).mean() > 0.9
    with pytest.raises(ValueError, match="at least 8x8"):
        render_scene(0, 4, 64)


def test_key_classes_and_ignore_appear(scenes):
    present = set(np.unique(np.concatenate([label.ravel() for _, label in scenes])))
    missing = [name for name in KEY_CLASSES if CLASS_NAMES.index(name) not in present]
    assert not missing, f"classes never drawn in 8 scenes: {missing}"
    assert IGNORE_INDEX in present
    # Road, building and sky/buildings above the horizon are in every scene.
    for _, label in scenes:
        assert (label == CLASS_NAMES.index("road")).mean() > 0.1
        assert (label == CLASS_NAMES.index("building")).mean() > 0.05


def test_colour_does_not_determine_class(scenes):
    # A nearest-mean-colour classifier fitted on a scene and scored on that
    # same scene (the easiest possible setting for it) stays far from 90%.
    for image, label in scenes:
        valid = label != IGNORE_INDEX
        pixels, truth = image[valid].astype(np.float32), label[valid]
        classes = np.unique(truth)
        means = np.stack([pixels[truth == k].mean(0) for k in classes])
        pred = classes[((pixels[:, None] - means[None]) ** 2).sum(-1).argmin(1)]
        assert (pred == truth).mean() < 0.9

    # A colour lookup table (majority class per 16-level RGB bin) fitted on
    # four scenes does no better on the other four.
    def bins(image):
        return (image // 16).astype(np.int64) @ np.array([256, 16, 1])

    votes = np.zeros((16 ** 3, NUM_CLASSES), np.int64)
    for image, label in scenes[:4]:
        valid = label != IGNORE_INDEX
        np.add.at(votes, (bins(image)[valid], label[valid]), 1)
    lookup = votes.argmax(1)
    accuracy = [(lookup[bins(image)] == label)[label != IGNORE_INDEX].mean()
                for image, label in scenes[4:]]
    assert np.mean(accuracy) < 0.75


def test_scene_seed_streams_are_disjoint():
    train = {scene_seed(s, "train", i) for s in range(3) for i in range(50)}
    val = {scene_seed(s, "val", i) for s in range(3) for i in range(50)}
    assert len(train) == 150 and len(val) == 150 and not train & val
    with pytest.raises(ValueError, match="split"):
        scene_seed(0, "test", 0)


def test_dataset_items():
    ds = SyntheticScenes("train", size=(H, W), length=3, seed=4)
    assert len(ds) == 3
    image, label = ds[2]
    assert image.dtype == torch.float32 and image.shape == (3, H, W)
    assert label.dtype == torch.int64 and label.shape == (H, W)
    raw_image, raw_label = render_scene(scene_seed(4, "train", 2), H, W)
    np.testing.assert_array_equal(label.numpy(), raw_label)
    # Normalisation is the ImageNet one: undoing it gives the rendered pixels.
    np.testing.assert_allclose(denormalize(image).astype(int), raw_image.astype(int), atol=1)
    assert abs(float(image.mean())) < 1.5
    with pytest.raises(IndexError):
        ds[3]
    val_image, _ = SyntheticScenes("val", size=(H, W), length=3, seed=4)[2]
    assert not torch.equal(image, val_image)


def test_get_dataset_synthetic():
    train = get_dataset("synthetic", "train", size=(32, 64))
    val = get_dataset("synthetic", "val", size=(32, 64))
    assert (len(train), len(val)) == (64, 16)
    small = get_dataset("synthetic", "val", size=(32, 64), length=2, seed=1)
    assert len(small) == 2 and small[0][0].shape == (3, 32, 64)

    augmented = get_dataset("synthetic", "train", size=(32, 64), length=2, augment=True)
    image, label = augmented[1]
    assert image.shape == (3, 32, 64) and label.shape == (32, 64)
    assert label.dtype == torch.int64


def test_get_dataset_errors():
    with pytest.raises(ValueError, match="synthetic.*cityscapes"):
        get_dataset("kitti")
    with pytest.raises(ValueError, match="root"):
        get_dataset("cityscapes", "train")
    with pytest.raises(ValueError, match="train split only"):
        get_dataset("synthetic", "val", augment=True)
    with pytest.raises(ValueError, match="size=None"):
        get_dataset("synthetic", size=None)


def test_cached_scenes_are_the_rendered_ones_and_copied_out():
    ds = SyntheticScenes("train", size=(32, 64), length=3, seed=5)
    first = ds.sample(1)
    expected = render_scene(scene_seed(5, "train", 1), 32, 64)
    for a, b in zip(first, expected):
        np.testing.assert_array_equal(a, b)
    first[0][:] = 0    # a transform writing into what it was given
    first[1][:] = 0
    again = ds.sample(1)
    for a, b in zip(again, expected):
        np.testing.assert_array_equal(a, b)
    assert again[0] is not ds.sample(1)[0]


def test_scene_cache_holds_at_most_its_budget():
    one = sum(a.nbytes for a in render_scene(scene_seed(0, "val", 0), 16, 32))
    ds = SyntheticScenes("val", size=(16, 32), length=5, seed=0, cache_mb=2.5 * one / 2**20)
    for i in range(5):
        ds.sample(i)
    assert len(ds._cache) == 2 and ds._cached_bytes == 2 * one
    off = SyntheticScenes("val", size=(16, 32), length=2, cache_mb=0)
    off.sample(0)
    assert not off._cache
    with pytest.raises(ValueError, match="cache_mb"):
        SyntheticScenes("val", cache_mb=-1)
