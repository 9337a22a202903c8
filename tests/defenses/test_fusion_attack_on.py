"""Akumalla et al.'s protocol end to end: FGSM crafted on a fusion model's object network.

The run's adversarials are checked against FGSM written out here on ``object_network`` alone, and
every recorded accuracy (object, context, joint) against a count on the recreated images.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import Tensor, nn

import robench
from robench import perturbations as P
from robench.cli import main
from robench.data import load_dataset
from robench.evaluation import attack_step
from robench.evaluation.components import component_networks, crafting_network
from robench.evaluation.loop import EvalConfig, select_indices
from robench.evaluation.plan import plan_evaluation
from robench.evaluation.record import Record, ResultError, read_record
from robench.evaluation.validation import validate_record
from robench.models import create_model
from robench.models.checkpoint import CheckpointMeta, save_checkpoint
from robench.models.fusion import context_network, fusion_net, object_network
from robench.models.loading import load_model

N = 40  # one batch: the run's gradients see the same batch as the ones computed here
RUN = {"n_images": N, "batch_size": N, "baseline": "none", "surrogate": "none", "plots": False}
ATTACKED = ["fgsm", "foreground_blur"]


def _meta(model: nn.Module, arch: str, kwargs: dict[str, Any]) -> CheckpointMeta:
    return CheckpointMeta(
        arch=arch,
        arch_kwargs=kwargs,
        num_classes=10,
        input_size=32,
        mean=tuple(model.normalize.mean.flatten().tolist()),
        std=tuple(model.normalize.std.flatten().tolist()),
        dataset="shapes",
    )


@pytest.fixture(scope="module")
def fusion_ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_trained: nn.Module) -> Path:
    """A tiny fusion model: tiny_trained as object network, a small context net, a fitted joint."""
    kwargs = {
        "base": "small_cnn",
        "base_kwargs": {"width": 8},
        "context_kwargs": {"width": 2},
        "context_classes": 10,
    }
    ds = load_dataset("shapes", "test")  # as tiny_trained: its images are at hand already
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model("fusion", 10, **kwargs)
        net = fusion_net(model)
        net.object.load_backbone_state(tiny_trained.backbone.state_dict())
        model.normalize.load_state_dict(tiny_trained.normalize.state_dict())
        g = torch.Generator().manual_seed(0)
        ctx = context_network(model)
        assert ds.context is not None
        for params, loss_of in (
            (net.context.parameters(), lambda x, y, c: F.cross_entropy(ctx(x), c)),
            (net.joint.parameters(), lambda x, y, c: F.cross_entropy(model(x), y)),
        ):
            opt = torch.optim.Adam(params, lr=0.01)
            model.eval()  # batch norm statistics stay as they are
            for _ in range(30):
                idx = torch.randint(0, len(ds), (32,), generator=g)
                x, y = ds.get_batch(idx)
                loss = loss_of(x, y, ds.context[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    path = tmp_path_factory.mktemp("fusion") / "fusion.pt"
    save_checkpoint(model.eval(), path, _meta(model, "fusion", kwargs))
    return path


@pytest.fixture(scope="module")
def object_run(
    fusion_ckpt: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[robench.Report, Path]:
    out = tmp_path_factory.mktemp("object-run")
    with pytest.MonkeyPatch.context() as mp:
        # the gradient-masking checks (tens of PGD runs on the joint model) are not under test
        mp.setattr(attack_step, "masking_entry", lambda *args: ())
        rep = robench.evaluate(
            str(fusion_ckpt), perturbations=ATTACKED, out=out, attack_on="object", **RUN
        )
    return rep, out


def _images() -> tuple[np.ndarray, Tensor, Tensor, Tensor]:
    ds = load_dataset("shapes", "test")
    idx = select_indices(len(ds), N, 0, "shapes")
    x, y = ds.get_batch(torch.from_numpy(idx))
    assert ds.boxes is not None
    return idx, x, y, ds.boxes[torch.from_numpy(idx)]


def _fgsm(net: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """One signed-gradient step of the cross-entropy of ``net``, clipped to [0, 1]."""
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(net(xg), y, reduction="sum"), xg)
    return (x + eps * grad.sign()).clamp(0.0, 1.0).detach()


def _correct(net: nn.Module, x: Tensor, y: Tensor) -> np.ndarray:
    with torch.no_grad():
        return (net(x).argmax(1) == y).numpy()


def _networks(path: Path) -> dict[str, nn.Module]:
    model = load_model(path).model.eval()
    return {"joint": model, "object": object_network(model), "context": context_network(model)}


def _recorded(sev: Any) -> dict[str, np.ndarray]:
    return {"joint": sev.bits(), **{k: a.bits() for k, a in sev.components.items()}}


def test_fgsm_is_crafted_on_the_object_network_and_scored_on_the_joint_model(
    object_run: tuple[robench.Report, Path], fusion_ckpt: Path
) -> None:
    rep, _ = object_run
    rec = rep.record
    assert rec.config.attack_on == "object" and rec.run_key.attack_on == "object"
    nets = _networks(fusion_ckpt)
    _, x, y, _ = _images()
    spec = P.get("fgsm")
    differs = 0
    for sev in rec.perturbations["fgsm"].severities:
        eps = spec.strengths[sev.severity - 1]
        adv = _fgsm(nets["object"], x, y, eps)
        on_joint = _fgsm(nets["joint"], x, y, eps)
        assert float((adv - x).abs().max()) <= eps + 1e-6
        assert not torch.equal(adv, on_joint)  # the two networks' gradients differ
        got = _recorded(sev)
        assert set(got) == {"joint", "object", "context"}
        for name, net in nets.items():  # every network scored on the object network's FGSM
            np.testing.assert_array_equal(got[name], _correct(net, adv, y), err_msg=name)
        differs += int(not np.array_equal(got["joint"], _correct(nets["joint"], on_joint, y)))
        assert sev.components["object"].accuracy == pytest.approx(got["object"].mean())
    assert differs > 0  # crafting on the joint model would have given other counts


def test_clean_and_foreground_blur_score_all_three_networks(
    object_run: tuple[robench.Report, Path], fusion_ckpt: Path
) -> None:
    rec = object_run[0].record
    nets = _networks(fusion_ckpt)
    idx, x, y, boxes = _images()
    assert rec.clean is not None and rec.clean.components is not None
    clean = {"joint": rec.clean.bits(), **{k: a.bits() for k, a in rec.clean.components.items()}}
    for name, net in nets.items():
        np.testing.assert_array_equal(clean[name], _correct(net, x, y), err_msg=name)
    blur = P.get("foreground_blur")
    for sev in rec.perturbations["foreground_blur"].severities:
        xb = blur(x, sev.severity, seed=0, indices=idx.tolist(), preset="cifar", boxes=boxes)
        got = _recorded(sev)
        for name, net in nets.items():
            np.testing.assert_array_equal(got[name], _correct(net, xb, y), err_msg=name)
    # R is the joint model's alone
    fg = rec.perturbations["foreground_blur"]
    assert fg.scores is not None and fg.scores.R == pytest.approx(
        np.mean([s.accuracy for s in fg.severities]) / rec.clean.accuracy
    )


def test_long_csv_gives_the_papers_table(object_run: tuple[robench.Report, Path]) -> None:
    rep, _ = object_run
    long = pd.read_csv(rep.paths["long_csv"])
    assert set(long["attack_on"]) == {"object"}
    rows = long[long["perturbation"] == "fgsm"].set_index("severity")
    for sev in rep.record.perturbations["fgsm"].severities:
        row = rows.loc[sev.severity]
        assert row["parameter"] == sev.parameter
        assert row["accuracy"] == pytest.approx(sev.accuracy)
        assert row["object_accuracy"] == pytest.approx(sev.components["object"].accuracy)
        assert row["context_accuracy"] == pytest.approx(sev.components["context"].accuracy)
    clean = long[long["perturbation"] == "clean"].iloc[0]
    assert rep.record.clean is not None and rep.record.clean.components is not None
    assert clean["object_accuracy"] == pytest.approx(rep.record.clean.components["object"].accuracy)
    assert len(long[long["perturbation"] == "foreground_blur"]["context_accuracy"].dropna()) == 5


def test_record_round_trips_and_the_validator_checks_components(
    object_run: tuple[robench.Report, Path],
) -> None:
    rep, _ = object_run
    path = rep.paths["json"]
    back = read_record(path)
    assert back.to_dict() == rep.record.to_dict()
    assert back.perturbations["fgsm"].severities == rep.record.perturbations["fgsm"].severities
    data = json.loads(Path(path).read_text())
    assert Record.from_dict(data).to_dict() == data
    assert data["config"]["attack_on"] == data["run_key"]["attack_on"] == "object"
    validate_record(data)
    bad = copy.deepcopy(data)
    bad["perturbations"]["fgsm"]["severities"][0]["components"]["object"]["n_correct"] += 1
    with pytest.raises(ResultError, match=r"severity 1 \(object network\): accuracy"):
        validate_record(bad, "bad.json")
    bad = copy.deepcopy(data)
    bad["clean"]["components"]["joint"] = bad["clean"]["components"]["object"]
    with pytest.raises(ResultError, match="does not match the result schema at clean.components"):
        validate_record(bad, "bad.json")
    bad = copy.deepcopy(data)
    bad["config"]["attack_on"] = "everything"
    with pytest.raises(ResultError, match="config.attack_on"):
        validate_record(bad, "bad.json")
    del bad["config"]["attack_on"]  # a config that says model, a key that says object
    with pytest.raises(ResultError, match="config.attack_on and run_key.attack_on disagree"):
        validate_record(bad, "bad.json")


def test_the_dry_run_sees_the_object_run(
    object_run: tuple[robench.Report, Path], fusion_ckpt: Path, tiny_trained: nn.Module
) -> None:
    _, out = object_run  # runs before test_attack_on_is_part_of_the_run_key sets it aside
    args = {k: v for k, v in RUN.items() if k != "plots"}
    done = plan_evaluation(
        str(fusion_ckpt), perturbations=ATTACKED, out=out, attack_on="object", **args
    )
    assert done.counts == []  # the object run is resumed: nothing left to do
    plain = plan_evaluation(str(fusion_ckpt), perturbations=["fgsm"], out=out, **args)
    assert [c.what for c in plain.counts][:2] == ["clean", "fgsm"]  # another run key
    with pytest.raises(ValueError, match="needs a composite model"):
        plan_evaluation(tiny_trained, perturbations=["fgsm"], out=out, attack_on="object", **args)


def test_attack_on_is_part_of_the_run_key(
    object_run: tuple[robench.Report, Path], fusion_ckpt: Path
) -> None:
    rep, out = object_run
    again = robench.evaluate(
        str(fusion_ckpt), perturbations=["foreground_blur"], out=out, attack_on="object", **RUN
    )
    assert again.record.perturbations.keys() == rep.record.perturbations.keys()  # resumed
    assert again.paths["json"] == rep.paths["json"]
    plain = robench.evaluate(
        str(fusion_ckpt), perturbations=["foreground_blur"], out=out, attack_on="model", **RUN
    )
    assert "fgsm" not in plain.record.perturbations  # never mixed with the object run's
    assert plain.record.run_key.attack_on == "model"
    assert "attack_on" not in plain.record.to_dict()["run_key"]  # older files' keys stay equal
    assert list(out.glob("*.json.*.old"))  # the object run is kept aside, not overwritten
    # a composite evaluated the usual way still records its networks
    assert plain.record.perturbations["foreground_blur"].severities[0].components is not None


def test_only_the_object_network_is_differentiated(fusion_ckpt: Path) -> None:
    model = load_model(fusion_ckpt).model
    crafter = crafting_network(model, "object")
    net = fusion_net(model)
    ids = {id(p) for p in crafter.parameters()}
    assert ids == {id(p) for p in net.object.parameters()}
    assert not ids & {id(p) for p in [*net.context.parameters(), *net.joint.parameters()]}
    assert crafting_network(model, "model") is model
    assert set(component_networks(model, 10)) == {"object", "context"}
    assert set(component_networks(model, 7)) == set()  # other class counts are not scored


def test_a_model_without_an_object_network_gets_one_sentence(
    tmp_path: Path, tiny_trained: nn.Module
) -> None:
    with pytest.raises(ValueError, match="needs a composite model") as err:
        robench.evaluate(
            tiny_trained, perturbations=["fgsm"], out=tmp_path, attack_on="object", **RUN
        )
    assert "\n" not in str(err.value) and "SmallCNN" in str(err.value)
    assert not list(tmp_path.glob("*.json"))  # refused before any work
    with pytest.raises(ValueError, match="attack_on must be model or object"):
        EvalConfig(attack_on="context")
    small = tmp_path / "small.pt"
    save_checkpoint(tiny_trained, small, _meta(tiny_trained, "small_cnn", {"width": 8}))
    args = ["evaluate", str(small), "-p", "fgsm", "--n-images", "8", "--out", str(tmp_path)]
    res = CliRunner().invoke(main, [*args, "--baseline", "none", "--attack-on", "object"])
    assert res.exit_code != 0
    (line,) = res.output.strip().splitlines()
    assert re.match(r"Error: --attack-on object needs a composite model", line)
    res = CliRunner().invoke(main, [*args, "--attack-on", "joint"])
    assert res.exit_code != 0 and "'joint' is not one of 'model', 'object'" in res.output


def test_help_shows_the_option() -> None:
    res = CliRunner().invoke(main, ["evaluate", "--help"])
    assert res.exit_code == 0
    assert "--attack-on [model|object]" in res.output
