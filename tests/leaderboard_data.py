"""Small result sets for the leaderboard tests: real ``robench.evaluate`` runs and edited copies."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from robench import evaluate
from robench.evaluation.record import Record
from robench.models.checkpoint import CheckpointMeta, save_checkpoint

XSS = "<img src=x onerror=alert(1)>"
XSS_TITLE = "<img src=x onerror=\"document.title='pwned'\">"
FAST = ["gaussian_noise", "contrast", "pgd"]
N_IMAGES = 48
_SHARED: dict[str, dict[str, Any]] = {}


def shared_results(tmp_path_factory: Any, trained: torch.nn.Module) -> dict[str, Any]:
    """:func:`make_results` once per session (both leaderboard test modules read the same files)."""
    if "data" not in _SHARED:
        _SHARED["data"] = make_results(tmp_path_factory.mktemp("lb-results"), trained)
    return _SHARED["data"]


def _save(model: torch.nn.Module, path: Path, defense: str) -> Path:
    meta = CheckpointMeta(
        arch="small_cnn",
        arch_kwargs={"width": 8},
        num_classes=10,
        input_size=32,
        mean=tuple(model.normalize.mean.flatten().tolist()),
        std=tuple(model.normalize.std.flatten().tolist()),
        dataset="shapes",
        defense=defense,
    )
    save_checkpoint(model, path, meta)
    return path


def make_results(root: Path, trained: torch.nn.Module) -> dict[str, Any]:
    """Two evaluated checkpoints and an XSS copy on another dataset.

    ``base`` has a white-box attack, ``noisy`` is scored against it.

    Returns paths and records: ``dir`` (the result folder), ``base``, ``noisy`` (typed records),
    ``xss`` (the hostile copy, as parsed JSON), ``paths`` (name -> json path), ``ckpt`` (name ->
    checkpoint path).
    """
    results, ckpts = root / "results", root / "ckpt"
    ckpts.mkdir(parents=True)
    noisy = copy.deepcopy(trained)
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        for p in noisy.parameters():
            p.add_(0.08 * torch.randn(p.shape, generator=g))
    ck = {
        "base": _save(trained, ckpts / "base.pt", "standard"),
        "noisy": _save(noisy, ckpts / "noisy.pt", "mixup"),
    }
    kw = {"n_images": N_IMAGES, "out": results, "surrogate": "none", "plots": False}
    base = evaluate(str(ck["base"]), model_id="base", baseline="none", perturbations=FAST, **kw)
    # no white-box attack for the second model: no gradient-masking checks (they cost seconds)
    other = evaluate(
        str(ck["noisy"]),
        model_id="noisy",
        baseline=str(base.paths["json"]),
        perturbations=FAST[:2],
        **kw,
    )
    xss = hostile_copy(other.record)
    xss_path = results / "xss.json"
    xss_path.write_text(json.dumps(xss))
    return {
        "dir": results,
        "base": base.record,
        "noisy": other.record,
        "xss": xss,
        "ckpt": ck,
        "paths": {"base": base.paths["json"], "noisy": other.paths["json"], "xss": xss_path},
    }


def hostile_copy(record: Record) -> dict[str, Any]:
    """A valid record with markup in every free-text field, another dataset, flagged for masking."""
    rec = record.to_dict()
    rec["model"].update(
        id=XSS,
        source=XSS_TITLE,
        meta=dict(rec["model"]["meta"], arch=XSS, defense=XSS_TITLE),
        card={
            "name": XSS,
            "command": XSS_TITLE,
            "notes": "<script>alert(2)</script>",
            "defense": XSS,
        },
    )
    rec["run_key"]["dataset"] = rec["dataset"]["name"] = "shapes-<b>bold</b>"
    rec["baseline"] = {"id": XSS_TITLE, "sha256": None, "source": XSS}
    rec["environment"]["device"] = "<script>alert(3)</script>"
    rec["config"]["suite"] = XSS
    rec["gradient_masking"] = [
        {"name": "accuracy_falls_with_eps", "passed": False, "detail": "<b>rises</b> " + XSS_TITLE},
        {"name": "whitebox_below_transfer", "passed": None, "detail": XSS},
    ]
    rec["perturbations"][XSS] = {
        "kind": "corruption",
        "family": "noise",
        "status": "skipped",
        "reason": XSS_TITLE,
    }
    rec["perturbations"]["contrast"]["severities"][0]["parameter"] = XSS
    return rec


def bad_files(folder: Path, record: Record) -> dict[str, str]:
    """Write broken result files; returns file name -> a phrase its skip reason must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    good = record.to_dict()
    (folder / "truncated.json").write_text(json.dumps(good)[:500])
    other_version = dict(good, schema_version=2)
    (folder / "v2.json").write_text(json.dumps(other_version))
    (folder / "card.json").write_text(json.dumps({"name": "standard", "sha256": "0" * 64}))
    wrong_type = copy.deepcopy(good)
    wrong_type["clean"]["accuracy"] = "high"
    (folder / "wrong-type.json").write_text(json.dumps(wrong_type))
    edited = copy.deepcopy(good)
    edited["perturbations"]["contrast"]["severities"][2]["accuracy"] = 0.99
    (folder / "edited.json").write_text(json.dumps(edited))
    return {
        "truncated.json": "not a readable result file",
        "v2.json": "schema version 2",
        "card.json": "not a robench result",
        "wrong-type.json": "accuracy",
        "edited.json": "0.99",
    }
