from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from robench.data import load_dataset
from robench.data.shapes import CLASSES, ShapesConfig, load_shapes, render_shapes

SMALL = ShapesConfig(size=32, n_train=64, n_test=48, seed=3)

# SHA-256 of the uint8 images of the registered `shapes` test split (seed 0). Pinned so that a
# change of rendering, seeding or platform maths shows up: the benchmark's data must be the same
# bytes on every machine.
SHAPES_TEST_SHA256 = "ddcf126312c29cd7b050340baf607831ddb74b39a51007738223878338fe560f"


def test_registered_test_split_bytes_are_pinned() -> None:
    ds = load_dataset("shapes", "test")
    assert len(ds) == 2000 and ds.images.dtype == torch.uint8
    digest = hashlib.sha256(
        ds.images.permute(0, 2, 3, 1).contiguous().numpy().tobytes()
    ).hexdigest()
    assert digest == SHAPES_TEST_SHA256


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    a = render_shapes(SMALL, "test")
    b = render_shapes(SMALL, "test")
    c = render_shapes(ShapesConfig(size=32, n_train=64, n_test=48, seed=4), "test")
    for k in a:
        assert np.array_equal(a[k], b[k])
    assert not np.array_equal(a["images"], c["images"])
    train = render_shapes(SMALL, "train")
    assert not np.array_equal(train["images"][:48], a["images"])  # splits are different draws


def test_contents_labels_boxes_context() -> None:
    d = render_shapes(
        ShapesConfig(size=32, n_train=10, n_test=400, seed=1, context_rate=0.5), "test"
    )
    imgs, labels, boxes, ctx = d["images"], d["labels"], d["boxes"], d["context"]
    assert imgs.shape == (400, 32, 32, 3) and imgs.dtype == np.uint8
    assert set(np.unique(labels)) == set(range(len(CLASSES)))
    assert ((boxes[:, 0] < boxes[:, 2]) & (boxes[:, 1] < boxes[:, 3])).all()
    assert (boxes >= 0).all() and (boxes <= 32).all()
    agree = (ctx == labels).mean()
    assert 0.45 < agree < 0.65  # 0.5 forced + 0.05 by chance
    # the shape sits inside its box: pixels outside the box are background, which differ from
    # the foreground colour, so the box region must differ from the rest on average.
    assert imgs.std() > 20


def test_context_rate_is_configurable() -> None:
    d = render_shapes(
        ShapesConfig(size=32, n_train=10, n_test=300, seed=1, context_rate=1.0), "test"
    )
    assert (d["context"] == d["labels"]).all()


@pytest.mark.parametrize("size,preset", [(32, "cifar"), (64, "tiny"), (224, "imagenet")])
def test_resolutions_and_presets(size: int, preset: str) -> None:
    cfg = ShapesConfig(size=size, n_train=4, n_test=6, supersample=1 if size == 224 else 2)
    ds = load_shapes(cfg, "test", use_cache=False)
    x, y = ds.get_batch([0, 1, 2])
    assert x.shape == (3, 3, size, size) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert ds.info.preset == preset and ds.info.num_classes == 10


def test_cache_roundtrip_and_corrupt_cache_is_regenerated(_private_cache) -> None:  # type: ignore[no-untyped-def]
    first = load_shapes(SMALL, "test")
    path = _private_cache / f"{SMALL.key('test')}.npz"
    assert path.exists()
    again = load_shapes(SMALL, "test")
    assert torch.equal(first.images, again.images)
    path.write_bytes(path.read_bytes()[:100])  # simulated power loss mid-write
    healed = load_shapes(SMALL, "test")
    assert torch.equal(first.images, healed.images)
    assert np.load(path)["images"].shape == (48, 32, 32, 3)
