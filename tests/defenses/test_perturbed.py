"""Cavey et al.'s constant, incremental and transfer learning: their math on tiny batches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robench import perturbations
from robench._seeding import derive_seed
from robench.data import SubsetDataset, load_dataset
from robench.data._base import ArrayDataset, DatasetInfo
from robench.defenses import SetupContext, StepContext, StepOutput, build_defense
from robench.defenses.perturbed import image_levels, perturbed_share
from robench.models import create_model
from robench.models.loading import load_model
from robench.training.job import train
from robench.training.loop import TrainConfig, fit

N_CLASSES = 4


class Recorder(nn.Module):
    """A linear model that keeps a copy of the last batch it saw."""

    def __init__(self, side: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3 * side * side, N_CLASSES)
        self.seen: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        self.seen = x.detach().clone()
        return self.lin(x.flatten(1))


def _batch(n: int = 6, side: int = 8) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, side, side, generator=g) * 0.8 + 0.1
    return x, torch.randint(0, N_CLASSES, (n,), generator=g), torch.randperm(1000, generator=g)[:n]


def _ctx(
    index: Tensor | None, *, epoch: int = 0, epochs: int = 6, seed: int = 7, gen_seed: int = 3
) -> StepContext:
    return StepContext(
        epoch=epoch,
        step=0,
        generator=torch.Generator().manual_seed(gen_seed),
        num_classes=N_CLASSES,
        index=index,
        epochs=epochs,
        seed=seed,
    )


# The paper's defaults are checked by what the defenses do when built without options:
# `constant` and `incremental` apply gaussian_noise_std at severity 5 (the per-image and slicing
# tests below), `incremental` goes from 5 % to 100 % (test_incremental_slices_the_batch), and
# `transfer` adds 256 and 512 hidden units and trains the whole network
# (test_transfer_replaces_the_output_layer).


@pytest.mark.parametrize("name", ["gaussian_noise_std", "hot_pixels", "gaussian_blur_sigma"])
def test_constant_perturbs_every_image_as_the_corruption_does(name: str) -> None:
    x, y, idx = _batch()
    m = Recorder()
    out = build_defense("constant", {"perturbation": name, "severity": "3"}).step(
        m, x, y, _ctx(idx)
    )
    spec = perturbations.get(name)
    expected = spec(x, 3, seed=derive_seed(7, "perturbed-data"), indices=idx)
    assert torch.equal(m.seen, expected)
    assert bool(((m.seen - x).flatten(1).abs().amax(1) > 0).all())  # every image perturbed
    assert torch.allclose(out.loss, F.cross_entropy(m.lin(expected.flatten(1)), y))
    if name == "hot_pixels":  # 3 pixels (all channels) set to 1 per image
        changed = (m.seen != x).any(1).flatten(1)
        assert (changed.sum(1) == 3).all() and torch.equal(changed, (m.seen == 1).all(1).flatten(1))


def test_perturbation_is_per_image_fixed_over_epochs_or_resampled() -> None:
    x, y, idx = _batch()
    d = build_defense("constant")
    m = Recorder()
    d.step(m, x, y, _ctx(idx))
    full = m.seen
    d.step(
        m, x[[4, 1]], y[[4, 1]], _ctx(idx[[4, 1]], epoch=3, gen_seed=99)
    )  # other batch, other epoch
    assert torch.equal(m.seen, full[[4, 1]])  # same image -> same perturbation (paper: data fixed)
    d.step(m, x, y, _ctx(idx, seed=8))
    assert not torch.equal(m.seen, full)  # another run seed, other draws
    r = build_defense("constant", {"resample": "true"})
    r.step(m, x, y, _ctx(idx, gen_seed=3))
    first = m.seen
    r.step(m, x[[4, 1]], y[[4, 1]], _ctx(idx[[4, 1]], gen_seed=3))
    assert torch.equal(m.seen, first[[4, 1]])  # still independent of the batch
    r.step(m, x, y, _ctx(idx, epoch=1, gen_seed=4))
    assert not torch.equal(m.seen, first)  # new draw with the next epoch's generator
    expected = perturbations.get("gaussian_noise_std")(
        x, 5, seed=derive_seed(3, "perturbed-data"), indices=idx
    )
    assert torch.equal(first, expected)


def test_random_level_per_image() -> None:
    x, y, idx = _batch(40)
    m = Recorder()
    build_defense("constant", {"perturbation": "gaussian_noise_std", "severity": "0"}).step(
        m, x, y, _ctx(idx)
    )
    seed = derive_seed(7, "perturbed-data")
    levels = image_levels(seed, idx, (1, 2, 3, 4, 5))
    assert set(levels.tolist()) == {1, 2, 3, 4, 5}
    spec = perturbations.get("gaussian_noise_std")
    for i in range(0, 40, 7):
        one = spec(x[i : i + 1], int(levels[i]), seed=seed, indices=idx[i : i + 1])
        assert torch.equal(m.seen[i : i + 1], one)


def test_incremental_share_schedule() -> None:
    assert perturbed_share(0, 6) == pytest.approx(0.05)  # paper: training starts at 5 %
    assert perturbed_share(5, 6) == pytest.approx(1.0)  # ... and ends all perturbed
    assert perturbed_share(2, 5) == pytest.approx(0.05 + 0.95 / 2)
    assert perturbed_share(0, 20) == pytest.approx(0.05) and perturbed_share(
        1, 20
    ) == pytest.approx(0.1)
    shares = [perturbed_share(e, 6) for e in range(6)]
    assert shares == sorted(shares)
    assert perturbed_share(0, 1) == pytest.approx(0.05)


@pytest.mark.parametrize(("epoch", "k"), [(0, 2), (3, 25), (5, 40)])
def test_incremental_slices_the_batch(epoch: int, k: int) -> None:
    x, y, idx = _batch(40)
    m = Recorder()
    out = build_defense("incremental").step(m, x, y, _ctx(idx, epoch=epoch, epochs=6))
    assert (
        out.metrics["perturbed"] == k
    )  # round(share * 40): 5 % -> 2, 62 % -> 24.8 -> 25, 100 % -> 40
    full = perturbations.get("gaussian_noise_std")(
        x, 5, seed=derive_seed(7, "perturbed-data"), indices=idx
    )
    assert torch.equal(m.seen[:k], full[:k])
    assert torch.equal(m.seen[k:], x[k:])


def test_fit_passes_epochs_and_seed(tmp_path: Path) -> None:
    seen: list[tuple[int, int, int]] = []

    @dataclass(frozen=True)
    class Spy:
        def step(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
            seen.append((ctx.epoch, ctx.epochs, ctx.seed))
            logits = model(x)
            return StepOutput(F.cross_entropy(logits, y), logits)

    rng = np.random.default_rng(0)
    info = DatasetInfo("tiny", 10, 8, 3, "cifar", tuple("abcdefghij"), "train")
    ds = ArrayDataset(
        rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, 64), info
    )
    fit(
        create_model("small_cnn", 10, width=4),
        Spy(),
        ds,
        TrainConfig(epochs=2, batch_size=32, seed=11),
        out=tmp_path / "m.pt",
        progress=False,
    )
    assert seen == [(0, 2, 11), (0, 2, 11), (1, 2, 11), (1, 2, 11)]


def test_bad_options_are_one_sentence() -> None:
    with pytest.raises(ValueError, match="severity must be in 1..5"):
        build_defense("constant", {"severity": "9"})
    with pytest.raises(ValueError, match="must be a corruption"):
        build_defense("constant", {"perturbation": "pgd"})
    with pytest.raises(ValueError, match="bounding boxes"):
        build_defense("incremental", {"perturbation": "foreground_blur"})
    with pytest.raises(ValueError, match="shares in"):
        build_defense("incremental", {"start": "1.5"})
    with pytest.raises(KeyError, match="did you mean"):
        build_defense("constant", {"perturbation": "gausian_noise_std"})


@pytest.fixture(scope="module")
def init_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("init") / "s.pt"
    return train(
        "standard", epochs=1, train_images=256, batch_size=64, arch_kwargs={"width": 8}, out=out
    )


def _setup_ctx(tmp_path: Path) -> SetupContext:
    ds = SubsetDataset(load_dataset("shapes", "train"), 64)
    return SetupContext(
        arch="small_cnn",
        arch_kwargs={},
        info=ds.info,
        train_ds=ds,
        test_ds=ds,
        seed=0,
        device="cpu",
        workdir=tmp_path / "w",
    )


@pytest.mark.parametrize("freeze", [None, False, True])  # None: the default, not frozen
def test_transfer_replaces_the_output_layer(
    init_ckpt: Path, tmp_path: Path, freeze: bool | None
) -> None:
    init = load_model(init_ckpt).model
    options = {"init": str(init_ckpt)} | ({} if freeze is None else {"freeze": str(freeze)})
    d = build_defense("transfer", options)
    built = d.setup(_setup_ctx(tmp_path))
    assert built.arch == "transfer_mlp"
    assert built.arch_kwargs == {
        "base": "small_cnn",
        "base_kwargs": {"width": 8},
        "hidden": [256, 512],
    }
    head = built.model.backbone.head
    assert [type(m) for m in head] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert [(m.in_features, m.out_features) for m in head[::2]] == [
        (32, 256),
        (256, 512),
        (512, 10),
    ]  # the paper's 256 and 512 hidden units, the default
    old, new = init.state_dict(), built.model.state_dict()
    assert set(old) - set(new) == {"backbone.head.weight", "backbone.head.bias"}
    assert all(torch.equal(old[k], new[k]) for k in old if not k.startswith("backbone.head."))
    trainable = {n for n, p in built.model.named_parameters() if p.requires_grad}
    if freeze:  # the paper's first variant: only the new layers learn
        assert trainable == {
            n for n, _ in built.model.named_parameters() if n.startswith("backbone.head.")
        }
        built.model.train()
        d.on_train(built.model)
        assert not built.model.backbone.features[1].training
    else:  # the paper's choice: back-propagate through the whole network
        assert trainable == {n for n, _ in built.model.named_parameters()}
    rebuilt = create_model(built.arch, 10, **built.arch_kwargs)
    rebuilt.load_state_dict(new)  # structure rebuilds from the metadata alone


@pytest.mark.slow
def test_transfer_round_trip(init_ckpt: Path, tmp_path: Path, capture_saved) -> None:  # type: ignore[no-untyped-def]
    x = load_dataset("shapes", "test").get_batch(torch.arange(8))[0]
    got = capture_saved(x)
    path = train(
        "transfer",
        epochs=1,
        train_images=256,
        batch_size=64,
        arch_kwargs={"width": 8},
        out=tmp_path / "t.pt",
        options={"init": str(init_ckpt), "perturbation": "stuck_pixels", "severity": "2"},
    )
    loaded = load_model(path)
    assert loaded.meta is not None and loaded.meta.arch == "transfer_mlp"
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), got["out"], atol=1e-6)


def test_transfer_rejects_bad_init(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        build_defense("transfer", {"init": str(tmp_path / "missing.pt")}).setup(
            _setup_ctx(tmp_path)
        )
