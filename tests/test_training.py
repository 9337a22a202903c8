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


def test_same_seed_same_weights_other_seed_other_weights(tmp_path: Path) -> None:
    kw = dict(epochs=1, train_images=256, batch_size=64, arch_kwargs={"width": 8})
    a = train("fgsm", seed=3, out=tmp_path / "a.pt", **kw)
    b = train("fgsm", seed=3, out=tmp_path / "b.pt", **kw)
    c = train("fgsm", seed=4, out=tmp_path / "c.pt", **kw)
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def _partial_epoch(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # noqa: BLE001  (absent or being replaced)
        return 0


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_kill_9_during_training_then_rerun_gives_the_uninterrupted_weights(tmp_path: Path) -> None:
    args = ["train", "--defense", "tlat", "--epochs", "4", "--seed", "1", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = tmp_path / "whole.pt"
    subprocess.run(
        [sys.executable, "-m", "robench", *args, "--out", str(whole)],
        env=env,
        check=True,
        capture_output=True,
    )

    killed = tmp_path / "killed.pt"
    cmd = [sys.executable, "-m", "robench", *args, "--out", str(killed)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = killed.with_name(killed.name + ".partial")
    deadline = time.monotonic() + 300
    while _partial_epoch(partial) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before the kill: make the run longer"
    os.kill(proc.pid, signal.SIGKILL)  # mid-epoch 3 (or right after epoch 2's checkpoint)
    proc.wait()
    assert not killed.exists() and _partial_epoch(partial) >= 2
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    w1, w2 = _weights(whole), _weights(killed)
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    card = json.loads(killed.with_suffix(".json").read_text())
    assert card["epochs"] == 4


def test_a_second_training_into_the_same_checkpoint_stops_at_once(tmp_path: Path) -> None:
    out = tmp_path / "busy.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "robench", "train", "--epochs", "20", *TINY, "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        partial = out.with_name(out.name + ".partial")
        deadline = time.monotonic() + 300
        while _partial_epoch(partial) < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, (
            "the first training ended before the second started: make it longer"
        )
        started = time.monotonic()
        res = CliRunner().invoke(main, ["train", "--epochs", "20", *TINY, "--out", str(out)])
        assert res.exit_code != 0 and "already working on training into" in res.output
        assert (
            "Traceback" not in res.output and time.monotonic() - started < 60
        )  # refused, not queued
        assert proc.poll() is None  # the first one goes on
    finally:
        proc.kill()
        proc.wait()
