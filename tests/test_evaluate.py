"""The main job end to end on tiny runs: loading, counting, resuming, markers, files."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from robench import evaluate
from robench.cli import main
from robench.data import load_dataset
from robench.evaluation.loop import select_indices
from robench.models import create_model
from robench.models.checkpoint import CheckpointMeta, save_checkpoint
from robench.report import TABLE1_COLUMNS

FAST = ["gaussian_noise", "contrast"]


class PlainNet(torch.nn.Module):
    """A model robench did not build: plain torch, its own normalisation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv((x - 0.5) / 0.25)).mean((2, 3)))


def _independent_accuracy(model: torch.nn.Module, n: int, seed: int = 0) -> float:
    ds = load_dataset("shapes", "test")
    idx = select_indices(len(ds), n, seed, "shapes")
    x = torch.stack([ds[int(i)][0] for i in idx])
    y = torch.tensor([ds[int(i)][1] for i in idx])
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _small(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("small_cnn", 10, width=4).eval()


def test_torchscript_and_state_dict_models_score_end_to_end(tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = PlainNet().eval()
    ts = tmp_path / "plain.ts.pt"
    torch.jit.script(plain).save(str(ts))
    rep = evaluate(
        str(ts), perturbations=FAST, n_images=60, out=tmp_path / "r", baseline="none", plots=False
    )
    assert rep.record["model"]["kind"] == "torchscript"
    assert rep.clean_accuracy == pytest.approx(_independent_accuracy(plain, 60))
    torch.manual_seed(1)
    sd_model = create_model("small_cnn", 10).eval()
    sd = tmp_path / "weights.pt"
    torch.save(sd_model.backbone.state_dict(), sd)
    with pytest.raises(ValueError, match="--arch"):
        evaluate(str(sd), perturbations=FAST, n_images=60, out=tmp_path / "r", baseline="none")
    rep2 = evaluate(
        str(sd),
        arch="small_cnn",
        perturbations=["contrast"],
        n_images=60,
        out=tmp_path / "r",
        baseline="none",
        plots=False,
    )
    # raw state_dict of the backbone: create_model's default normalisation applies, as documented
    assert rep2.record["model"]["kind"] == "state_dict"
    assert rep2.clean_accuracy == pytest.approx(_independent_accuracy(sd_model, 60))


def test_robench_checkpoint_clean_accuracy_equals_independent_count(tmp_path: Path) -> None:
    m = _small(2)
    path = tmp_path / "m.pt"
    save_checkpoint(
        m,
        path,
        CheckpointMeta(
            arch="small_cnn",
            arch_kwargs={"width": 4},
            num_classes=10,
            input_size=32,
            mean=tuple(m.normalize.mean.flatten().tolist()),
            std=tuple(m.normalize.std.flatten().tolist()),
        ),
    )
    rep = evaluate(
        str(path), perturbations=FAST, n_images=80, out=tmp_path / "r", baseline="none", plots=False
    )
    assert rep.clean_accuracy == pytest.approx(_independent_accuracy(m, 80))
    per = rep.record["perturbations"]["gaussian_noise"]
    assert [s["severity"] for s in per["severities"]] == [1, 2, 3, 4, 5]
    assert per["R"] == pytest.approx(
        np.mean([s["accuracy"] for s in per["severities"]]) / rep.clean_accuracy
    )


def test_csv_header_and_long_table_roundtrip(tmp_path: Path) -> None:
    rep = evaluate(
        _small(), model_id="tiny", perturbations=FAST, n_images=40, out=tmp_path, baseline="none"
    )
    header = Path(rep.paths["csv"]).read_text().splitlines()[0].split(",")
    assert header == ["model", "Clean", *TABLE1_COLUMNS]
    assert header[2:17] == [
        "gaussian_noise",
        "shot_noise",
        "impulse_noise",
        "defocus_blur",
        "glass_blur",
        "motion_blur",
        "zoom_blur",
        "snow",
        "frost",
        "fog",
        "brightness",
        "contrast",
        "elastic_transform",
        "pixelate",
        "jpeg_compression",
    ]
    assert header[17:] == [
        "occlusion",
        "color_distortion",
        "translation",
        "rotation",
        "pgd",
        "pgd_ll",
        "cw_l2",
        "mi_fgsm_0.04",
        "mi_fgsm_0.08",
    ]
    long = pd.read_csv(rep.paths["long_csv"])
    assert len(long) == 1 + 5 * len(FAST)
    pd.testing.assert_frame_equal(
        long, pd.read_csv(pd.io.common.StringIO(long.to_csv(index=False)))
    )
    assert Path(rep.paths["severity_png"]).read_bytes()[:4] == b"\x89PNG"


def test_resume_never_recomputes_a_finished_perturbation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_trained: torch.nn.Module
) -> None:
    m = tiny_trained
    first = evaluate(
        m,
        model_id="tiny",
        perturbations=["contrast"],
        n_images=40,
        out=tmp_path,
        baseline="none",
        plots=False,
    )
    calls: list[str] = []
    from robench.evaluation import loop as runner

    orig = runner._corruption_entry
    monkeypatch.setattr(
        runner,
        "_corruption_entry",
        lambda spec, *a, **k: calls.append(spec.name) or orig(spec, *a, **k),
    )
    both = evaluate(
        m,
        model_id="tiny",
        perturbations=FAST,
        n_images=40,
        out=tmp_path,
        baseline="none",
        plots=False,
    )
    assert calls == ["gaussian_noise"]
    assert json.dumps(both.record["perturbations"]["contrast"]) == json.dumps(
        first.record["perturbations"]["contrast"]
    )
    calls.clear()
    evaluate(
        m,
        model_id="tiny",
        perturbations=FAST,
        n_images=40,
        out=tmp_path,
        baseline="none",
        plots=False,
        resume=False,
    )
    assert calls == ["gaussian_noise", "contrast"]


def test_markers_and_significance_against_a_baseline(tmp_path: Path) -> None:
    base = evaluate(
        _small(0),
        model_id="base",
        perturbations=FAST,
        n_images=80,
        out=tmp_path,
        baseline="none",
        plots=False,
    )
    other = evaluate(
        _small(5),
        model_id="other",
        perturbations=FAST,
        n_images=80,
        out=tmp_path,
        baseline=str(base.paths["json"]),
        plots=False,
    )
    rec = other.record
    assert rec["baseline"]["id"] == "base"
    for name in FAST:
        e = rec["perturbations"][name]
        expect = (
            "+"
            if round(e["R"], 2) > round(e["baseline_R"], 2)
            else "-"
            if round(e["R"], 2) < round(e["baseline_R"], 2)
            else ""
        )
        assert e["marker"] == expect and 0.0 <= e["p_value"] <= 1.0
    assert "mce_vs_baseline" in rec["summary"] and rec["summary"]["mce_vs_alexnet"] is None
    assert set(rec["summary"]["mean_R"]) == {"corruption"}


def test_n_images_subset_is_seeded_and_fixed() -> None:
    a = select_indices(2000, 100, 0, "shapes")
    assert np.array_equal(a, select_indices(2000, 100, 0, "shapes"))
    assert not np.array_equal(a, select_indices(2000, 100, 1, "shapes"))
    assert len(set(a.tolist())) == 100 and np.all(np.diff(a) > 0)


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    r = CliRunner()
    for args, text in [
        (["evaluate", str(tmp_path / "nope.pt")], "not found"),
        (["evaluate", "zoo:nonexistent_entry"], "unknown zoo entry"),
        (["evaluate", str(tmp_path / "nope.pt"), "-p", "fogg"], "did you mean fog"),
        (["evaluate", str(tmp_path / "nope.pt"), "--dataset", "cifar11"], "did you mean cifar10"),
    ]:
        res = r.invoke(main, args)
        assert res.exit_code != 0 and text in res.output, (args, res.output)
        assert "Traceback" not in res.output


def test_wrong_class_count_and_nan_logits(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="outputs 7 classes but the dataset has 10"):
        evaluate(
            create_model("small_cnn", 7, width=4),
            perturbations=FAST,
            n_images=10,
            out=tmp_path,
            baseline="none",
        )

    class NaNNet(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 10), float("nan"))

    with pytest.raises(ValueError, match="NaN"):
        evaluate(NaNNet(), perturbations=FAST, n_images=10, out=tmp_path, baseline="none")


_SCRIPT = """
import sys, torch
from robench import evaluate
from robench.models import create_model
torch.manual_seed(0)
m = create_model("small_cnn", 10, width=4).eval()
evaluate(m, model_id="tiny", perturbations=["gaussian_noise", "contrast", "impulse_noise", "pixelate", "glass_blur",
                                            "zoom_blur", "motion_blur"],
         n_images=160, out=sys.argv[1], baseline="none", plots=False, batch_size=40)
"""


def _strip_times(rec: dict) -> dict:  # type: ignore[type-arg]
    rec = json.loads(json.dumps(rec))
    for k in ("created", "updated"):
        rec.pop(k)
    for e in rec["perturbations"].values():
        e.pop("seconds")
    return rec


def test_kill_minus_nine_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    env = dict(os.environ)
    straight = tmp_path / "straight"
    subprocess.run([sys.executable, "-c", _SCRIPT, str(straight)], check=True, env=env)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _SCRIPT, str(killed)], env=env)
    target = killed / "tiny__shapes__s0__n160.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if target.exists() and len(json.loads(target.read_text())["perturbations"]) >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(json.loads(target.read_text())["perturbations"])
    assert done_before < 7, "the run finished before it could be killed; make it longer"
    subprocess.run([sys.executable, "-c", _SCRIPT, str(killed)], check=True, env=env)
    a = json.loads((straight / target.name).read_text())
    b = json.loads(target.read_text())
    assert _strip_times(a) == _strip_times(b)


def test_result_json_validates_against_the_schema(
    tmp_path: Path, tiny_trained: torch.nn.Module
) -> None:
    import importlib.resources

    import jsonschema

    schema = json.loads(
        importlib.resources.files("robench").joinpath("schemas/result.schema.json").read_text()
    )
    rep = evaluate(
        tiny_trained,
        model_id="tiny",
        perturbations=FAST,
        n_images=30,
        out=tmp_path,
        baseline="none",
        plots=False,
    )
    record = json.loads(Path(rep.paths["json"]).read_text())
    jsonschema.validate(record, schema)
    bad = dict(record, schema_version=99)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_checkpoint_that_does_not_fit_the_dataset_is_refused(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        main,
        ["evaluate", "zoo:standard", "--dataset", "shapes-64", "-p", "fog", "--out", str(tmp_path)],
    )
    assert res.exit_code != 0 and "takes 32 px images" in res.output and "64 px" in res.output


def test_masking_flags_reach_the_long_csv() -> None:
    from robench.report.tables import long_table, masking_flags

    rec = json.loads(
        json.dumps(
            {
                "model": {"id": "m", "sha256": None},
                "dataset": {"name": "shapes", "preset": "cifar", "n_images": 2},
                "config": {"seed": 0},
                "robench_version": "x",
                "perturbations": {},
                "clean": {"n": 2, "n_correct": 1, "accuracy": 0.5, "ci95": [0.1, 0.9]},
                "gradient_masking": [
                    {
                        "name": "large_eps_reaches_zero",
                        "passed": False,
                        "detail": "PGD accuracy 0.6 at eps 0.5",
                    },
                    {"name": "accuracy_falls_with_eps", "passed": True, "detail": "ok"},
                ],
            }
        )
    )
    assert masking_flags(rec) == "large_eps_reaches_zero: PGD accuracy 0.6 at eps 0.5"
    assert long_table([rec])["gradient_masking"].tolist() == [
        "large_eps_reaches_zero: PGD accuracy 0.6 at eps 0.5"
    ]


def test_export_program_and_trusted_pickle(tmp_path: Path, tiny_trained: torch.nn.Module) -> None:
    # torch.export leaves tracing state on the module it traces (torch 2.14): export a copy, so the
    # shared fixture stays picklable and deep-copyable for the tests after this one
    prog = torch.export.export(
        copy.deepcopy(tiny_trained),
        (torch.rand(2, 3, 32, 32),),
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
    )
    pt2 = tmp_path / "m.pt2"
    torch.export.save(prog, str(pt2))
    rep = evaluate(
        str(pt2),
        perturbations=["contrast"],
        n_images=40,
        out=tmp_path / "a",
        baseline="none",
        plots=False,
    )
    assert rep.record["model"]["kind"] == "export"
    assert rep.clean_accuracy == pytest.approx(_independent_accuracy(tiny_trained, 40))
    pickled = tmp_path / "module.pt"
    torch.save(tiny_trained, pickled)
    with pytest.raises(ValueError, match="--trust-pickle"):
        evaluate(
            str(pickled),
            perturbations=["contrast"],
            n_images=40,
            out=tmp_path / "b",
            baseline="none",
        )
    rep2 = evaluate(
        str(pickled),
        trust_pickle=True,
        perturbations=["contrast"],
        n_images=40,
        out=tmp_path / "b",
        baseline="none",
        plots=False,
    )
    assert rep2.record["model"]["kind"] == "pickle" and rep2.clean_accuracy == rep.clean_accuracy


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.target, "w"))


def test_malicious_pickle_is_refused_by_evaluate_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    torch.save({"model": _Evil(str(marker))}, bad)
    res = CliRunner().invoke(
        main, ["evaluate", str(bad), "-p", "fog", "--out", str(tmp_path / "o")]
    )
    assert res.exit_code != 0 and "refusing" in res.output and "Traceback" not in res.output
    assert not marker.exists()


def test_default_baseline_is_the_zoo_standard_evaluated_on_the_same_images(
    tmp_path: Path, tiny_trained: torch.nn.Module
) -> None:
    rep = evaluate(
        tiny_trained,
        model_id="tiny",
        perturbations=["contrast"],
        n_images=24,
        out=tmp_path,
        plots=False,
    )
    rec = rep.record
    assert (
        rec["baseline"]["id"] == "standard"
    )  # the id `robench evaluate zoo:standard` gives: one shared run file
    e = rec["perturbations"]["contrast"]
    assert (
        e["baseline_R"] is not None and e["marker"] in ("+", "-", "") and e["p_value"] is not None
    )
    base = json.loads((tmp_path / "standard__shapes__s0__n24.json").read_text())
    assert base["perturbations"]["contrast"]["R"] == pytest.approx(e["baseline_R"])
    assert "mce_vs_baseline" in rec["summary"]
