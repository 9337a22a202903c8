"""The main job end to end on tiny runs: loading, counting, resuming, markers, files."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
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
from robench.evaluation.record import MaskingCheck, Record, read_record
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


def _save_small(m: torch.nn.Module, path: Path) -> str:
    """``m`` (a width-4 small_cnn) as a robench checkpoint at ``path``; returns the path."""
    meta = CheckpointMeta(
        arch="small_cnn",
        arch_kwargs={"width": 4},
        num_classes=10,
        input_size=32,
        mean=tuple(m.normalize.mean.flatten().tolist()),
        std=tuple(m.normalize.std.flatten().tolist()),
    )
    save_checkpoint(m, path, meta)
    return str(path)


def test_torchscript_and_state_dict_models_score_end_to_end(tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = PlainNet().eval()
    ts = tmp_path / "plain.ts.pt"
    torch.jit.script(plain).save(str(ts))
    rep = evaluate(
        str(ts), perturbations=FAST, n_images=60, out=tmp_path / "r", baseline="none", plots=False
    )
    assert rep.record.model.kind == "torchscript"
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
    assert rep2.record.model.kind == "state_dict"
    assert rep2.clean_accuracy == pytest.approx(_independent_accuracy(sd_model, 60))


def test_robench_checkpoint_clean_accuracy_equals_independent_count(tmp_path: Path) -> None:
    m = _small(2)
    path = _save_small(m, tmp_path / "m.pt")
    rep = evaluate(
        path, perturbations=FAST, n_images=80, out=tmp_path / "r", baseline="none", plots=False
    )
    assert rep.clean_accuracy == pytest.approx(_independent_accuracy(m, 80))
    per = rep.record.perturbations["gaussian_noise"]
    assert [s.severity for s in per.severities] == [1, 2, 3, 4, 5]
    assert per.scores is not None
    assert per.scores.R == pytest.approx(
        np.mean([s.n_correct / s.n for s in per.severities]) / rep.clean_accuracy
    )


def test_csv_header_and_long_table_roundtrip(tmp_path: Path, tiny_trained: torch.nn.Module) -> None:
    rep = evaluate(
        tiny_trained,
        model_id="tiny",
        perturbations=FAST,
        n_images=40,
        out=tmp_path,
        baseline="none",
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
    # the files written are what the report gives, and the report's numbers are the record's counts
    assert Path(rep.paths["csv"]).read_text() == rep.to_csv()
    frame = rep.to_frame()
    long = pd.read_csv(rep.paths["long_csv"], keep_default_na=False, na_values={"R": [""]})
    pd.testing.assert_frame_equal(long, frame, check_dtype=False)
    assert len(long) == 1 + 5 * len(FAST)
    rec = rep.record
    assert rec.clean is not None
    expected = [(0, rec.clean.n, rec.clean.n_correct)] + [
        (s.severity, s.n, s.n_correct) for name in FAST for s in rec.perturbations[name].severities
    ]
    assert list(zip(long["severity"], long["n"], long["n_correct"], strict=True)) == expected
    np.testing.assert_allclose(long["accuracy"], long["n_correct"] / long["n"])
    clean = rec.clean.n_correct / rec.clean.n
    assert clean > 0 and long["R"][0] == 1.0
    np.testing.assert_allclose(long["R"][1:], long["accuracy"][1:] / clean)
    wide = pd.read_csv(rep.paths["csv"], dtype=str, keep_default_na=False).iloc[0]
    for name in FAST:
        s = rec.perturbations[name].scores
        assert s is not None and s.R is not None
        assert wide[name] == f"{s.R:.2f}"  # no baseline: no marker
    assert (
        wide["shot_noise"] == "" and wide["Clean"] == f"{clean:.3f}"
    )  # clean is marked to 0.1 point
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
    assert both.record.perturbations["contrast"] == first.record.perturbations["contrast"]
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


def test_a_rerun_that_computes_nothing_leaves_both_records_byte_for_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = _save_small(_small(0), tmp_path / "base.pt")
    out = tmp_path / "r"

    def run(names: list[str]) -> dict[str, bytes]:
        other = _small(5)
        kw = {"n_images": 40, "out": out, "baseline": base, "plots": False}
        evaluate(other, model_id="other", perturbations=names, **kw)
        return {p.name: p.read_bytes() for p in sorted(out.glob("*.json"))}

    first = run(["contrast"])
    assert len(first) == 2  # the model's record and the baseline's, both computed here
    # a later clock: a rewrite would show in `updated` even within the same second
    from robench.evaluation import record as record_module

    monkeypatch.setattr(record_module, "_now", lambda: "2099-01-01T00:00:00Z")
    assert run(["contrast"]) == first
    more = run(["contrast", "gaussian_noise"])  # new work: both files are written again
    for name, data in more.items():
        assert data != first[name]
        assert json.loads(data)["updated"] == "2099-01-01T00:00:00Z"


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
    rec, base_rec = other.record, base.record
    assert rec.baseline is not None and rec.baseline.id == "base"
    for name in FAST:
        s = rec.perturbations[name].scores
        assert s is not None
        r, base_r = _r_by_hand(rec, name), _r_by_hand(base_rec, name)
        assert s.R == pytest.approx(r) and s.baseline_R == pytest.approx(base_r)
        assert s.marker == _marker_by_hand(r, base_r)
        assert s.delta_R == pytest.approx(r - base_r)  # dR from the counts, by hand
        assert s.p_value == pytest.approx(_paired_test_of(rec, base_rec, name))
        assert s.significant == (s.p_value < 0.05)
    assert rec.summary is not None and rec.summary.vs_baseline is not None
    assert rec.summary.mce_vs_alexnet is None  # shapes is not ImageNet
    assert set(rec.summary.mean_R) == {"corruption"}
    assert rec.summary.mean_R["corruption"] == pytest.approx(
        np.mean([_r_by_hand(rec, n) for n in FAST])
    )


def _r_by_hand(rec: Record, name: str) -> float:
    """R from the raw counts: mean accuracy over the severities / clean accuracy."""
    assert rec.clean is not None
    sevs = rec.perturbations[name].severities
    return sum(s.n_correct / s.n for s in sevs) / len(sevs) / (rec.clean.n_correct / rec.clean.n)


def _marker_by_hand(r: float, base_r: float) -> str:
    """The paper's marker: compare the numbers as printed with 2 decimals."""
    a, b = float(f"{r:.2f}"), float(f"{base_r:.2f}")
    return "+" if a > b else "-" if a < b else ""


def _paired_test_of(rec: Record, base: Record, name: str) -> float:
    """The p-value scoring must store: the paired bootstrap of dR on these images and inputs.

    The bootstrap itself is tested against hand-computed cases in tests/test_scores.py; this checks
    that scoring feeds it the right bits (clean and per-severity, model and baseline) and seed.
    """
    from robench._seeding import derive_seed
    from robench.evaluation.scoring import RESAMPLES
    from robench.scores import paired_r_bootstrap

    assert rec.clean is not None and base.clean is not None
    mine = np.stack([s.bits() for s in rec.perturbations[name].severities])
    theirs = np.stack([s.bits() for s in base.perturbations[name].severities])
    seed = derive_seed(rec.config.seed, "significance", name)
    test = paired_r_bootstrap(
        rec.clean.bits(), mine, base.clean.bits(), theirs, resamples=RESAMPLES, seed=seed
    )
    return test.p_value


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
names = ["gaussian_noise", "contrast", "impulse_noise", "pixelate", "glass_blur", "zoom_blur",
         "motion_blur"]
evaluate(m, model_id="tiny", perturbations=names, n_images=160, out=sys.argv[1], baseline="none",
         plots=False, batch_size=40)
"""


def _strip_times(rec: dict) -> dict:  # type: ignore[type-arg]
    rec = json.loads(json.dumps(rec))
    for k in ("created", "updated"):
        rec.pop(k)
    rec["environment"].pop("peak_rss_mib")  # a measurement, like the seconds
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

    committed = (
        Path(__file__).parents[1] / "leaderboard" / "shapes" / "standard__shapes__s0__n500.json"
    )
    rec = replace(
        read_record(committed),
        perturbations={},
        gradient_masking=(
            MaskingCheck(
                name="large_eps_reaches_zero", passed=False, detail="PGD accuracy 0.6 at eps 0.5"
            ),
            MaskingCheck(name="accuracy_falls_with_eps", passed=True, detail="ok"),
        ),
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
    assert rep.record.model.kind == "export"
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
    assert rep2.record.model.kind == "pickle" and rep2.clean_accuracy == rep.clean_accuracy


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
    # the id `robench evaluate zoo:standard` gives: one shared run file
    assert rec.baseline is not None and rec.baseline.id == "standard"
    base = read_record(tmp_path / "standard__shapes__s0__n24.json")
    assert base.model.sha256 == rec.baseline.sha256 and base.dataset == rec.dataset
    s = rec.perturbations["contrast"].scores
    assert s is not None
    base_r = _r_by_hand(base, "contrast")
    assert s.baseline_R == pytest.approx(base_r)
    assert s.marker == _marker_by_hand(_r_by_hand(rec, "contrast"), base_r)
    assert s.p_value == pytest.approx(_paired_test_of(rec, base, "contrast"))
    assert rec.clean is not None and rec.clean.comparison is not None
    assert rec.clean.comparison.baseline_accuracy == pytest.approx(
        base.clean.n_correct / base.clean.n  # type: ignore[union-attr]
    )
    assert rec.summary is not None and rec.summary.vs_baseline is not None
