"""MAT's default protocol (Song et al., sections 4.3 and 5.1): fixed FGSM sets of a crafting model.

The victim trains on adversarial sets crafted once by FGSM on a separate crafting model, and the
random walk's accuracy matrix is measured on that model's FGSM sets. Every check recomputes FGSM
here, independently of robench's code, on the crafting model itself.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import robench.defenses.mat as mat
from robench.data import ImageDataset, SubsetDataset, load_dataset
from robench.defenses import SetupContext, StepContext, TrainConfig, build_defense
from robench.models import create_model
from robench.models.checkpoint import CheckpointMeta, save_checkpoint
from robench.models.loading import load_model
from robench.models.mat import CraftingCNN, crafting_cnn
from robench.training import fit

WIDTH = {"width": 4}


@pytest.fixture(scope="module")
def train() -> ImageDataset:
    return SubsetDataset(load_dataset("shapes", "test"), 256)  # the small split: made in seconds


def _crafting_file(folder: Path, num_classes: int = 10) -> Path:
    """A crafting model saved as a robench checkpoint (random weights: FGSM needs no accuracy)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(7)
    model = create_model("small_cnn", num_classes, **WIDTH)
    meta = CheckpointMeta(
        arch="small_cnn",
        arch_kwargs=WIDTH,
        num_classes=num_classes,
        input_size=32,
        mean=tuple(model.normalize.mean.flatten().tolist()),
        std=tuple(model.normalize.std.flatten().tolist()),
    )
    path = folder / f"crafting{num_classes}.pt"
    save_checkpoint(model, path, meta)
    return path


def _ctx(tmp_path: Path, train: ImageDataset, **kw: Any) -> SetupContext:
    ctx = SetupContext(
        arch="small_cnn",
        arch_kwargs=WIDTH,
        info=train.info,
        train_ds=train,
        test_ds=None,
        seed=0,
        device="cpu",
        workdir=tmp_path / "setup",
        batch_size=64,
        fit=fit,
    )
    return dataclasses.replace(ctx, **kw)


def _fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """FGSM written out: eval mode, sign of the input gradient of the cross-entropy, clipped."""
    model.eval()
    xr = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(xr), y)
    (grad,) = torch.autograd.grad(loss, xr)
    return (x + eps * grad.sign()).clamp(0.0, 1.0)


def _cfg(epochs: int = 1) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=64, milestones=(), seed=3)


class _Spy:
    """Delegates to a defense and records each step's dataset indices."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.index: list[Tensor] = []

    def step(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> Any:
        assert ctx.index is not None
        self.index.append(ctx.index.clone())
        return self.inner.step(model, x, y, ctx)


def _record(module: nn.Module) -> list[Tensor]:
    seen: list[Tensor] = []
    module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    return seen


def test_paper_batches_are_the_crafting_models_fgsm_and_stay_fixed(
    tmp_path: Path, train: ImageDataset
) -> None:
    path = _crafting_file(tmp_path)
    strengths = (0.02, 0.05)
    d = build_defense("mat_mixed", {"strengths": "0.02,0.05", "crafting": str(path)})
    assert d.protocol == "paper" and d.strengths == pytest.approx(strengths)
    victim = d.setup(_ctx(tmp_path, train)).model
    start = [p.detach().clone() for p in victim.parameters()]
    inputs, spy = _record(victim), _Spy(d)
    data = SubsetDataset(train, 128)
    fit(victim, spy, data, _cfg(epochs=2), out=tmp_path / "victim.pt", progress=False)  # type: ignore[arg-type]
    assert any(not torch.equal(a, b) for a, b in zip(start, victim.parameters(), strict=True))
    crafter = load_model(path).model
    assert len(inputs) == len(spy.index) == 4  # 2 epochs x 2 batches, one victim forward each
    for seen, idx in zip(inputs, spy.index, strict=True):
        x, y = train.get_batch(idx)
        clean, *advs = seen.split(len(idx))
        assert torch.equal(clean, x)
        for s, adv in zip(strengths, advs, strict=True):
            assert torch.equal(adv, _fgsm(crafter, x, y, s))  # the crafting model's FGSM
    # white-box FGSM on the trained victim is another image: the sets did not follow the victim
    last = inputs[-1].split(len(spy.index[-1]))[2]
    x, y = train.get_batch(spy.index[-1])
    assert not torch.equal(_fgsm(victim, x, y, 0.05), last)


def test_paper_parallel_branch_k_sees_the_crafting_set_at_its_strength(
    tmp_path: Path, train: ImageDataset
) -> None:
    path = _crafting_file(tmp_path)
    d = build_defense("mat_parallel", {"strengths": "0.01,0.04", "crafting": str(path)})
    model = d.setup(_ctx(tmp_path, train)).model
    seen, spy = _record(model.normalize), _Spy(d)
    fit(model, spy, SubsetDataset(train, 64), _cfg(), out=tmp_path / "p.pt", progress=False)  # type: ignore[arg-type]
    crafter = load_model(path).model
    x, y = train.get_batch(spy.index[0])
    expect = [_fgsm(crafter, x, y, s) for s in (0.01, 0.04)]
    # branch k's forward gets clean + its own set; then the vote sees clean + every set
    for k in range(2):
        assert torch.equal(seen[k], torch.cat([x, expect[k]]))
    assert torch.equal(seen[2], torch.cat([x, *expect]))


def test_sets_are_crafted_once_deterministically_and_read_back_on_resume(
    tmp_path: Path, train: ImageDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    crafted: list[int] = []
    original = mat.fgsm_sign

    def counting(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        crafted.append(len(x))
        return original(model, x, y)

    monkeypatch.setattr(mat, "fgsm_sign", counting)
    opts = {"strengths": "0.02,0.04", "crafting_epochs": "1", "crafting_width": "4"}
    fits: list[Any] = []

    def spy_fit(*args: Any, **kwargs: Any) -> Any:
        fits.append(fit(*args, **kwargs))
        return fits[-1]

    ctx = _ctx(tmp_path, train, fit=spy_fit)
    first = build_defense("mat_mixed", opts)
    first.setup(ctx)
    assert sum(crafted) == len(train)  # one crafting gradient per image serves both strengths
    assert fits[-1].resumed_from == 0  # the crafting model was trained here, 1 epoch
    sets_file = tmp_path / "setup" / "mat_fgsm_sets.pt"
    stamp = sets_file.stat().st_mtime_ns
    sets = mat._ATTACHED[id(first)]
    assert sets.signs.dtype == torch.int8 and sets.signs.shape == (256, 3, 32, 32)

    crafted.clear()
    again = build_defense("mat_mixed", opts)
    again.setup(ctx)  # a resumed run
    assert crafted == [] and sets_file.stat().st_mtime_ns == stamp
    assert fits[-1].resumed_from == 1  # the crafting model is reloaded, not trained again
    assert torch.equal(mat._ATTACHED[id(again)].signs, sets.signs)

    # deterministic from the seed: a fresh folder trains the same crafting model, the same sets
    fresh = build_defense("mat_mixed", opts)
    fresh.setup(dataclasses.replace(ctx, workdir=tmp_path / "other"))
    assert torch.equal(mat._ATTACHED[id(fresh)].signs, sets.signs)
    other_seed = build_defense("mat_mixed", opts)
    other_seed.setup(dataclasses.replace(ctx, workdir=tmp_path / "seed1", seed=1))
    assert not torch.equal(mat._ATTACHED[id(other_seed)].signs, sets.signs)


WALK = {
    "candidates": "0.02,0.1",
    "walk_images": "128",
    "walk_val": "40",
    "walk_pretrain_epochs": "1",
    "walk_trials": "20",
}


def test_walk_matrix_is_measured_on_the_crafting_models_sets(
    tmp_path: Path, train: ImageDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    measured: list[Tensor] = []  # what the single-strength models see in eval mode

    def hooked(*args: Any, **kwargs: Any) -> nn.Module:
        model = create_model(*args, **kwargs)  # the walk's shared start (its rows are copies)
        model.register_forward_pre_hook(
            lambda m, a: None if m.training else measured.append(a[0].detach().clone())
        )
        return model

    monkeypatch.setattr(mat, "create_model", hooked)
    path = _crafting_file(tmp_path)
    d = build_defense("mat_mixed", {**WALK, "crafting": str(path)})
    built = d.setup(_ctx(tmp_path, train))
    saved = json.loads((tmp_path / "setup" / "mat_walk.json").read_text())
    assert saved["key"]["protocol"] == "paper" and saved["key"]["crafting"]
    rows = saved["rows"]
    assert len(rows) == 2 and d.strengths and set(d.strengths) <= {0.02, 0.1}
    assert "crafting-model FGSM" in built.notes and "random walk" in built.notes
    crafter = load_model(path).model
    x, y = train.get_batch(torch.arange(128, 168))  # held out: the 40 after the walk's 128
    sets = [_fgsm(crafter, x, y, s) for s in (0.02, 0.1)]
    # each row model is scored on the crafting model's sets at every candidate, nothing else
    assert len(measured) == 4
    for got, expect in zip(measured, sets * 2, strict=True):
        assert torch.equal(got, expect)
    for i in range(2):
        row = create_model("small_cnn", 10, **WIDTH)
        partial = torch.load(tmp_path / "setup" / f"walk_{i}.pt.partial", weights_only=True)
        row.load_state_dict(partial["model"])
        row.eval()
        with torch.no_grad():
            transfer = [float((row(a).argmax(1) == y).float().mean()) for a in sets]
        assert rows[i] == pytest.approx(transfer, abs=1e-9)


def test_online_keeps_its_own_grid_and_white_box_steps() -> None:
    online = build_defense("mat_mixed", {"protocol": "online"})
    assert online.candidates == mat.CANDIDATES
    assert build_defense("mat_parallel").candidates == pytest.approx(
        [k * 0.5 / 255 for k in range(1, 11)]
    )  # the paper's 0.5 .. 5 of 255, in [0, 1] pixel units
    torch.manual_seed(0)
    m = create_model("small_cnn", 10, **WIDTH)
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    expect = _fgsm(copy.deepcopy(m), x, y, 0.03)  # before the step moves the batch-norm stats
    seen = _record(m.train())
    d = build_defense("mat_mixed", {"protocol": "online", "strengths": "0.03"})
    d.step(m, x, y, StepContext(0, 0, torch.Generator(), 10))  # no setup, no index: white-box
    trained_on = seen[-1]  # after the FGSM forward of the step, the training forward
    assert torch.equal(trained_on[4:], expect)


@pytest.mark.slow
def test_paper_checkpoint_records_the_protocol(tmp_path: Path) -> None:
    import robench.training.job as trainer

    path = trainer.train(
        "mat_mixed",
        epochs=1,
        train_images=256,
        batch_size=64,
        arch_kwargs={"width": 4},
        options={"strengths": "0.01,0.03", "crafting_epochs": "1", "crafting_width": "4"},
        out=tmp_path / "m.pt",
    )
    meta = torch.load(path, weights_only=True)["meta"]
    cfg = meta["defense_config"]
    assert cfg["protocol"] == "paper" and cfg["crafting"] == "" and cfg["crafting_epochs"] == 1
    card = json.loads(path.with_suffix(".json").read_text())
    assert "protocol paper" in card["notes"] and "0.01,0.03 (given)" in card["notes"]
    assert not (tmp_path / "m.pt.setup").exists()  # the sets lived in the setup folder only


def _one_line(exc: pytest.ExceptionInfo[ValueError]) -> str:
    text = str(exc.value)
    assert "\n" not in text and text.count(". ") == 0
    return text


def test_bad_options_and_misuse_are_one_sentence(tmp_path: Path, train: ImageDataset) -> None:
    for opts, what in [
        ({"protocol": "offline"}, "must be 'paper' or 'online'"),
        ({"protocol": "online", "crafting": "zoo:vgg_surrogate"}, "crafting names the paper"),
        ({"crafting": str(tmp_path / "missing.pt")}, "crafting model file not found"),
        ({"crafting_epochs": "0"}, "crafting_epochs must be at least 1"),
        ({"crafting_width": "0"}, "crafting_width must be at least 1"),
    ]:
        with pytest.raises(ValueError, match=what) as e:
            build_defense("mat_mixed", opts)
        _one_line(e)
    m = create_model("small_cnn", 10, **WIDTH)
    x, y = train.get_batch(torch.arange(8))
    d = build_defense("mat_mixed", {"strengths": "0.02"})
    with pytest.raises(ValueError, match="use -o protocol=online") as e:
        d.step(m, x, y, StepContext(0, 0, torch.Generator(), 10, torch.arange(8)))
    _one_line(e)
    sets = mat.craft_sets(crafting_cnn(10, width=4), SubsetDataset(train, 16))
    mat.attach_sets(d, sets)
    with pytest.raises(ValueError, match="StepContext.index") as e:
        d.step(m, x, y, StepContext(0, 0, torch.Generator(), 10))
    _one_line(e)
    with pytest.raises(ValueError, match="outside the 16 images") as e:
        d.step(m, x, y, StepContext(0, 0, torch.Generator(), 10, torch.arange(10, 18)))
    _one_line(e)
    with pytest.raises(ValueError, match="not those") as e:  # other images at those indices
        d.step(m, x.flip(0), y, StepContext(0, 0, torch.Generator(), 10, torch.arange(8)))
    _one_line(e)
    assert d.step(m, x, y, StepContext(0, 0, torch.Generator(), 10, torch.arange(8))).loss > 0
    five = _crafting_file(tmp_path, num_classes=5)
    with pytest.raises(ValueError, match="does not classify") as e:
        build_defense("mat_mixed", {"strengths": "0.02", "crafting": str(five)}).setup(
            _ctx(tmp_path, train)
        )
    _one_line(e)


def test_crafting_cnn_is_three_convs_and_two_fully_connected_layers() -> None:
    net = CraftingCNN(10, 3, width=8, hidden=32)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 3
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 3
    assert [m.out_features for m in net.modules() if isinstance(m, nn.Linear)] == [32, 10]
    assert crafting_cnn(10, in_chans=1, width=4)(torch.rand(2, 1, 28, 28)).shape == (2, 10)
