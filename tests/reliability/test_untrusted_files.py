"""Untrusted files: checkpoints, TorchScript and export programs, results and model cards.

Each payload is first shown to be live (the plain torch/pickle loader runs it), then robench must
refuse the file without running it, and nothing may be written outside the output folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from _relutil import CaseLedger
from click.testing import CliRunner

from robench.cli import main
from robench.models.checkpoint import CheckpointError
from robench.models.loading import check_graph, load_model


class Touch:
    """Unpickling this creates ``path`` (a stand-in for any code a pickle can run)."""

    def __init__(self, path: Path, how: str = "open") -> None:
        self.path, self.how = str(path), how

    def __reduce__(self) -> tuple[Any, ...]:
        if self.how == "system":
            return (os.system, (f"touch '{self.path}'",))
        return (open, (self.path, "w"))


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _pickle_files(folder: Path, marker: Path) -> dict[str, Path]:
    """Malicious checkpoint files, one per place a payload can hide."""
    from robench.models import create_model

    sd = create_model("small_cnn", 10, width=4).state_dict()
    variants: dict[str, Any] = {
        "whole object": Touch(marker),
        "inside state_dict": {**sd, "features.0.weight": Touch(marker)},
        "inside meta": {
            "format": "robench-checkpoint",
            "format_version": 2,
            "meta": {"arch": Touch(marker, "system")},
            "state_dict": sd,
        },
        "in a list": [sd, Touch(marker)],
    }
    out = {}
    for name, obj in variants.items():
        path = folder / f"{name.replace(' ', '_')}.pt"
        torch.save(obj, path)
        out[name] = path
    legacy = folder / "legacy.pt"
    torch.save({"state_dict": Touch(marker)}, legacy, _use_new_zipfile_serialization=False)
    out["legacy torch format"] = legacy
    for proto in (2, 4):
        raw = folder / f"raw{proto}.pt"
        raw.write_bytes(pickle.dumps({"state_dict": Touch(marker, "system")}, protocol=proto))
        out[f"raw pickle protocol {proto}"] = raw
    text = folder / "ascii.pt"
    text.write_bytes(pickle.dumps(Touch(marker), protocol=0))
    out["ascii pickle"] = text
    return out


def test_malicious_pickles_are_refused_everywhere_robench_reads_a_model(
    tmp_path: Path, cases: CaseLedger
) -> None:
    marker = tmp_path / "pwned"
    files = _pickle_files(tmp_path, marker)
    torch.load(
        files["whole object"], weights_only=False
    )  # the payload is live: plain torch.load runs it
    assert marker.exists()
    marker.unlink()
    r = CliRunner()
    quick = [
        "-p",
        "contrast",
        "--n-images",
        "4",
        "--baseline",
        "none",
        "--no-plots",
        "--out",
        str(tmp_path / "o"),
    ]
    for name, path in files.items():
        entry_points = {
            "evaluate": ["evaluate", str(path), *quick],
            "evaluate --arch": ["evaluate", str(path), "--arch", "small_cnn", *quick],
            "--baseline": ["evaluate", "zoo:standard", *quick, "--baseline", str(path)],
            "--surrogate": [
                "evaluate",
                "zoo:standard",
                "--surrogate",
                str(path),
                "-p",
                "mi_fgsm_0.04",
                "--n-images",
                "4",
                "--baseline",
                "none",
                "--out",
                str(tmp_path / "o"),
            ],
            "train -o init=": [
                "train",
                "--defense",
                "perturbed",
                "-o",
                f"init={path}",
                "--epochs",
                "1",
                "--train-images",
                "64",
                "--batch-size",
                "64",
                "--out",
                str(tmp_path / "t.pt"),
            ],
        }
        for where, args in entry_points.items():
            res = r.invoke(main, args)
            refused = (
                res.exit_code == 1
                and "Traceback" not in res.output
                and isinstance(res.exception, SystemExit)
            )
            cases.check(
                "security",
                f"malicious pickle ({name}) via {where}",
                refused and not marker.exists(),
                res.output[-300:],
                kind="malicious pickle refused",
            )


def test_planted_training_state_and_transfer_cache_run_nothing(
    tmp_path: Path, cases: CaseLedger
) -> None:
    from robench.training.job import train

    marker = tmp_path / "pwned"
    out = tmp_path / "m.pt"
    torch.save({"run_id": Touch(marker), "epoch": 1}, out.with_name(out.name + ".partial"))
    train("standard", epochs=1, train_images=64, batch_size=64, arch_kwargs={"width": 4}, out=out)
    cases.check(
        "security",
        "planted .partial training state: ignored, not run",
        out.exists() and not marker.exists(),
    )
    cache = Path(os.environ["ROBENCH_CACHE"]) / "transfer"
    cache.mkdir(parents=True, exist_ok=True)
    planted = cache / "planted.pt"
    torch.save({"adv": Touch(marker)}, planted)
    try:
        torch.load(planted, weights_only=True)
        ran = False
    except pickle.UnpicklingError:
        ran = marker.exists()
    finally:
        planted.unlink()
    cases.check(
        "security",
        "planted transfer cache: read with weights_only",
        not ran and not marker.exists(),
    )


class FileTouchingModule(torch.nn.Module):
    """A classifier whose TorchScript writes into a file when loaded (__setstate__) and when run."""

    def __init__(self, victim: str) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3, 10))
        self.victim = victim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.from_file(self.victim, True, 4, dtype=torch.uint8)
        t.fill_(88)
        return x.mean((2, 3)) @ self.w + t.sum().float() * 0

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return (self.w, self.victim, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        t = torch.from_file(state[1], True, 4, dtype=torch.uint8)
        t.fill_(89)
        self.w = state[0]
        written = int(t.sum())  # used below, so TorchScript keeps the call
        self.victim = state[1] if written >= 0 else ""
        self.training = state[2]


class FileReadingModule(torch.nn.Module):
    """A classifier that reads a file into its logits (exfiltration through the scores)."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leak = torch.from_file(self.secret, False, 10, dtype=torch.uint8).float()
        return x.mean((2, 3)).sum(1, keepdim=True) * 0 + leak


def test_torchscript_that_touches_files_is_refused_before_it_runs(
    tmp_path: Path, cases: CaseLedger
) -> None:
    import warnings

    victim = tmp_path / "victim.txt"
    victim.write_text("precious data\n")
    warnings.simplefilter("ignore")
    evil = tmp_path / "evil.ts.pt"
    torch.jit.script(FileTouchingModule(str(victim))).save(str(evil))
    reader = tmp_path / "reader.ts.pt"
    torch.jit.script(FileReadingModule(str(victim))).save(str(reader))
    copy = tmp_path / "copy.txt"
    shutil.copy(victim, copy)
    live = torch.jit.load(str(evil))  # control: plain torch.jit.load runs __setstate__ ...
    assert victim.read_text() != "precious data\n", (
        "the TorchScript payload did not run: the fixture proves nothing"
    )
    del live
    shutil.copy(copy, victim)
    for name, path in (
        ("writes a file on load and forward", evil),
        ("reads a file into its logits", reader),
    ):
        res = CliRunner().invoke(
            main,
            [
                "evaluate",
                str(path),
                "-p",
                "contrast",
                "--n-images",
                "4",
                "--baseline",
                "none",
                "--out",
                str(tmp_path / "o"),
            ],
        )
        ok = (
            res.exit_code == 1
            and "refusing" in res.output
            and victim.read_text() == "precious data\n"
        )
        cases.check(
            "security", f"TorchScript that {name}: refused, file untouched", ok, res.output[-300:]
        )


def _evil_pt2(tmp_path: Path, marker: Path) -> Path:
    """A torch.export program whose first weight is a pickle with a payload (``use_pickle``)."""
    from robench.models import create_model

    m = create_model("small_cnn", 10, width=4).eval()
    good = tmp_path / "good.pt2"
    torch.export.save(torch.export.export(m, (torch.rand(2, 3, 32, 32),)), str(good))
    evil = tmp_path / "evil.pt2"
    buf = io.BytesIO()
    torch.save(Touch(marker), buf)
    with zipfile.ZipFile(good) as zin:
        members = {i.filename: zin.read(i.filename) for i in zin.infolist()}
    config = next(n for n in members if n.endswith("weights/model_weights_config.json"))
    cfg = json.loads(members[config])
    for entry in cfg["config"].values():  # every weight becomes a pickle carrying the payload
        entry["use_pickle"] = True
        members[config.replace("model_weights_config.json", entry["path_name"])] = buf.getvalue()
    members[config] = json.dumps(cfg).encode()
    with zipfile.ZipFile(evil, "w") as zout:
        for name, data in members.items():
            zout.writestr(name, data)
    return evil


def test_export_program_with_a_pickle_payload_is_refused(tmp_path: Path, cases: CaseLedger) -> None:
    import warnings

    warnings.simplefilter("ignore")
    marker = tmp_path / "pwned"
    evil = _evil_pt2(tmp_path, marker)
    with contextlib.suppress(
        Exception
    ):  # control: torch's own loader runs the payload (and may fail after)
        torch.export.load(str(evil))
    assert marker.exists(), "the export payload did not run: the fixture proves nothing"
    marker.unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="not a readable"):
        load_model(evil)
    cases.check(
        "security",
        "export program with a pickled payload: refused, nothing run",
        not marker.exists(),
    )


def test_export_graph_calling_a_python_function_is_refused(cases: CaseLedger) -> None:
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    graph.call_function(os.getcwd, ())
    graph.output(graph.call_function(torch.ops.aten.relu.default, (x,)))
    gm = torch.fx.GraphModule(torch.nn.Module(), graph)
    plain = torch.export.export(torch.nn.ReLU(), (torch.rand(2),)).graph_module
    for target, bad in ((gm, True), (plain, False)):
        try:
            check_graph(target, "g")
            refused = False
        except CheckpointError:
            refused = True
        cases.check(
            "security",
            f"graph check: {'python function' if bad else 'plain operator'} call",
            refused == bad,
            kind="export graph allowlist",
        )
