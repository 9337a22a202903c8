"""torchrun on the CPU (gloo): 2 processes against 1, for evaluation and training.

Evaluation: 2 ranks give the same per-image correctness bits as 1 process (hence the same counts
and accuracies), for the clean images, a corruption, a white-box and a transfer attack and the
gradient-masking checks; the transfer cache they write holds the same adversarials; a run started by
one process is resumed by two. Training: the equality documented in ``robench.training`` is
checked: a BN-free, dropout-free model trained with ``standard`` on 2 ranks (global batch 32, 16
per rank) matches the 1-process run up to float summation order; a 2-rank run stopped after an
epoch and resumed equals the uninterrupted 2-rank run bit for bit; rank 0 writes the checkpoint.

This file is also the training worker: ``torchrun ... tests/test_distributed.py WORKDIR``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from robench import _distributed as distributed
from robench import evaluate
from robench.data import SubsetDataset, load_dataset
from robench.defenses import build_defense
from robench.evaluation.loop import _Batches
from robench.models import create_model
from robench.models.checkpoint import CheckpointMeta, save_checkpoint
from robench.training.loop import TrainConfig, fit

HERE = Path(__file__).resolve()
EVAL = [
    "--n-images",
    "60",
    "--batch-size",
    "16",
    "--baseline",
    "none",
    "--no-plots",
]  # 4 batches: 16 16 16 12
FIT = TrainConfig(epochs=2, batch_size=32, lr=0.002, seed=3)


def _torchrun(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        *args,
    ]
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return res


# --- pure parts: sharding and reassembly -------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "bs", "world"), [(60, 16, 2), (5, 2, 3), (3, 4, 2), (17, 1, 4), (1, 8, 3)]
)
def test_batches_cover_every_image_once_in_single_process_batches(
    n: int, bs: int, world: int
) -> None:
    ds = load_dataset("shapes", "test")
    idx = np.arange(100, 100 + n)
    alone = [list(b[0]) for b in _Batches(ds, idx, bs, "cpu")]
    shards = [_Batches(ds, idx, bs, "cpu", rank, world) for rank in range(world)]
    met = sorted((int(p), r) for r, s in enumerate(shards) for p in s.positions())
    assert [p for p, _ in met] == list(range(n))  # no image dropped or repeated, no padding
    for r, s in enumerate(shards):
        for b, batch in zip(s.ids, s, strict=True):
            assert list(batch[0]) == alone[b] and b % world == r  # the very batch one process makes


def test_assemble_refuses_missing_or_repeated_images() -> None:
    ok = distributed.assemble(
        [(np.array([2, 0]), np.array([True, False])), (np.array([1]), np.array([True]))], 3
    )
    assert ok.tolist() == [False, True, True]
    with pytest.raises(RuntimeError, match="1 images missing"):
        distributed.assemble([(np.array([0, 1]), np.array([1, 1]))], 3)
    with pytest.raises(RuntimeError, match="counted twice"):
        distributed.assemble(
            [(np.array([0, 1]), np.array([1, 1])), (np.array([1, 2]), np.array([1, 1]))], 3
        )


def test_env_world_and_one_process_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.env_world() is None and distributed.world() == distributed.World()
    assert distributed.broadcast({"a": 1}) == {"a": 1} and distributed.all_reduce_sum([1, 2.5]) == [
        1.0,
        2.5,
    ]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.env_world() == distributed.World(1, 2, 1)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="do not describe a process"):
        distributed.env_world()


# --- evaluation: 2 ranks == 1 process ----------------------------------------------------------


def _quick_surrogate() -> nn.Module:
    ds = load_dataset("shapes", "test")
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = create_model("small_cnn", 10, width=4)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        g = torch.Generator().manual_seed(1)
        for _ in range(30):
            x, y = ds.get_batch(torch.randint(0, len(ds), (64,), generator=g))
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _save(model: nn.Module, width: int, path: Path) -> Path:
    mean, std = (
        tuple(model.normalize.mean.flatten().tolist()),
        tuple(model.normalize.std.flatten().tolist()),
    )
    save_checkpoint(
        model,
        path,
        CheckpointMeta(
            arch="small_cnn",
            arch_kwargs={"width": width},
            num_classes=10,
            input_size=32,
            mean=mean,
            std=std,
        ),
    )
    return path


@pytest.fixture(scope="module")
def checkpoints(
    tmp_path_factory: pytest.TempPathFactory, tiny_trained: nn.Module
) -> tuple[Path, Path]:
    """A model well above chance (so perturbations flip images) and a transfer surrogate."""
    d = tmp_path_factory.mktemp("dist-models")
    return _save(tiny_trained, 8, d / "model.pt"), _save(_quick_surrogate(), 4, d / "surrogate.pt")


def _bits(rec: dict) -> dict[str, list[str]]:
    out = {"clean": [rec["clean"]["correct"]]}
    for name, e in rec["perturbations"].items():
        out[name] = [s["correct"] for s in e["severities"]]
    return out


def _one_process(ckpt: Path, sur: Path, names: list[str], out: Path) -> dict:
    return evaluate(
        str(ckpt),
        perturbations=names,
        n_images=60,
        batch_size=16,
        baseline="none",
        surrogate=str(sur),
        out=out,
        plots=False,
    ).record.to_dict()


def test_two_ranks_score_every_image_exactly_like_one_process(
    checkpoints: tuple[Path, Path], tmp_path: Path
) -> None:
    ckpt, sur = checkpoints
    names = ["gaussian_noise", "pgd", "mi_fgsm_0.04"]
    transfer = Path(os.environ["ROBENCH_CACHE"]) / "transfer"
    before = set(transfer.glob("*.pt"))
    one = _one_process(ckpt, sur, names, tmp_path / "one")
    (cache,) = set(transfer.glob("*.pt")) - before  # the adversarials one process crafted
    adv_one = torch.load(cache, weights_only=True)["adv"]
    cache.unlink()  # the 2 ranks craft them again, each its own batches; rank 0 writes the cache
    res = _torchrun(
        [
            "-m",
            "robench",
            "evaluate",
            str(ckpt),
            *sum((["-p", n] for n in names), []),
            *EVAL,
            "--surrogate",
            str(sur),
            "--out",
            str(tmp_path / "two"),
        ],
        tmp_path,
    )
    two = json.loads((tmp_path / "two" / "model__shapes__s0__n60.json").read_text())
    assert _bits(two) == _bits(one) and two["clean"]["n"] == 60
    accs = {k: [s["accuracy"] for s in e["severities"]] for k, e in one["perturbations"].items()}
    assert accs == {
        k: [s["accuracy"] for s in e["severities"]] for k, e in two["perturbations"].items()
    }
    assert (
        len({a for v in accs.values() for a in v} | {one["clean"]["accuracy"]}) > 2
    )  # the test can tell runs apart
    assert two["gradient_masking"] == one["gradient_masking"]
    assert torch.equal(torch.load(cache, weights_only=True)["adv"], adv_one)
    assert res.stdout.count("R = A_perturbed / A_clean") == 1  # rank 0 alone reports
    assert not list((tmp_path / "two").glob(".*.tmp"))  # no torn temporary files


def test_two_ranks_resume_a_run_one_process_started(
    checkpoints: tuple[Path, Path], tmp_path: Path
) -> None:
    ckpt, sur = checkpoints
    first = _one_process(ckpt, sur, ["gaussian_noise"], tmp_path / "run")
    ref = _one_process(ckpt, sur, ["gaussian_noise", "brightness"], tmp_path / "ref")
    _torchrun(
        [
            "-m",
            "robench",
            "evaluate",
            str(ckpt),
            "-p",
            "gaussian_noise",
            "-p",
            "brightness",
            *EVAL,
            "--out",
            str(tmp_path / "run"),
        ],
        tmp_path,
    )
    rec = json.loads((tmp_path / "run" / "model__shapes__s0__n60.json").read_text())
    assert (
        rec["perturbations"]["gaussian_noise"] == first["perturbations"]["gaussian_noise"]
    )  # kept, timing included
    assert _bits(rec) == _bits(ref)


# --- training: data parallel (averaged gradients) ------------------------------------------------


def _plain_net() -> nn.Module:
    """No BatchNorm, no dropout: the per-rank gradient average is the full-batch gradient."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(4),
            nn.Flatten(),
            nn.Linear(512, 10),
        )


class _Stop(Exception):
    """The simulated crash."""


@dataclass(frozen=True)
class _StopAtEpoch:
    """``standard``, but raising when epoch ``stop`` starts (both ranks crash at the same step)."""

    stop: int

    def step(self, model, x, y, ctx):  # type: ignore[no-untyped-def]
        if ctx.epoch == self.stop:
            raise _Stop
        return build_defense("standard").step(model, x, y, ctx)


def _fit(out: Path, defense: object) -> dict[str, torch.Tensor]:
    model = _plain_net()
    ds = SubsetDataset(load_dataset("shapes", "train"), 256)
    fit(model, defense, ds, FIT, out=out, progress=False, fingerprint={"test": "data-parallel"})
    return {k: v.clone() for k, v in model.state_dict().items()}


def _worker(work: Path) -> None:
    """What each rank runs: a 2-epoch fit, a fit stopped after epoch 1 then resumed, a train()."""
    from robench.training.job import train

    w = distributed.setup("cpu")
    full = _fit(work / "full.pt", build_defense("standard"))
    try:
        _fit(work / "resumed.pt", _StopAtEpoch(1))
    except _Stop:
        pass
    stopped_partial = (work / "resumed.pt.partial").exists()
    resumed = _fit(work / "resumed.pt", build_defense("standard"))
    torch.save(
        {"full": full, "resumed": resumed, "partial_after_stop": stopped_partial},
        work / f"rank{w.rank}.pt",
    )
    train(
        "standard",
        epochs=1,
        train_images=128,
        batch_size=32,
        arch_kwargs={"width": 4},
        out=work / "cli.pt",
    )
    distributed.shutdown()


def test_data_parallel_training_matches_one_process_and_resumes_exactly(tmp_path: Path) -> None:
    load_dataset("shapes", "train")  # generated here once, not by both ranks at the same time
    _torchrun([str(HERE), str(tmp_path)], tmp_path)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["partial_after_stop"] and r1["partial_after_stop"]
    one = _fit(tmp_path / "one.pt", build_defense("standard"))
    start = _plain_net().state_dict()
    for k in one:
        assert torch.equal(
            r0["full"][k], r1["full"][k]
        )  # averaged gradients keep the ranks identical
        assert torch.equal(
            r0["resumed"][k], r0["full"][k]
        )  # stop + resume == uninterrupted, bit for bit
        moved = float((one[k] - start[k]).abs().max())
        diff = float((r0["full"][k] - one[k]).abs().max())
        assert moved > 1e-3 and diff < 1e-5, (
            k,
            moved,
            diff,
        )  # summation order only (measured: <= 1e-7)
    assert (tmp_path / "cli.pt").exists() and (tmp_path / "cli.json").exists()
    assert not (tmp_path / "cli.pt.partial").exists()
    assert not list(tmp_path.glob(".*.tmp"))


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
