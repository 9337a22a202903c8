"""The trainer end to end: CLI, checkpoint + card, evaluate accepts it, resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from robench.cli import main
from robench.models.checkpoint import load_checkpoint
from robench.training.job import train

TINY = ["--train-images", "512", "--batch-size", "64", "-a", "width=8"]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_cli_mtlat_one_epoch_writes_a_checkpoint_that_evaluate_accepts(tmp_path: Path) -> None:
    ckpt = tmp_path / "mtlat.pt"
    res = CliRunner().invoke(
        main, ["train", "--defense", "mtlat", "--epochs", "1", *TINY, "--out", str(ckpt)]
    )
    assert res.exit_code == 0, res.output
    card = json.loads(ckpt.with_suffix(".json").read_text())
    assert (
        card["defense"] == "mtlat" and card["epochs"] == 1 and card["arch_kwargs"] == {"width": 8}
    )
    assert 0.0 <= card["clean_accuracy"] <= 1.0 and len(card["sha256"]) == 64
    model, meta = load_checkpoint(ckpt)  # weights_only=True inside
    assert meta.defense == "mtlat" and meta.defense_config == {"alpha": 0.4, "eps_max": 0.025}
    assert not ckpt.with_name(ckpt.name + ".partial").exists()  # the resumable state is cleaned up
    out = tmp_path / "eval"
    res = CliRunner().invoke(
        main,
        [
            "evaluate",
            str(ckpt),
            "--n-images",
            "20",
            "-p",
            "gaussian_noise",
            "-p",
            "brightness",
            "--baseline",
            "none",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert list(out.glob("*.json"))


def test_unknown_defense_and_option_are_one_sentence(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        main, ["train", "--defense", "mtlatt", "--out", str(tmp_path / "x.pt")]
    )
    assert res.exit_code != 0 and "mtlat" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(
        main, ["train", "--defense", "mixup", "-o", "beta=2", "--out", str(tmp_path / "x.pt")]
    )
    assert res.exit_code != 0 and "no option 'beta'" in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_same_seed_same_weights_other_seed_other_weights(tmp_path: Path) -> None:
    kw = dict(epochs=1, train_images=256, batch_size=64, arch_kwargs={"width": 8})
    a = train("fgsm", seed=3, out=tmp_path / "a.pt", **kw)
    b = train("fgsm", seed=3, out=tmp_path / "b.pt", **kw)
    c = train("fgsm", seed=4, out=tmp_path / "c.pt", **kw)
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def _partial_epoch(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


# `robench train` in a child process whose defense step does ACTION at step (EPOCH, STEP) of the
# run: "kill" sends itself SIGKILL, "hold" writes READY and waits forever (holding the checkpoint's
# lock), "fail" exits with status 3. The faults land at a chosen point, not after a guessed delay.
_CHILD = """
import os, signal, sys, threading
from pathlib import Path
from robench.cli import main
from robench.defenses import build_defense

defense, epoch, step, action, ready = sys.argv[1:6]
cls = type(build_defense(defense))
original = cls.step

def step_then_act(self, model, x, y, ctx):
    if (ctx.epoch, ctx.step) == (int(epoch), int(step)):
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "fail":
            os._exit(3)
        Path(ready).write_text("holding the lock")
        threading.Event().wait()
    return original(self, model, x, y, ctx)

cls.step = step_then_act
main(["train", "--defense", defense, *sys.argv[6:]], prog_name="robench")
"""
_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _child(
    defense: str, at: tuple[int, int], action: str, args: list[str], ready: Path | None = None
) -> list[str]:
    where = [str(at[0]), str(at[1]), action, str(ready or "")]
    return [sys.executable, "-c", _CHILD, defense, *where, *args]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_kill_9_during_training_then_rerun_gives_the_uninterrupted_weights(tmp_path: Path) -> None:
    args = ["--epochs", "3", "--seed", "1", *TINY]
    whole, killed = tmp_path / "whole.pt", tmp_path / "killed.pt"
    subprocess.run(
        [sys.executable, "-m", "robench", "train", "--defense", "tlat", *args, "--out", str(whole)],
        env=_ENV,
        check=True,
        capture_output=True,
    )
    # SIGKILL in the middle of the second epoch (8 steps each): the first one is on disk
    out = ["--out", str(killed)]
    proc = subprocess.run(_child("tlat", (1, 3), "kill", args + out), env=_ENV, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    partial = killed.with_name(killed.name + ".partial")
    assert not killed.exists() and _partial_epoch(partial) == 1
    # the rerun resumes: a step of the first epoch would end it with status 3
    rerun = subprocess.run(
        _child("tlat", (0, 0), "fail", args + out), env=_ENV, capture_output=True
    )
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    w1, w2 = _weights(whole), _weights(killed)
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    card = json.loads(killed.with_suffix(".json").read_text())
    assert card["epochs"] == 3 and not partial.exists()
    # the card's curve spans the killed run's first epoch and the rerun's two, as the checkpoint's
    _, meta = load_checkpoint(killed)
    curve = [round(h["test_acc"], 4) for h in meta.extra["history"]]
    assert len(card["accuracy_curve"]) == 3 and card["accuracy_curve"] == curve
    assert card["accuracy_curve"][-1] == pytest.approx(card["clean_accuracy"], abs=1e-4)


@pytest.mark.slow
def test_a_second_training_into_the_same_checkpoint_stops_at_once(tmp_path: Path) -> None:
    out, ready = tmp_path / "busy.pt", tmp_path / "ready"
    args = ["--epochs", "2", *TINY, "--out", str(out)]
    cmd = _child("standard", (0, 0), "hold", args, ready)
    log = tmp_path / "first.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, env=_ENV, stdout=subprocess.DEVNULL, stderr=err)
    try:
        while not ready.exists():  # the first training holds the lock from here on, for good
            assert proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.05)
        # the holder never lets go, so a second training that returns at all was refused, not queued
        res = CliRunner().invoke(main, ["train", *args])
        assert res.exit_code != 0 and "already working on training into" in res.output
        assert "Traceback" not in res.output
        assert proc.poll() is None  # the first one goes on
    finally:
        proc.kill()
        proc.wait()
