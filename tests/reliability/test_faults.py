"""Faults: kills at random points, torn files, concurrent writers, full disks, read-only folders.

Every scenario ends by comparing with an uninterrupted run: nothing may be lost or different.
Kill points come from a seeded RNG (a progress milestone plus a random delay), so a CI run is
repeatable in what it tries, while the exact instruction a signal lands on still varies.
"""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
from pathlib import Path

import pytest
import torch
from _relutil import (
    EVAL_PERTURBATIONS,
    RUN_JSON,
    SIGNALS,
    TRAIN_ARGS,
    CaseLedger,
    damage,
    done_count,
    env,
    eval_cmd,
    kill_at,
    partial_epoch,
    robench_cmd,
    run,
    strip_times,
    timeline,
    tmp_files,
)
from click.testing import CliRunner

from robench import evaluate
from robench.cli import main
from robench.evaluation.record import ResultError, read_record

SEED = 20240611
pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals and file locks")


def _differences(a: Path, b: Path) -> str:
    """What differs between two runs' JSON and CSV outputs (not timestamps); ``""`` if nothing."""
    ra, rb = (
        strip_times(json.loads((a / RUN_JSON).read_text())),
        strip_times(json.loads((b / RUN_JSON).read_text())),
    )
    diff = [k for k in ra.keys() | rb.keys() if ra.get(k) != rb.get(k)]
    for c in (RUN_JSON.replace(".json", ".csv"), RUN_JSON.replace(".json", "-long.csv")):
        if (a / c).read_text() != (b / c).read_text():
            diff.append(c)
    return ", ".join(
        f"{k}: {str(ra.get(k))[:150]} != {str(rb.get(k))[:150]}" if k in ra else k for k in diff
    )


def _signal_schedule(rng: random.Random, n: int) -> list[str]:
    names = ["SIGKILL", "SIGINT", "SIGTERM"]
    rng.shuffle(names)
    return (names * n)[:n]


def _pause(times: list[float], done: int, rng: random.Random) -> float:
    """A random moment inside the next step.

    The uninterrupted run took ``times[done] - times[done - 1]`` for it.
    """
    step = times[done] - (times[done - 1] if done else 0.0)
    return rng.uniform(0.0, 0.9 * step)


def test_evaluate_killed_repeatedly_at_random_points_resumes_to_the_uninterrupted_result(
    tmp_path: Path, tiny_ckpt: Path, eval_reference: tuple[Path, list[float]], cases: CaseLedger
) -> None:
    ref_dir, times = eval_reference
    rng = random.Random(SEED)
    out = tmp_path / "out"
    cmd, record = eval_cmd(tiny_ckpt, out), out / RUN_JSON
    n = len(EVAL_PERTURBATIONS)
    lost_nothing = 0
    for i, sig in enumerate(_signal_schedule(rng, 4)):
        target = rng.randint(
            0, n - 1
        )  # wait for this many saved perturbations, then a moment into the next
        extra = _pause(times, target, rng)
        before, tmp_before = done_count(record), tmp_files(out)
        rc, err, at = kill_at(cmd, lambda: done_count(record), target, extra, SIGNALS[sig])
        label = f"evaluate {sig}: kill {i + 1} after {at} perturbations"
        if rc == 0:
            cases.check("fault", f"{label} (finished before the signal)", done_count(record) == n)
            continue
        if record.exists():
            try:
                read_record(record)
                readable = True
            except ResultError:
                readable = False
            cases.check("fault", f"{label}: record on disk is whole", readable)
        after = done_count(record)
        cases.check(
            "fault", f"{label}: finished work kept", after >= before, f"{before} -> {after}"
        )
        lost_nothing += 1
        if (
            sig != "SIGKILL" and at > before
        ):  # this process was inside robench's loop: a clean exit is owed
            cases.check(
                "fault",
                f"{label}: one-line message, no traceback",
                "Traceback" not in err and "run the same command again to resume" in err,
                err[-400:],
            )
            cases.check("fault", f"{label}: no temp file left", tmp_files(out) <= tmp_before)
    res = run(cmd)
    assert res.returncode == 0, res.stderr[-2000:]
    diff = _differences(ref_dir, out)
    cases.check("fault", "evaluate: final rerun equals the uninterrupted run", not diff, diff)
    assert lost_nothing >= 2, (
        "too few kills landed before the run finished: the scenario did not test much"
    )


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _same_training(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    ma = torch.load(a, map_location="cpu", weights_only=True)["meta"]
    mb = torch.load(b, map_location="cpu", weights_only=True)["meta"]
    hist = [{k: v for k, v in h.items() if "time" not in k} for h in ma["extra"]["history"]]
    hist_b = [{k: v for k, v in h.items() if "time" not in k} for h in mb["extra"]["history"]]
    return (
        wa.keys() == wb.keys()
        and all(torch.equal(wa[k], wb[k]) for k in wa)
        and hist == hist_b
        and ma["extra"]["clean_accuracy"] == mb["extra"]["clean_accuracy"]
    )


def test_train_killed_repeatedly_at_random_points_resumes_to_the_uninterrupted_weights(
    tmp_path: Path, cases: CaseLedger
) -> None:
    whole, killed = tmp_path / "whole.pt", tmp_path / "killed.pt"
    rc, err, times = timeline(
        robench_cmd(*TRAIN_ARGS, "--out", str(whole)),
        lambda: partial_epoch(whole.with_name(whole.name + ".partial")),
    )
    assert rc == 0 and len(times) >= 3, err[-2000:]
    rng = random.Random(SEED + 1)
    cmd, partial = (
        robench_cmd(*TRAIN_ARGS, "--out", str(killed)),
        killed.with_name(killed.name + ".partial"),
    )

    def progress() -> (
        int
    ):  # epochs kept on disk: the resumable state, or all of them once the checkpoint is written
        return partial_epoch(partial) if partial.exists() or not killed.exists() else 3

    landed = 0
    for i, sig in enumerate(_signal_schedule(rng, 3)):
        target = rng.randint(0, 2)  # wait for this many saved epochs, then a moment into the next
        extra = _pause(times, min(target, len(times) - 2), rng)
        before, tmp_before = progress(), tmp_files(tmp_path)
        rc, err, at = kill_at(cmd, progress, target, extra, SIGNALS[sig])
        label = f"train {sig}: kill {i + 1} after epoch {at}"
        if rc == 0:
            cases.check("fault", f"{label} (finished before the signal)", killed.exists())
            break
        landed += 1
        after = progress()
        if (
            after == 3
        ):  # the signal came after the checkpoint was written: done, nothing left to resume
            cases.check(
                "fault",
                f"{label} (after the checkpoint was written)",
                _same_training(whole, killed),
            )
            break
        cases.check(
            "fault", f"{label}: finished epochs kept", after >= before, f"{before} -> {after}"
        )
        if sig != "SIGKILL" and at > before:
            cases.check(
                "fault",
                f"{label}: one-line message, no traceback",
                "Traceback" not in err and "resume" in err,
                err[-400:],
            )
            cases.check("fault", f"{label}: no temp file left", tmp_files(tmp_path) <= tmp_before)
    res = run(cmd)
    assert res.returncode == 0, res.stderr[-2000:]
    cases.check(
        "fault",
        "train: final rerun equals the uninterrupted weights",
        _same_training(whole, killed),
    )
    assert landed >= 2, (
        "too few kills landed before the run finished: the scenario did not test much"
    )


def _flip_count(text: str) -> str:
    rec = json.loads(text)
    s = rec["perturbations"]["contrast"]["severities"][2]
    s["n_correct"] = s["n_correct"] + 1 if s["n_correct"] < s["n"] else s["n_correct"] - 1
    s["accuracy"] = (
        s["n_correct"] / s["n"]
    )  # numbers that agree with each other, not with the per-image bits
    return json.dumps(rec)


def _drop_severity(text: str) -> str:
    rec = json.loads(text)
    rec["perturbations"]["gaussian_noise"]["severities"].pop()
    return json.dumps(rec)


def _done_without_data(text: str) -> str:
    rec = json.loads(text)
    rec["perturbations"]["contrast"]["severities"] = []
    return json.dumps(rec)


def test_torn_or_damaged_result_record_is_detected_and_recomputed(
    tmp_path: Path, tiny_ckpt: Path, cases: CaseLedger
) -> None:
    kw = {
        "perturbations": ["contrast", "gaussian_noise"],
        "n_images": 40,
        "batch_size": 20,
        "baseline": "none",
        "plots": False,
        "model_id": "torn",
        "progress": False,
    }
    ref = evaluate(str(tiny_ckpt), out=tmp_path / "ref", **kw)  # type: ignore[arg-type]
    name = Path(ref.paths["json"]).name
    good = Path(ref.paths["json"]).read_bytes()
    rng = random.Random(SEED + 2)
    semantic = {
        "count changed": _flip_count,
        "severity missing": _drop_severity,
        "done without data": _done_without_data,
    }
    modes = ["empty", "truncate", "truncate", "truncate", "zero_tail", "zero_tail", *semantic]
    for i, how in enumerate(modes):
        out = tmp_path / f"d{i}"
        out.mkdir()
        bad = semantic[how](good.decode()).encode() if how in semantic else damage(good, how, rng)
        (out / name).write_bytes(bad)
        rep = evaluate(str(tiny_ckpt), out=out, **kw)  # type: ignore[arg-type]
        ok = strip_times(rep.record) == strip_times(ref.record)
        cases.check("fault", f"torn result file: {how} ({len(bad)} of {len(good)} bytes)", ok)


def test_torn_transfer_cache_is_detected_and_recrafted(
    tmp_path: Path, tiny_ckpt: Path, cases: CaseLedger
) -> None:
    cache = Path(os.environ["ROBENCH_CACHE"]) / "transfer"
    kw = {
        "perturbations": ["mi_fgsm_0.04"],
        "n_images": 8,
        "batch_size": 8,
        "baseline": "none",
        "plots": False,
        "model_id": "transfer",
        "progress": False,
    }
    before = set(cache.glob("*.pt")) if cache.exists() else set()
    ref = evaluate(str(tiny_ckpt), out=tmp_path / "ref", **kw)  # type: ignore[arg-type]
    made = sorted(set(cache.glob("*.pt")) - before)
    if not made:
        pytest.skip("no transfer surrogate in this zoo, or the cache was already filled")
    good = made[0].read_bytes()
    rng = random.Random(SEED + 4)
    for i, how in enumerate(["empty", "truncate", "zero_tail"]):
        made[0].write_bytes(damage(good, how, rng))
        rep = evaluate(str(tiny_ckpt), out=tmp_path / f"d{i}", **kw)  # type: ignore[arg-type]
        cases.check(
            "fault",
            f"torn transfer cache: {how}",
            strip_times(rep.record) == strip_times(ref.record),
        )


def test_torn_training_state_is_detected_and_training_starts_over(
    tmp_path: Path, cases: CaseLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    from robench.training import loop as training
    from robench.training.job import train

    states: list[bytes] = []
    real = training.atomic_torch_save

    def capture(obj: object, path: Path) -> Path:
        written = real(obj, path)
        states.append(Path(path).read_bytes())
        return written

    kw = {
        "epochs": 2,
        "train_images": 256,
        "batch_size": 64,
        "arch_kwargs": {"width": 8},
        "seed": 3,
    }
    with monkeypatch.context() as m:
        m.setattr(training, "atomic_torch_save", capture)
        ref = train("standard", out=tmp_path / "ref.pt", **kw)  # type: ignore[arg-type]
    rng = random.Random(SEED + 3)
    for i, how in enumerate(["truncate", "zero_tail", "empty"]):
        out = tmp_path / f"d{i}.pt"
        out.with_name(out.name + ".partial").write_bytes(damage(states[0], how, rng))
        train("standard", out=out, **kw)  # type: ignore[arg-type]
        cases.check("fault", f"torn training state: {how}", _same_training(ref, out))


def test_two_evaluations_into_one_folder_at_once_lose_nothing(
    tmp_path: Path, tiny_ckpt: Path, eval_reference: tuple[Path, list[float]], cases: CaseLedger
) -> None:
    ref_dir = eval_reference[0]
    out = tmp_path / "shared"
    half = len(EVAL_PERTURBATIONS) // 2
    cmds = [
        eval_cmd(tiny_ckpt, out, EVAL_PERTURBATIONS[: half + 1]),
        eval_cmd(tiny_ckpt, out, EVAL_PERTURBATIONS[half:]),
    ]
    procs = [
        subprocess.Popen(c, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for c in cmds
    ]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    for i, p in enumerate(procs):
        cases.check(
            "fault",
            f"concurrent evaluate {i + 1}: exits cleanly",
            p.returncode == 0,
            errs[i][-600:],
        )
    diff = _differences(ref_dir, out)
    cases.check(
        "fault", "concurrent evaluate: shared record equals one uninterrupted run", not diff, diff
    )


_CLI_EVAL = [
    "-p",
    "contrast",
    "-p",
    "gaussian_noise",
    "--n-images",
    "40",
    "--batch-size",
    "20",
    "--baseline",
    "none",
    "--no-plots",
    "--model-id",
    "disk",
]


def _failing(call: str, at: int, code: int):  # type: ignore[no-untyped-def]
    """A stand-in for ``os.fsync`` / ``tempfile.mkstemp`` failing with ``code`` at call ``at``."""
    import tempfile

    real = {"fsync": os.fsync, "mkstemp": tempfile.mkstemp}[call]
    count = [0]

    def fn(*args, **kwargs):  # type: ignore[no-untyped-def]
        count[0] += 1
        if count[0] == at:
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    return fn


def test_full_disk_or_read_only_folder_is_a_clear_error_and_keeps_what_was_done(
    tmp_path: Path, tiny_ckpt: Path, cases: CaseLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    runner = CliRunner()
    ref = tmp_path / "ref"
    assert (
        runner.invoke(main, ["evaluate", str(tiny_ckpt), *_CLI_EVAL, "--out", str(ref)]).exit_code
        == 0
    )
    ref_rec = json.loads((ref / "disk__shapes__s0__n40.json").read_text())
    faults = [
        ("fsync", 1, errno.ENOSPC),
        ("fsync", 2, errno.ENOSPC),
        ("fsync", 4, errno.ENOSPC),
        ("fsync", 5, errno.EDQUOT),
        ("mkstemp", 1, errno.EROFS),
        ("mkstemp", 3, errno.EROFS),
        ("mkstemp", 2, errno.EACCES),
    ]
    for i, (call, at, code) in enumerate(faults):
        out = tmp_path / f"f{i}"
        with monkeypatch.context() as m:
            m.setattr(os if call == "fsync" else tempfile, call, _failing(call, at, code))
            res = runner.invoke(main, ["evaluate", str(tiny_ckpt), *_CLI_EVAL, "--out", str(out)])
        label = f"{errno.errorcode[code]} at {call} #{at}"
        clear = (
            res.exit_code == 1
            and isinstance(res.exception, SystemExit)
            and "Traceback" not in res.output
            and os.strerror(code) in res.output
            and "cannot write" in res.output
        )
        cases.check("fault", f"{label}: one clear error", clear, res.output[-300:])
        path = out / "disk__shapes__s0__n40.json"
        kept = True
        if path.exists():  # whole (read_record checks it) and holding the reference's raw counts
            rec = read_record(path).to_dict()
            kept = all(
                e["severities"] == ref_rec["perturbations"][k]["severities"]
                for k, e in rec["perturbations"].items()
            )
            kept = kept and rec["clean"]["correct"] == ref_rec["clean"]["correct"]
        cases.check(
            "fault", f"{label}: what was written is whole and kept", kept and not tmp_files(out)
        )
        res = runner.invoke(main, ["evaluate", str(tiny_ckpt), *_CLI_EVAL, "--out", str(out)])
        again = res.exit_code == 0 and strip_times(json.loads(path.read_text())) == strip_times(
            ref_rec
        )
        cases.check("fault", f"{label}: the rerun completes to the same result", again)


def test_train_on_a_full_disk_keeps_its_last_epoch_and_resumes(
    tmp_path: Path, cases: CaseLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = [
        "train",
        "--train-images",
        "256",
        "--batch-size",
        "64",
        "-a",
        "width=8",
        "--epochs",
        "2",
        "--seed",
        "2",
    ]
    runner = CliRunner()
    assert runner.invoke(main, [*args, "--out", str(tmp_path / "ref.pt")]).exit_code == 0
    out = tmp_path / "full.pt"
    with monkeypatch.context() as m:
        m.setattr(
            os, "fsync", _failing("fsync", 2, errno.ENOSPC)
        )  # epoch 2's state cannot be written
        res = runner.invoke(main, [*args, "--out", str(out)])
    clear = (
        res.exit_code == 1
        and "No space left on device" in res.output
        and "Traceback" not in res.output
    )
    cases.check("fault", "train ENOSPC: one clear error", clear, res.output[-300:])
    cases.check(
        "fault",
        "train ENOSPC: epoch 1 kept",
        partial_epoch(out.with_name(out.name + ".partial")) == 1,
    )
    assert runner.invoke(main, [*args, "--out", str(out)]).exit_code == 0
    cases.check(
        "fault",
        "train ENOSPC: resumed run equals the uninterrupted one",
        _same_training(tmp_path / "ref.pt", out),
    )


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders anyway"
)
def test_really_read_only_output_folder(tmp_path: Path, tiny_ckpt: Path, cases: CaseLedger) -> None:
    out = tmp_path / "ro"
    runner = CliRunner()
    assert (
        runner.invoke(
            main, ["evaluate", str(tiny_ckpt), "-p", "contrast", *_CLI_EVAL[4:], "--out", str(out)]
        ).exit_code
        == 0
    )
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    out.chmod(0o555)
    try:
        res = runner.invoke(main, ["evaluate", str(tiny_ckpt), *_CLI_EVAL, "--out", str(out)])
    finally:
        out.chmod(0o755)
    clear = (
        res.exit_code == 1 and "Permission denied" in res.output and "Traceback" not in res.output
    )
    cases.check("fault", "read-only folder (chmod): one clear error", clear, res.output[-300:])
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    cases.check("fault", "read-only folder (chmod): earlier results untouched", after == before)
