"""Multi-strength adversarial training (Song et al.): eq. 2, eq. 3-4, the random-walk selection.

The step and walk tests here run ``protocol=online`` (FGSM against the model being trained);
test_mat_protocol.py covers the default, the paper's fixed sets of a separate crafting model.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robench.defenses.mat as mat
from robench.data import SubsetDataset, load_dataset
from robench.defenses import SetupContext, StepContext, build_defense
from robench.defenses._ops import fgsm
from robench.models import create_model
from robench.models.mat import ParallelMAT
from robench.training import fit

N_CLASSES = 4


def _batch(n: int = 8, side: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, side, side, generator=g), torch.randint(0, N_CLASSES, (n,), generator=g)


def _ctx() -> StepContext:
    return StepContext(
        epoch=0, step=0, generator=torch.Generator().manual_seed(0), num_classes=N_CLASSES
    )


def _sign_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: float) -> torch.Tensor:
    model.eval()
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y), xr)
    model.train()
    return (x + s * g.sign()).clamp(0, 1)


def test_fgsm_strengths_is_fgsm_at_each_strength() -> None:
    torch.manual_seed(0)
    m, (x, y) = nn.Sequential(nn.Flatten(), nn.Linear(48, N_CLASSES)), _batch()
    advs = mat.fgsm_strengths(m, x, y, [0.01, 0.05])
    for s, adv in zip([0.01, 0.05], advs, strict=True):
        assert torch.equal(adv, fgsm(m, x, y, s, targeted=False))
        assert float((adv - x).abs().max()) <= s + 1e-7


def test_mixed_loss_is_eq2_unweighted_sum_over_clean_and_every_strength() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64, N_CLASSES),
    )
    x, y = _batch()
    ref = copy.deepcopy(m)
    strengths = (0.01, 0.03, 0.1)
    out = build_defense("mat_mixed", {"strengths": "0.01,0.03,0.1", "protocol": "online"}).step(
        m, x, y, _ctx()
    )
    advs = [_sign_step(ref, x, y, s) for s in strengths]
    logits = ref(torch.cat([x, *advs]))  # one batch of clean + S adversarial sets (N = N_C + S N_A)
    parts = logits.split(8)
    expect = sum(F.cross_entropy(p, y) for p in parts)
    assert float(out.loss.detach()) == pytest.approx(float(expect.detach()), rel=1e-5)
    assert torch.allclose(
        out.logits, parts[0], atol=1e-6
    )  # train accuracy is counted on the clean part
    assert out.metrics["loss_clean"] == pytest.approx(
        float(F.cross_entropy(parts[0], y).detach()), rel=1e-5
    )
    one = build_defense("mat_mixed", {"strengths": "0.01", "protocol": "online"}).step(
        copy.deepcopy(ref), x, y, _ctx()
    )
    assert float(one.loss.detach()) < float(out.loss.detach())  # every strength adds its own term


def _parallel(strengths: list[float]) -> nn.Module:
    torch.manual_seed(0)
    m = create_model(
        "mat_parallel",
        N_CLASSES,
        base="small_cnn",
        base_kwargs={"width": 4, "blocks": 1, "dropout": 0.0},
        branches=len(strengths),
        strengths=strengths,
    )
    with torch.no_grad():  # a vote that is not the uniform start, so a_k depends on the input
        m.backbone.vote.weight.normal_(0, 1.0)
    return m.train()


def _replay_parallel(m: nn.Module, x: torch.Tensor, y: torch.Tensor, strengths: list[float]):  # type: ignore[no-untyped-def]
    """Eq. 3 per branch on its own FGSM strength, then eq. 4's vote on detached eval outputs."""
    net, b = m.backbone, x.shape[0]
    losses, advs = [], []
    for k, s in enumerate(strengths):
        f = nn.Sequential(m.normalize, net.branches[k])
        adv = _sign_step(f, x, y, s)
        z = f(torch.cat([x, adv]))
        losses.append(F.cross_entropy(z[:b], y) + F.cross_entropy(z[b:], y))
        advs.append(adv)
    m.eval()
    with torch.no_grad():
        probs = [F.softmax(br(m.normalize(torch.cat([x, *advs]))), 1) for br in net.branches]
    m.train()
    a = F.softmax(net.vote(torch.cat(probs, 1)), 1)
    voted = sum(a[:, k : k + 1] * probs[k] for k in range(len(strengths)))
    vote_loss = F.nll_loss(torch.log(voted), y.repeat(len(strengths) + 1))
    return sum(losses), vote_loss


def test_parallel_each_branch_sees_clean_plus_its_own_strength_and_the_vote_learns_alone() -> None:
    strengths = [0.02, 0.2]
    m, (x, y) = _parallel(strengths), _batch(8, 8)
    ref = copy.deepcopy(m)
    out = build_defense("mat_parallel", {"protocol": "online"}).step(
        m, x, y, _ctx()
    )  # strengths come from the model
    branch_sum, vote_loss = _replay_parallel(ref, x, y, strengths)
    assert float(out.loss.detach()) == pytest.approx(
        float((branch_sum + vote_loss).detach()), rel=1e-5
    )
    assert out.metrics["vote_loss"] == pytest.approx(float(vote_loss.detach()), rel=1e-5)
    swapped = _replay_parallel(copy.deepcopy(_parallel(strengths)), x, y, strengths[::-1])[0]
    assert float(swapped.detach()) != pytest.approx(
        float(branch_sum.detach()), rel=1e-4
    )  # which branch gets which strength matters
    # gradients: branches only from their eq.-3 losses, the voting unit only from the vote (eq. 4)
    out.loss.backward()
    branch_sum.backward()
    for p, q in zip(
        m.backbone.branches.parameters(), ref.backbone.branches.parameters(), strict=True
    ):
        assert torch.allclose(p.grad, q.grad, atol=1e-5)
    g_vote = torch.autograd.grad(vote_loss, [ref.backbone.vote.weight, ref.backbone.vote.bias])
    assert torch.allclose(m.backbone.vote.weight.grad, g_vote[0], atol=1e-6)
    assert torch.allclose(m.backbone.vote.bias.grad, g_vote[1], atol=1e-6)
    assert float(m.backbone.vote.weight.grad.abs().sum()) > 0
    assert m.training


def test_parallel_output_is_the_learned_vote() -> None:
    m, (x, _) = _parallel([0.01, 0.03, 0.05]).eval(), _batch(8, 8)
    net = m.backbone
    with torch.no_grad():
        probs = [F.softmax(br(m.normalize(x)), 1) for br in net.branches]
        a = F.softmax(net.vote(torch.cat(probs, 1)), 1)
        voted = sum(a[:, k : k + 1] * probs[k] for k in range(3))
        out = m(x)
    assert torch.allclose(a.sum(1), torch.ones(8))  # sum_k a_k = 1 (eq. 4)
    assert a.std(0).sum() > 0  # coefficients depend on the input
    assert torch.allclose(out.exp(), voted, atol=1e-5)  # logits = log of the voted probabilities
    fresh = ParallelMAT(N_CLASSES, 3, base_kwargs={"width": 4}, branches=3)
    assert torch.allclose(
        fresh.vote_weights([torch.rand(2, N_CLASSES)] * 3), torch.full((2, 3), 1 / 3)
    )


# a hand-made accuracy matrix: row i trained at strength i, column j attacked at strength j
ACC = torch.tensor(
    [
        [0.90, 0.50, 0.20, 0.10],
        [0.86, 0.51, 0.21, 0.11],  # nearly the same working zone as row 0
        [0.60, 0.60, 0.55, 0.40],
        [0.30, 0.45, 0.70, 0.85],
    ]
)


def _best(penalty: float, size: int = 0) -> list[int]:
    sets = [c for r in range(1, 5) for c in itertools.combinations(range(4), r) if size in (0, r)]
    return list(max(sets, key=lambda c: mat.walk_score(ACC, c, penalty)))


@pytest.mark.parametrize(
    "penalty,size,expect",
    [(0.03, 0, [0, 3]), (0.01, 0, [0, 2, 3]), (0.0, 1, [3]), (0.01, 2, [0, 3])],
)
def test_random_walk_picks_the_complementary_strengths(
    penalty: float, size: int, expect: list[int]
) -> None:
    assert _best(penalty, size) == expect  # the hand-computed optimum of G = H - penalty * S
    pick = mat.random_walk_select(
        ACC,
        generator=torch.Generator().manual_seed(3),
        num_strengths=size,
        penalty=penalty,
        trials=50,
    )
    assert pick == expect
    again = mat.random_walk_select(
        ACC,
        generator=torch.Generator().manual_seed(3),
        num_strengths=size,
        penalty=penalty,
        trials=50,
    )
    assert again == pick


def test_transition_matrix_walks_toward_complementary_strengths() -> None:
    p = mat.transition_matrix(ACC)
    assert torch.allclose(p.sum(1), torch.ones(4, dtype=p.dtype)) and torch.all(p.diagonal() == 0)
    assert p[0, 3] > p[0, 2] > p[0, 1]  # from the low-strength model: furthest working zone first
    one = mat.random_walk_select(
        ACC, generator=torch.Generator().manual_seed(0), penalty=0.03, trials=1, steps=1
    )
    assert len(one) <= 2  # a single 1-move walk sees at most two strengths


def _setup_ctx(tmp_path: Path) -> SetupContext:
    train = SubsetDataset(
        load_dataset("shapes", "test"), 256
    )  # the small split: generated in seconds
    return SetupContext(
        arch="small_cnn",
        arch_kwargs={"width": 4},
        info=train.info,
        train_ds=train,
        test_ds=None,
        seed=0,
        device="cpu",
        workdir=tmp_path / "walk",
        batch_size=64,
        fit=fit,
    )


WALK = {
    "candidates": "0.02,0.1",
    "walk_images": "128",
    "walk_val": "64",
    "walk_pretrain_epochs": "1",
    "walk_trials": "20",
    "protocol": "online",
}


def test_setup_selects_strengths_by_walk_and_resumes_from_its_cache(tmp_path: Path) -> None:
    ctx = _setup_ctx(tmp_path)
    d = build_defense("mat_mixed", WALK)
    built = d.setup(ctx)
    cache = json.loads((tmp_path / "walk" / "mat_walk.json").read_text())
    rows = cache["rows"]
    assert len(rows) == 2 and all(len(r) == 2 and all(0 <= v <= 1 for v in r) for r in rows)
    assert d.strengths and set(d.strengths) <= {0.02, 0.1}
    assert "random walk" in built.notes and built.arch == "small_cnn"
    # a rerun after a kill between rows: only the missing row is trained, and it comes out the same
    (tmp_path / "walk" / "mat_walk.json").write_text(
        json.dumps({"key": cache["key"], "rows": rows[:1]})
    )
    calls: list[object] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["out"])
        return fit(*args, **kwargs)

    d2 = build_defense("mat_mixed", WALK)
    d2.setup(dataclasses.replace(ctx, fit=spy))
    assert [Path(str(c)).name for c in calls] == [
        "walk_start.pt",
        "walk_1.pt",
    ]  # the start is reloaded, row 0 cached
    assert json.loads((tmp_path / "walk" / "mat_walk.json").read_text())["rows"] == rows
    assert d2.strengths == d.strengths


def test_bad_input_is_one_sentence() -> None:
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        build_defense("mat_mixed", {"strengths": "0.02,3"})
    with pytest.raises(ValueError, match="num_strengths"):
        build_defense("mat_parallel", {"num_strengths": "11"})
    m, (x, y) = nn.Sequential(nn.Flatten(), nn.Linear(48, N_CLASSES)), _batch()
    with pytest.raises(ValueError, match="no strengths"):
        build_defense("mat_mixed").step(m, x, y, _ctx())
    with pytest.raises(ValueError, match="composite"):
        build_defense("mat_parallel", {"strengths": "0.01"}).step(m, x, y, _ctx())
    with pytest.raises(ValueError, match="2 strengths for 3 branches"):
        ParallelMAT(N_CLASSES, branches=3, strengths=[0.1, 0.2])


@pytest.mark.slow
@pytest.mark.parametrize("defense", ["mat_parallel", "mat_mixed"])
def test_trained_checkpoint_rebuilds_and_gives_the_same_outputs(
    defense: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import robench.training.job as trainer
    from robench.models.loading import load_model

    saved: list[nn.Module] = []
    orig = trainer.save_checkpoint
    monkeypatch.setattr(
        trainer,
        "save_checkpoint",
        lambda model, *a, **k: (saved.append(copy.deepcopy(model)), orig(model, *a, **k))[1],
    )
    path = trainer.train(
        defense,
        epochs=1,
        train_images=256,
        batch_size=64,
        arch_kwargs={"width": 8},
        options={"strengths": "0.01,0.03", "protocol": "online"},
        out=tmp_path / "m.pt",
    )
    raw = torch.load(path, weights_only=True)
    loaded = load_model(path).model
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(loaded(x), saved[0].eval()(x), atol=1e-6)
    card = json.loads(path.with_suffix(".json").read_text())
    assert "0.01,0.03 (given)" in card["notes"]
    if defense == "mat_parallel":
        assert raw["meta"]["arch"] == "mat_parallel"
        assert raw["meta"]["arch_kwargs"] == {
            "base": "small_cnn",
            "base_kwargs": {"width": 8},
            "branches": 2,
            "strengths": [0.01, 0.03],
        }
        assert isinstance(loaded.backbone, ParallelMAT) and loaded.backbone.strengths == [
            0.01,
            0.03,
        ]
    else:
        assert raw["meta"]["arch"] == "small_cnn"
