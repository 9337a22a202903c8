"""DeepCorrect (Borkar and Karam): Algorithm 1 replayed by hand, top-beta selection, residual units,
what trains in Finetune-k / Deepcorr-k / Deepcorr-kc, and the composite checkpoint round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robench import perturbations
from robench.data import SubsetDataset, load_dataset
from robench.defenses import SetupContext, StepContext, build_defense
from robench.defenses.deepcorrect import correction_priority, distort, draw_distortions, top_filters
from robench.models import create_model
from robench.models.deepcorrect import (
    CorrectedConv2d,
    CorrectionUnit,
    conv_positions,
    correction_units,
)

N_CLASSES = 10


@pytest.fixture(scope="module")
def init_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from robench.training.job import train

    out = tmp_path_factory.mktemp("init") / "s.pt"
    return train(
        "standard", epochs=1, train_images=256, batch_size=64, arch_kwargs={"width": 8}, out=out
    )


@pytest.fixture(scope="module")
def data() -> tuple[SubsetDataset, SubsetDataset]:
    return SubsetDataset(load_dataset("shapes", "train"), 256), SubsetDataset(
        load_dataset("shapes", "test"), 64
    )


def _setup_ctx(data: tuple, workdir: Path) -> SetupContext:  # type: ignore[type-arg]
    train_ds, test_ds = data
    return SetupContext(
        arch="small_cnn",
        arch_kwargs={},
        info=train_ds.info,
        train_ds=train_ds,
        test_ds=test_ds,
        seed=0,
        device="cpu",
        workdir=workdir,
    )


# --- Algorithm 1 -------------------------------------------------------------------------------


def _hand_priority(
    model: nn.Module,
    conv: nn.Module,
    clean: torch.Tensor,
    dist: torch.Tensor,
    y: torch.Tensor,
    j: int,
) -> tuple[float, float]:
    """Swap filter j's distorted output for its clean output with a forward hook, count the gain."""
    seen: dict[str, torch.Tensor] = {}
    h = conv.register_forward_hook(lambda m, i, o: seen.__setitem__("clean", o.detach().clone()))
    with torch.no_grad():
        model(clean)
    h.remove()

    def swap(m: nn.Module, i: object, o: torch.Tensor) -> torch.Tensor:
        o = o.clone()
        o[:, j] = seen["clean"][:, j]
        return o

    with torch.no_grad():
        base = model(dist)
        h = conv.register_forward_hook(swap)
        swapped = model(dist)
        h.remove()
    acc = lambda lg: float((lg.argmax(1) == y).float().mean())  # noqa: E731
    return acc(swapped) - acc(base), float(F.cross_entropy(base, y) - F.cross_entropy(swapped, y))


def _calibrated_model(clean: torch.Tensor) -> nn.Module:
    """A random small CNN calibrated on ``clean`` (batch-norm statistics, head scale), so that its
    predictions vary from image to image and respond to single filters."""
    torch.manual_seed(0)
    model = create_model("small_cnn", N_CLASSES, width=6, blocks=2, dropout=0.0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration pass
    bb = model.backbone
    with torch.no_grad():
        model.train()(clean)
        model.eval()
        f = bb.pool(bb.features(model.normalize(clean))).flatten(1)
        w = torch.randn(bb.head.weight.shape, generator=torch.Generator().manual_seed(2)) / f.std(0)
        bb.head.weight.copy_(w)  # a head on standardised features: the images no longer look alike
        bb.head.bias.copy_(-w @ f.mean(0))
    return model


def test_correction_priority_is_the_accuracy_gain_of_swapping_one_filter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        "robench.defenses.deepcorrect._MAX_ROWS", 150
    )  # 4 filters per pass: chunks with a remainder
    g = torch.Generator().manual_seed(1)
    clean = torch.rand(32, 3, 32, 32, generator=g)
    dist = (clean + 0.5 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    model = _calibrated_model(clean)
    with torch.no_grad():
        y = model(clean).argmax(
            1
        )  # clean accuracy 1: distortion costs accuracy, swaps can win it back
    assert len(set(y.tolist())) > 2
    out = correction_priority(model, "small_cnn", clean, dist, y, k=3)
    assert out["images"] == 32
    with torch.no_grad():
        assert out["p_b"] == pytest.approx(float((model(dist).argmax(1) == y).float().mean()))
    convs = [model.backbone.features[p] for p in conv_positions(model.backbone)]
    assert [lay["position"] for lay in out["layers"]] == conv_positions(model.backbone)[:3]
    nonzero = 0
    for conv, lay in zip(convs[:3], out["layers"], strict=True):
        assert len(lay["tau"]) == conv.out_channels
        for j in range(conv.out_channels):
            tau, ce = _hand_priority(model, conv, clean, dist, y, j)
            assert lay["tau"][j] == pytest.approx(tau, abs=1e-9)
            assert lay["ce_gain"][j] == pytest.approx(ce, rel=1e-4, abs=1e-5)
            nonzero += tau != 0
    assert nonzero >= 5  # the check is not vacuous (13 of the 24 filters move the accuracy)


def test_top_beta_selection() -> None:
    tau = [0.0, 0.3, 0.1, 0.3, -0.1, 0.1, 0.0, 0.2]
    gain = [0.0, 0.1, 0.5, 0.2, 0.0, 0.4, 0.9, 0.0]
    assert top_filters(tau, gain, 0.5) == [
        1,
        2,
        3,
        7,
    ]  # 0.3, 0.3, 0.2, then of the two 0.1 the larger gain
    assert top_filters(tau, gain, 0.25) == [1, 3]
    assert top_filters(tau, gain, 0.01) == [
        3
    ]  # at least one filter; the tie 1/3 goes to the larger gain
    assert top_filters(tau, gain, 1.0) == list(range(8))
    assert len(top_filters([0.0] * 96, [0.0] * 96, 0.5)) == 48  # the paper's 48 of 96


# --- correction units --------------------------------------------------------------------------


def test_fresh_unit_is_the_identity_and_the_unit_is_residual() -> None:
    torch.manual_seed(0)
    unit = CorrectionUnit(5, width=7, kernel=3).eval()
    x = torch.randn(2, 5, 8, 8)
    assert torch.equal(unit(x), x)  # last 1x1 conv zeroed: a fresh unit changes nothing
    nn.init.normal_(unit.body[-1].weight)
    assert torch.allclose(unit(x), x + unit.body(x))
    assert not torch.allclose(unit(x), x)
    assert [m.kernel_size for m in unit.body if isinstance(m, nn.Conv2d)] == [
        (1, 1),
        (3, 3),
        (3, 3),
        (1, 1),
    ]
    assert (
        unit.body[0].out_channels == 7 and CorrectionUnit(5).body[0].out_channels == 5
    )  # width 0: D = channels


def test_corrected_conv_touches_only_the_chosen_filters() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
    cc = CorrectedConv2d(conv, [1, 4], CorrectionUnit(2)).eval()
    cc.load_state_dict(conv.state_dict(), strict=False)
    nn.init.normal_(cc.unit.body[-1].weight)
    x = torch.rand(2, 3, 8, 8)
    y, ref = cc(x), conv(x)
    keep = [0, 2, 3, 5]
    assert torch.equal(y[:, keep], ref[:, keep])
    assert torch.allclose(y[:, [1, 4]], cc.unit(ref[:, [1, 4]]))


def test_fresh_deepcorrect_model_predicts_as_its_base() -> None:
    torch.manual_seed(0)
    base = create_model("small_cnn", N_CLASSES, width=8).eval()
    dc = create_model(
        "deepcorrect",
        N_CLASSES,
        base="small_cnn",
        base_kwargs={"width": 8},
        k=2,
        filters=[[0, 5], [1, 2, 7]],
    )
    missing, unexpected = dc.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and missing and all(".unit." in k for k in missing)
    x = torch.rand(3, 3, 32, 32)
    assert torch.allclose(dc.eval()(x), base(x), atol=1e-6)


def test_bad_architecture_and_filters_are_one_sentence() -> None:
    with pytest.raises(ValueError, match="support the architectures .* not 'resnet18_cifar'"):
        create_model("deepcorrect", N_CLASSES, base="resnet18_cifar")
    with pytest.raises(ValueError, match="k must be in 1..6"):
        create_model("deepcorrect", N_CLASSES, base="small_cnn", k=7, filters=[[0]] * 7)
    with pytest.raises(ValueError, match=r"filters\[0\] must be distinct indices in 0..7"):
        create_model(
            "deepcorrect", N_CLASSES, base="small_cnn", base_kwargs={"width": 8}, filters=[[8]]
        )
    with pytest.raises(ValueError, match="beta must be in"):
        build_defense("deepcorrect", {"beta": "1.5"})


# --- the half-distorted step -------------------------------------------------------------------


def test_step_distorts_a_random_half_per_image_independently_of_the_batch() -> None:
    seen: list[torch.Tensor] = []

    class Spy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x)
            return x.flatten(1)[:, :N_CLASSES] * 1.0

    g = torch.Generator().manual_seed(4)
    x, y = torch.rand(12, 3, 32, 32, generator=g), torch.randint(0, N_CLASSES, (12,), generator=g)
    index = torch.arange(100, 112)
    out = build_defense("finetune").step(
        Spy(), x, y, StepContext(0, 0, torch.Generator().manual_seed(9), N_CLASSES, index)
    )
    kinds, levels, seed = draw_distortions(12, ("awgn", "blur"), torch.Generator().manual_seed(9))
    assert int((kinds >= 0).sum()) == 6 and set(levels[kinds >= 0].tolist()) <= set(range(1, 7))
    assert out.metrics["distorted"] == 0.5
    xd = seen[0]
    for i in range(12):  # image by image, alone: the same result as inside the batch
        if kinds[i] < 0:
            assert torch.equal(xd[i], x[i])
        else:
            spec = perturbations.get(("awgn", "blur")[kinds[i]])
            ref = spec(x[i : i + 1], int(levels[i]), seed=seed, indices=[100 + i], preset="cifar")
            assert torch.equal(xd[i : i + 1], ref) and not torch.equal(xd[i], x[i])
    assert float(out.loss) == pytest.approx(float(F.cross_entropy(xd.flatten(1)[:, :N_CLASSES], y)))
    again = distort(
        x, kinds, levels, names=("awgn", "blur"), seed=seed, indices=index, preset="cifar"
    )
    assert torch.equal(again, xd)


# --- what trains -------------------------------------------------------------------------------


def _names_requiring_grad(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _two_steps(defense: object, model: nn.Module) -> None:
    """Two optimisation steps as ``fit`` does them (only parameters that require grad).

    Two, because a fresh unit's zeroed last conv passes no gradient to the layers before it
    until it has moved once.
    """
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.train()
    defense.on_train(model)  # type: ignore[attr-defined]
    g = torch.Generator().manual_seed(0)
    for step in range(2):
        x, y = (
            torch.rand(16, 3, 32, 32, generator=g),
            torch.randint(0, N_CLASSES, (16,), generator=g),
        )
        out = defense.step(model, x, y, StepContext(0, step, g, N_CLASSES, torch.arange(16)))  # type: ignore[attr-defined]
        opt.zero_grad()
        out.loss.backward()
        opt.step()


# small_cnn's features: conv 0, BN 1, ..., conv 3, BN 4 first; conv 16, BN 17, conv 19, BN 20
# and the head last
_FIRST_TWO = (
    "backbone.features.0.",
    "backbone.features.1.",
    "backbone.features.3.",
    "backbone.features.4.",
)
_LAST_THREE = (
    "backbone.features.16.",
    "backbone.features.17.",
    "backbone.features.19.",
    "backbone.features.20.",
    "backbone.head.",
)


@pytest.mark.parametrize(
    "name,options,trains",
    [
        ("finetune", {"k": "2"}, lambda n: n.startswith(_FIRST_TWO)),
        ("deepcorrect", {"k": "2", "rank_per_class": "2"}, lambda n: ".unit." in n),
        (
            "deepcorrect",
            {"k": "2", "rank_per_class": "2", "train_last": "true"},
            lambda n: ".unit." in n or n.startswith(_LAST_THREE),
        ),
    ],
)
def test_only_the_intended_parameters_train(
    name, options, trains, init_ckpt, data, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    d = build_defense(name, {"init": str(init_ckpt), **options})
    built = d.setup(_setup_ctx(data, tmp_path / "w"))
    model = built.model
    trainable = _names_requiring_grad(model)
    assert trainable and trainable == {n for n, _ in model.named_parameters() if trains(n)}
    if name == "deepcorrect":
        assert len(correction_units(model)) == 2 and all(
            len(f) == 4 for f in built.arch_kwargs["filters"]
        )  # 50% of 8
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _two_steps(d, model)
    after = model.state_dict()
    for n, _ in model.named_parameters():  # frozen: unchanged; trained: moved
        assert torch.equal(before[n], after[n]) != (n in trainable), n
    for n, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            frozen = not m.weight.requires_grad
            assert m.training != frozen, n  # frozen BN in eval mode, trained BN in train mode
            assert torch.equal(before[n + ".running_mean"], after[n + ".running_mean"]) == frozen, n


def test_ranking_is_cached_in_the_workdir(
    init_ckpt: Path, data: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[type-arg]
    d = build_defense(
        "deepcorrect", {"init": str(init_ckpt), "rank_per_class": "2", "k": "1", "beta": "0.25"}
    )
    first = d.setup(_setup_ctx(data, tmp_path / "w"))
    assert (tmp_path / "w" / "deepcorrect_ranking.json").is_file()

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("the ranking was recomputed")

    monkeypatch.setattr("robench.defenses.deepcorrect.correction_priority", boom)
    again = d.setup(_setup_ctx(data, tmp_path / "w"))
    assert again.arch_kwargs == first.arch_kwargs and len(first.arch_kwargs["filters"][0]) == 2
    with pytest.raises(AssertionError, match="recomputed"):  # other settings: not reused
        build_defense(
            "deepcorrect", {"init": str(init_ckpt), "rank_per_class": "3", "k": "1"}
        ).setup(_setup_ctx(data, tmp_path / "w"))


def test_bad_setups_are_one_sentence(init_ckpt: Path, data: tuple, tmp_path: Path) -> None:  # type: ignore[type-arg]
    torch.save(create_model("small_cnn", N_CLASSES, width=4).state_dict(), tmp_path / "raw.pt")
    with pytest.raises(ValueError, match="k must be in 1..7"):
        build_defense("finetune", {"init": str(init_ckpt), "k": "8"}).setup(
            _setup_ctx(data, tmp_path)
        )
    with pytest.raises(ValueError, match="k must be in 1..6"):
        build_defense("deepcorrect", {"init": str(init_ckpt), "k": "7"}).setup(
            _setup_ctx(data, tmp_path)
        )
    with pytest.raises(ValueError, match="last_layers must be in 1..7"):
        build_defense(
            "deepcorrect", {"init": str(init_ckpt), "train_last": "1", "last_layers": "8"}
        ).setup(_setup_ctx(data, tmp_path))
    with pytest.raises(ValueError, match="must be a robench checkpoint"):
        build_defense("finetune", {"init": str(tmp_path / "raw.pt")}).setup(
            _setup_ctx(data, tmp_path)
        )


# --- checkpoint round trip ---------------------------------------------------------------------


@pytest.mark.slow
def test_deepcorrect_checkpoint_round_trip(
    init_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from robench.models.loading import load_model
    from robench.training import job as trainer

    trained: list[nn.Module] = []
    real_fit = trainer.fit

    def spy_fit(model: nn.Module, *a: object, **k: object) -> object:
        trained.append(model)
        return real_fit(model, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer, "fit", spy_fit)
    out = trainer.train(
        "deepcorrect",
        epochs=1,
        train_images=256,
        batch_size=64,
        out=tmp_path / "dc.pt",
        options={"init": str(init_ckpt), "rank_per_class": "2", "train_last": "true"},
    )
    loaded = load_model(out)
    assert loaded.meta is not None and loaded.meta.arch == "deepcorrect"
    assert loaded.meta.arch_kwargs["base"] == "small_cnn" and loaded.meta.arch_kwargs[
        "base_kwargs"
    ] == {"width": 8}
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.model(x), trained[0].cpu().eval()(x))
    init = load_model(init_ckpt).model.state_dict()
    state = loaded.model.state_dict()
    assert torch.equal(
        state["backbone.features.0.weight"], init["backbone.features.0.weight"]
    )  # frozen base conv
    assert not torch.equal(
        state["backbone.head.weight"], init["backbone.head.weight"]
    )  # -kc: the head trained
    assert any(
        k.endswith("unit.body.9.weight") and v.abs().sum() > 0 for k, v in state.items()
    )  # units left identity
    assert not (tmp_path / "dc.pt.setup").exists()  # the ranking workdir is cleaned after success
