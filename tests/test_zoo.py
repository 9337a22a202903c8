"""The committed model zoo: one checkpoint per defense, honest cards, committed evaluations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robench.data import load_dataset
from robench.defenses import DEFENSES
from robench.evaluation.record import read_record
from robench.models.loading import load_model
from robench.models.zoo import read_card, resolve_zoo, zoo_root
from robench.training.loop import evaluate_accuracy

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "robench" / "models" / "zoo_files" / "shapes"
RESULTS = ROOT / "leaderboard" / "shapes"
ENTRIES = sorted(p.stem for p in ZOO.glob("*.pt"))
CARD_FIELDS = (
    "defense",
    "arch",
    "dataset",
    "command",
    "seed",
    "epochs",
    "wall_time_s",
    "clean_accuracy",
    "sha256",
)


def test_the_tests_read_the_repository_zoo() -> None:
    assert zoo_root().resolve() == ZOO.parent.resolve()


def test_every_defense_and_the_surrogate_have_an_entry() -> None:
    assert set(DEFENSES.names()) | {"vgg_surrogate"} <= set(ENTRIES)


@pytest.mark.parametrize("name", ENTRIES)
def test_entry_has_a_full_card_a_matching_hash_and_loads_without_pickle(name: str) -> None:
    card = read_card(ZOO / f"{name}.json")
    raw = json.loads((ZOO / f"{name}.json").read_text())
    assert all(raw.get(k) not in (None, "") for k in CARD_FIELDS), name
    # the committed commands ran in a source checkout whose zoo folder was model_zoo/ then
    outs = (f"--out {d}/shapes/{name}.pt" for d in ("model_zoo", "robench/models/zoo_files"))
    assert card.command.startswith("robench train ") and any(o in card.command for o in outs)
    assert card.dataset == "shapes" and card.name == name
    path, _ = resolve_zoo(f"zoo:{name}")  # verifies the SHA-256 the card states
    assert (ZOO / f"{name}.pt").stat().st_size <= 2.5 * 2**20, "zoo checkpoints stay small"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # no code runs
    assert ckpt["meta"]["defense"] == card.defense and ckpt["meta"]["arch"] == card.arch


@pytest.mark.slow  # every zoo checkpoint on the 2000 test images
@pytest.mark.parametrize("name", ENTRIES)
def test_card_accuracy_is_what_the_checkpoint_scores(name: str) -> None:
    card = read_card(ZOO / f"{name}.json")
    model = load_model(f"zoo:{name}").model.eval()
    acc = evaluate_accuracy(model, load_dataset("shapes", "test"))
    assert acc == pytest.approx(
        card.clean_accuracy, abs=2 / 2000
    )  # float summation order may flip one image


@pytest.mark.parametrize("name", [n for n in ENTRIES if n != "vgg_surrogate"])
def test_entry_has_a_committed_evaluation_of_this_very_file(name: str) -> None:
    card = read_card(ZOO / f"{name}.json")
    matches = []
    for f in RESULTS.glob("*.json"):
        rec = read_record(f)
        if rec.model.sha256 == card.sha256 and rec.model.id == name:
            matches.append(rec)
    assert matches, f"no result under leaderboard/shapes for zoo:{name} with its current hash"
    rec = matches[0]
    done = set(rec.done())
    # the benchmark's 24, and beyond them only the opt-in suites the papers' experiments use
    # (AutoAttack; the sensor suite for Cavey et al.; MAT's FGSM sweep; fusion's foreground blur)
    from robench import perturbations as P

    mtlat24 = set(P.names(suite="mtlat24"))
    extra = {n for s in ("autoattack", "sensor", "mat", "context") for n in P.names(suite=s)}
    assert len(mtlat24) == 24 and mtlat24 <= done <= mtlat24 | extra and rec.dataset.n_images == 500


def test_every_committed_transfer_column_was_crafted_on_the_zoo_surrogate() -> None:
    """One surrogate for the whole table: transfer columns of two surrogates do not compare."""
    surrogate = read_card(ZOO / "vgg_surrogate.json").sha256
    results = [*RESULTS.glob("*.json"), *(ROOT / "papers" / "shapes").glob("*/*__n*.json")]
    crafted = {
        (f.name, k, e.surrogate.sha256)
        for f in results
        for k, e in read_record(f).perturbations.items()
        if e.surrogate is not None
    }
    assert {f for f, _, _ in crafted} >= {f.name for f in RESULTS.glob("*.json")}
    assert [c for c in crafted if c[2] != surrogate] == []


def test_every_spelling_of_an_entry_is_one_model_id() -> None:
    from robench.models.zoo import zoo_model_id

    assert zoo_model_id("zoo:standard") == zoo_model_id("zoo:shapes/standard") == "standard"
    assert zoo_model_id("zoo:cifar10/standard") == "cifar10-standard"
    assert load_model("zoo:shapes/mtlat").model_id == "mtlat"
