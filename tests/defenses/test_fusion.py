"""Akumalla et al.'s contextual fusion: the composite model, its loss, stages and checkpoint."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robench.data import SubsetDataset, load_dataset
from robench.data._base import ArrayDataset, DatasetInfo
from robench.defenses import SetupContext, StepContext, build_defense
from robench.defenses.fusion import ContextCE
from robench.defenses.standard import Standard
from robench.models import MODELS, create_model
from robench.models.fusion import Branch, FusionNet, context_network, fusion_net, object_network
from robench.models.loading import load_model
from robench.models.transfer import last_linear
from robench.training import fit, train


def _tiny(context_classes: int = 7) -> nn.Module:
    torch.manual_seed(0)
    return create_model(
        "fusion",
        10,
        base="small_cnn",
        base_kwargs={"width": 4},
        context_kwargs={"width": 2},
        context_classes=context_classes,
    )


def _batch(n: int = 8) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return (
        torch.rand(n, 3, 32, 32, generator=g),
        torch.randint(0, 10, (n,), generator=g),
        torch.randint(0, 7, (n,), generator=g),
    )


def test_paper_default_alpha() -> None:
    assert (
        build_defense("fusion").alpha == 10.0
    )  # Akumalla et al., Fig. 5: the strongest (best) penalty


def test_composite_structure() -> None:
    m = _tiny()
    net = fusion_net(m)
    assert isinstance(net, FusionNet)
    assert (net.object.feature_dim, net.context.feature_dim) == (16, 8)  # width * 4 after 3 blocks
    assert (net.joint.in_features, net.joint.out_features) == (24, 10)
    assert net.object.head.out_features == 10 and net.context.head.out_features == 7
    x, _, _ = _batch()
    m.eval()
    with torch.no_grad():
        z = m.normalize(x)
        joint = net.joint(torch.cat([net.object.features(z), net.context.features(z)], 1))
        assert torch.allclose(m(x), joint)
        assert object_network(m)(x).shape == (8, 10) and context_network(m)(x).shape == (8, 7)
        assert torch.allclose(object_network(m)(x), net.object.head(net.object.features(z)))
    with pytest.raises(ValueError, match="fusion model"):
        fusion_net(create_model("small_cnn", 10, width=4))


def test_branch_is_the_uncut_backbone() -> None:
    torch.manual_seed(0)
    backbone = MODELS.get("small_cnn").build(num_classes=10, in_chans=3, width=4).eval()
    branch = Branch(copy.deepcopy(backbone)).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(branch(x), backbone(x))
    fresh = Branch(MODELS.get("small_cnn").build(num_classes=10, in_chans=3, width=4)).eval()
    fresh.load_backbone_state(backbone.state_dict())
    with torch.no_grad():
        assert torch.allclose(fresh(x), backbone(x))


@pytest.mark.parametrize("alpha", [0.0, 0.7, 10.0])
def test_loss_is_ce_plus_alpha_object_l2(alpha: float) -> None:
    m = _tiny()
    d = build_defense("fusion", {"alpha": str(alpha)})
    m.train()
    d.on_train(m)  # branches frozen: eval mode, so the forward is deterministic
    net = fusion_net(m)
    assert not net.object.training and not net.context.training and net.joint.training
    x, y, c = _batch()
    ctx = StepContext(0, 0, torch.Generator().manual_seed(0), 10, torch.arange(8), c)
    out = d.step(m, x, y, ctx)
    w = net.joint.weight
    # the paper's sum over the batch of CE + alpha ||theta_fg||^2, divided by the batch size (8)
    by_hand = (
        F.cross_entropy(m(x), y, reduction="sum") + alpha * (w[:, :16] ** 2).sum()
    ) / 8  # object features first
    assert torch.allclose(out.loss, by_hand)
    grad = torch.autograd.grad(out.loss, w)[0]
    grad0 = torch.autograd.grad(F.cross_entropy(m(x), y), w)[0]
    assert torch.allclose(
        grad[:, :16] - grad0[:, :16], 2 * alpha / 8 * w[:, :16].detach(), atol=1e-6
    )
    assert torch.allclose(grad[:, 16:], grad0[:, 16:])  # context weights are not penalised


def test_context_network_learns_context_labels() -> None:
    torch.manual_seed(0)
    m = create_model("small_cnn", 7, width=4)
    x, y, c = _batch()
    out = ContextCE().step(m.eval(), x, y, StepContext(0, 0, torch.Generator(), 10, None, c))
    assert torch.allclose(out.loss, F.cross_entropy(m(x), c))
    with pytest.raises(ValueError, match="context labels"):
        ContextCE().step(m, x, y, StepContext(0, 0, torch.Generator(), 10))


def _setup_ctx(tmp_path: Path, n: int = 128, loop: Any = fit) -> SetupContext:
    ds = SubsetDataset(load_dataset("shapes", "train"), n)
    return SetupContext(
        arch="small_cnn",
        arch_kwargs={"width": 4},
        info=ds.info,
        train_ds=ds,
        test_ds=ds,
        seed=0,
        device="cpu",
        workdir=tmp_path / "w",
        batch_size=32,
        fit=loop,
    )


def test_setup_trains_object_then_context_then_freezes(tmp_path: Path) -> None:
    calls: list[tuple[str, int]] = []

    def spy(model: nn.Module, defense: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append((type(defense).__name__, last_linear(model.backbone)[2].out_features))
        return fit(model, defense, *args, **kwargs)

    d = build_defense("fusion", {"init": "none", "pre_epochs": "1", "context_width": "2"})
    built = d.setup(_setup_ctx(tmp_path, loop=spy))
    assert calls == [
        (Standard.__name__, 10),
        (ContextCE.__name__, 10),
    ]  # shapes: 10 background styles
    assert built.arch == "fusion"
    assert built.arch_kwargs == {
        "base": "small_cnn",
        "base_kwargs": {"width": 4},
        "context_base": "small_cnn",
        "context_kwargs": {"width": 2},
        "context_classes": 10,
    }
    trainable = {n for n, p in built.model.named_parameters() if p.requires_grad}
    assert trainable == {
        "backbone.joint.weight",
        "backbone.joint.bias",
    }  # stage 3: the joint layer only
    rebuilt = create_model(built.arch, 10, **built.arch_kwargs)
    rebuilt.load_state_dict(built.model.state_dict())


def test_setup_errors(tmp_path: Path) -> None:
    info = DatasetInfo("tiny", 10, 32, 3, "cifar", tuple("abcdefghij"), "train")
    rng = np.random.default_rng(0)
    ds = ArrayDataset(
        rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 8), info
    )
    ctx = SetupContext(
        arch="small_cnn",
        arch_kwargs={},
        info=info,
        train_ds=ds,
        test_ds=ds,
        seed=0,
        device="cpu",
        workdir=tmp_path,
    )
    with pytest.raises(ValueError, match="context labels"):
        build_defense("fusion").setup(ctx)
    with pytest.raises(ValueError, match="alpha must be"):
        build_defense("fusion", {"alpha": "-1"})
    with pytest.raises(ValueError, match="no width option"):
        build_defense("fusion", {"init": "none"})._context_network(
            SetupContext(
                arch="resnet18_cifar",
                arch_kwargs={},
                info=info,
                train_ds=ds,
                test_ds=ds,
                seed=0,
                device="cpu",
                workdir=tmp_path,
            ),
            [0.5] * 3,
            [0.25] * 3,
            10,
        )


@pytest.fixture(scope="module")
def init_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("init") / "s.pt"
    return train(
        "standard", epochs=1, train_images=256, batch_size=64, arch_kwargs={"width": 8}, out=out
    )


@pytest.mark.slow
def test_round_trip_keeps_the_init_object_network(
    init_ckpt: Path, tmp_path: Path, capture_saved
) -> None:  # type: ignore[no-untyped-def]
    x = load_dataset("shapes", "test").get_batch(torch.arange(8))[0]
    got = capture_saved(x)
    path = train(
        "fusion",
        epochs=1,
        train_images=256,
        batch_size=64,
        arch_kwargs={"width": 8},
        out=tmp_path / "f.pt",
        options={"init": str(init_ckpt), "pre_epochs": "1", "context_width": "4", "alpha": "1"},
    )
    loaded = load_model(path)
    assert loaded.meta is not None and loaded.meta.arch == "fusion"
    assert loaded.meta.arch_kwargs["context_kwargs"] == {"width": 4}
    init = load_model(init_ckpt).model
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), got["out"], atol=1e-6)
        # the object network is the init classifier, untouched by stage 3 (frozen, BN statistics
        # kept)
        assert torch.allclose(object_network(loaded.model)(x), init(x), atol=1e-6)
    assert not (tmp_path / "f.pt.setup").exists()
