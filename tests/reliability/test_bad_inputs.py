"""Bad inputs, fuzzed: every one must end in one clear error (or a correct result), never a crash.

Hypothesis runs derandomized with fixed example counts, so CI tries the same cases every time and
its time stays bounded. Each call of robench on a generated input is one counted ``input`` case.
"""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _relutil import CaseLedger, damage
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robench import evaluate
from robench import perturbations as P
from robench.cli import main
from robench.evaluation.record import Record, ResultError, read_record
from robench.evaluation.scoring import score_record
from robench.models.checkpoint import CheckpointError
from robench.models.loading import load_model

CORRUPTIONS = P.names(kind="corruption")
ATTACKS = P.names(kind="attack")


def fuzz(n: int) -> Any:
    """Fixed, derandomized Hypothesis settings (no example database: CI tries the same cases)."""
    return settings(
        max_examples=n,
        derandomize=True,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def _raw(t: torch.Tensor) -> bytes:
    """Exact bytes of a tensor (NaN-safe equality)."""
    return t.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


def _one_sentence(exc: BaseException) -> bool:
    text = str(exc)
    return 0 < len(text) < 400 and "\n" not in text and "Traceback" not in text


@st.composite
def bad_batches(draw: Any, square_only: bool = True) -> tuple[str, torch.Tensor]:
    """A tensor that is not a valid N x C x H x W float batch in [0, 1] (and what is wrong)."""
    kinds = ["rank", "dtype", "channels", "range", "nan", "inf", "meta", "zero_side"] + (
        ["not_square"] if square_only else []
    )
    kind = draw(st.sampled_from(kinds))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    n, side = draw(st.integers(1, 3)), draw(st.integers(1, 12))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16]))
    x = torch.rand(n, 3, side, side, generator=g).to(dtype)
    if kind == "rank":
        shape = draw(
            st.lists(st.integers(1, 4), min_size=0, max_size=6).filter(lambda s: len(s) != 4)
        )
        x = torch.rand(shape, generator=g).to(dtype)
    elif kind == "dtype":
        x = (x * 255).to(
            draw(
                st.sampled_from(
                    [torch.uint8, torch.int32, torch.int64, torch.bool, torch.complex64]
                )
            )
        )
    elif kind == "channels":
        x = torch.rand(n, draw(st.sampled_from([0, 2, 4, 5, 16])), side, side, generator=g).to(
            dtype
        )
    elif kind == "range":
        # every value leaves [0, 1] by at least 0.001 (x itself lies in [0, 1))
        shift = 1.0 + draw(st.floats(0.001, 1e4, allow_nan=False))
        x = x + shift if draw(st.booleans()) else x - shift
    elif kind in ("nan", "inf"):
        flat = x.reshape(-1)
        bad = (
            float("nan") if kind == "nan" else draw(st.sampled_from([float("inf"), float("-inf")]))
        )
        flat[draw(st.integers(0, flat.numel() - 1))] = bad
    elif kind == "meta":
        x = torch.empty(n, 3, side, side, device="meta")
    elif kind == "zero_side":
        x = torch.rand(n, 3, 0, side, generator=g)
    else:
        x = torch.rand(n, 3, side, side + draw(st.integers(1, 5)), generator=g)
    return kind, x


@fuzz(60)
@given(bad=bad_batches(square_only=False))  # corruptions take any H x W
def test_every_corruption_refuses_a_bad_batch_clearly_and_leaves_it_untouched(
    bad: tuple[str, torch.Tensor], cases: CaseLedger
) -> None:
    kind, x = bad
    before = None if x.device.type == "meta" else _raw(x)
    for name in CORRUPTIONS:
        spec = P.get(name)
        boxes = torch.zeros(x.shape[0] if x.dim() else 1, 4)
        try:
            spec(x, spec.severities[0], seed=0, boxes=boxes if spec.needs_boxes else None)
            ok, why = False, "accepted"
        except ValueError as exc:
            ok, why = _one_sentence(exc), str(exc)
        except Exception as exc:  # noqa: BLE001  (what the test is looking for)
            ok, why = False, f"{type(exc).__name__}: {exc}"
        untouched = before is None or _raw(x) == before
        cases.check("input", f"bad tensor ({kind}) into {name}", ok and untouched, why[:200])


@fuzz(12)
@given(
    side=st.integers(1, 24),
    n=st.integers(0, 3),
    c=st.sampled_from([1, 3]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16]),
    contiguous=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
    grad=st.booleans(),
)
def test_every_corruption_keeps_its_contract_on_unusual_valid_batches(
    side: int,
    n: int,
    c: int,
    dtype: torch.dtype,
    contiguous: bool,
    seed: int,
    grad: bool,
    cases: CaseLedger,
) -> None:
    g = torch.Generator().manual_seed(seed)
    x = (
        torch.rand(n, side, side, c, generator=g).to(dtype).permute(0, 3, 1, 2)
    )  # channels-last view
    x = x.contiguous() if contiguous else x
    x[..., 0, 0] = 0.0 if n else x[..., 0, 0]  # exact 0 and 1 are valid values
    x.requires_grad_(grad and dtype != torch.float16)
    before = _raw(x)
    for name in CORRUPTIONS:
        spec = P.get(name)
        boxes = torch.tensor([[0.0, 0.0, side / 2, side / 2]] * n) if spec.needs_boxes else None
        try:
            y = spec(x, spec.severities[-1], seed=1, boxes=boxes)
            ok = (
                y.shape == x.shape
                and y.dtype == x.dtype
                and bool(torch.isfinite(y).all())
                and (n == 0 or (float(y.min()) >= 0 and float(y.max()) <= 1))
            )
            why = "" if ok else f"got {tuple(y.shape)} {y.dtype}"
        except ValueError as exc:
            ok, why = _one_sentence(exc), str(exc)
        except Exception as exc:  # noqa: BLE001
            ok, why = False, f"{type(exc).__name__}: {exc}"
        cases.check(
            "input",
            f"unusual valid batch into {name}",
            ok and _raw(x) == before,
            f"{side}px n={n} c={c} {dtype} contiguous={contiguous}: {why[:160]}",
        )


@pytest.fixture(scope="module")
def small_model() -> torch.nn.Module:
    from robench.models import create_model

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return create_model("small_cnn", 10, width=4).eval()


@fuzz(25)
@given(
    bad=bad_batches(square_only=False),
    label_fault=st.sampled_from(["none", "length", "float", "range", "2d"]),
)
def test_every_attack_refuses_bad_images_and_labels(
    bad: tuple[str, torch.Tensor], label_fault: str, small_model: torch.nn.Module, cases: CaseLedger
) -> None:
    from robench.attacks import craft_transfer, run_attack

    kind, x = bad
    n = x.shape[0] if x.dim() else 1
    y = {
        "none": torch.zeros(n, dtype=torch.long),
        "length": torch.zeros(n + 1, dtype=torch.long),
        "float": torch.zeros(n),
        "range": torch.full((n,), 10),
        "2d": torch.zeros(n, 1, dtype=torch.long),
    }[label_fault]
    before = None if x.device.type == "meta" else _raw(x)
    for name in ATTACKS:
        transfer = P.get(name).mode == "transfer"
        try:
            if transfer:
                craft_transfer(name, small_model, x, y, seed=0, steps=1)
            else:
                run_attack(name, small_model, x, y, seed=0, steps=1)
            ok, why = False, "accepted"
        except ValueError as exc:
            ok, why = _one_sentence(exc), str(exc)
        except Exception as exc:  # noqa: BLE001
            ok, why = False, f"{type(exc).__name__}: {exc}"
        untouched = before is None or _raw(x) == before
        cases.check(
            "input",
            f"bad tensor ({kind}, labels {label_fault}) into {name}",
            ok and untouched,
            why[:200],
        )


class _BadModel(torch.nn.Module):
    """A model with one defect in its output (what the runner must catch)."""

    def __init__(self, defect: str, base: torch.nn.Module, clean_calls: int = 0) -> None:
        super().__init__()
        self.defect, self.base, self.clean_calls = defect, base, clean_calls

    def forward(self, x: torch.Tensor) -> Any:
        out = self.base(x)
        d = self.defect
        if d == "classes":
            return out[:, :7]
        if d == "nan":
            return out * float("nan")
        if d == "inf":
            return out + float("inf")
        if (
            d == "nan_when_perturbed"
        ):  # finite on the clean batches (the first calls), NaN afterwards
            self.clean_calls -= 1
            return out if self.clean_calls >= 0 else out * float("nan")
        if d == "flat":
            return out.reshape(-1)
        if d == "extra_dim":
            return out.unsqueeze(1)
        if d == "batch":
            return out[:1]
        if d == "tuple":
            return out, out
        if d == "ints":
            return out.argmax(1, keepdim=True).repeat(1, 10)
        if d == "raises":
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
        return out


@pytest.mark.parametrize("perturbation", ["contrast", "pgd"])
def test_models_with_broken_outputs_are_refused_clearly(
    perturbation: str, tmp_path: Path, small_model: torch.nn.Module, cases: CaseLedger
) -> None:
    defects = [
        "classes",
        "nan",
        "inf",
        "nan_when_perturbed",
        "flat",
        "extra_dim",
        "batch",
        "tuple",
        "ints",
        "raises",
    ]
    for d in defects:
        try:
            evaluate(
                _BadModel(d, small_model, clean_calls=2),
                model_id=f"bad-{d}",
                perturbations=[perturbation],
                n_images=6,
                batch_size=3,
                out=tmp_path / d,
                baseline="none",
                plots=False,
            )
            ok, why = False, "scored"
        except ValueError as exc:
            ok, why = _one_sentence(exc), str(exc)
        cases.check(
            "input",
            f"model output defect {d} ({perturbation})",
            ok,
            why[:200],
            kind="model with a broken output",
        )


def _cifar(root: Path, n: int, labels: list[int] | None = None) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        lab = labels if labels is not None else [int(v) for v in rng.integers(0, 10, n)]
        with open(folder / name, "wb") as f:
            pickle.dump(
                {b"labels": lab, b"data": rng.integers(0, 256, (len(lab), 3072), dtype=np.uint8)}, f
            )
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return root


@pytest.mark.parametrize("case", ["no images", "one image", "label 10", "label -1", "label 255"])
def test_empty_one_image_and_out_of_range_datasets(
    case: str, tmp_path: Path, tiny_ckpt: Path, cases: CaseLedger
) -> None:
    spec = {
        "no images": (0, None),
        "one image": (1, None),
        "label 10": (3, [1, 10, 2]),
        "label -1": (2, [-1, 3]),
        "label 255": (2, [4, 255]),
    }[case]
    root = _cifar(tmp_path / "data", spec[0], spec[1])
    r = CliRunner()
    ev = r.invoke(
        main,
        [
            "evaluate",
            str(tiny_ckpt),
            "--dataset",
            "cifar10",
            "--data-root",
            str(root),
            "-p",
            "contrast",
            "-p",
            "pgd",
            "--baseline",
            "none",
            "--no-plots",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    tr = r.invoke(
        main,
        [
            "train",
            "--dataset",
            "cifar10",
            "--data-root",
            str(root),
            "--epochs",
            "1",
            "-a",
            "width=4",
            "--batch-size",
            "8",
            "--out",
            str(tmp_path / "t.pt"),
        ],
    )
    for what, res in (("evaluate", ev), ("train", tr)):
        clean_exit = isinstance(res.exception, SystemExit | None) and "Traceback" not in res.output
        if case == "one image":
            ok = res.exit_code == 0
            if what == "evaluate" and ok:
                rec = read_record(next((tmp_path / "o").glob("*.json")))
                ok = (
                    rec.clean is not None
                    and rec.clean.n == 1
                    and rec.perturbations["pgd"].severities[0].n == 1
                )
        else:
            ok = res.exit_code == 1 and (
                "no test images" in res.output
                or "outside 0..9" in res.output
                or "training images" in res.output
            )
        cases.check("input", f"dataset with {case}: {what}", ok and clean_exit, res.output[-300:])


@pytest.fixture(scope="module")
def ckpt_bytes(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[str, torch.Tensor]]:
    from robench.models import create_model
    from robench.models.checkpoint import CheckpointMeta, save_checkpoint

    m = create_model("small_cnn", 10, width=4)
    meta = CheckpointMeta(
        arch="small_cnn",
        num_classes=10,
        input_size=32,
        arch_kwargs={"width": 4},
        mean=tuple(m.normalize.mean.flatten().tolist()),
        std=tuple(m.normalize.std.flatten().tolist()),
    )
    path = tmp_path_factory.mktemp("c") / "m.pt"
    save_checkpoint(m, path, meta)
    return path.read_bytes(), {k: v.clone() for k, v in m.state_dict().items()}


@fuzz(80)
@given(
    how=st.sampled_from(["truncate", "zero_tail", "flip", "flip", "garbage"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_corrupt_checkpoints_are_refused_or_load_intact(
    how: str,
    seed: int,
    tmp_path: Path,
    cases: CaseLedger,
    ckpt_bytes: tuple[bytes, dict[str, torch.Tensor]],
) -> None:
    good, state = ckpt_bytes
    rng = random.Random(seed)
    bad = (
        bytes(rng.randrange(256) for _ in range(200)) + good[200:]
        if how == "garbage"
        else damage(good, how, rng)
    )
    path = tmp_path / f"bad-{seed}.pt"
    path.write_bytes(bad)
    try:
        loaded = load_model(path)
        sd = loaded.model.state_dict()
        ok, why = (
            sd.keys() == state.keys() and all(torch.equal(sd[k], state[k]) for k in state),
            "loaded other weights",
        )
    except CheckpointError as exc:
        ok, why = _one_sentence(exc), str(exc)
    except Exception as exc:  # noqa: BLE001
        ok, why = False, f"{type(exc).__name__}: {exc}"
    cases.check("input", f"corrupt checkpoint: {how}", ok, why[:200])


@fuzz(30)
@given(
    how=st.sampled_from(["truncate", "zero_tail", "flip", "empty"]), seed=st.integers(0, 2**31 - 1)
)
def test_corrupt_dataset_files_are_refused_or_read_sanely(
    how: str, seed: int, tmp_path_factory: pytest.TempPathFactory, cases: CaseLedger
) -> None:
    from robench.data import DataError, load_dataset

    root = _cifar(tmp_path_factory.mktemp("cifar"), 4)
    batch = root / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(damage(batch.read_bytes(), how, random.Random(seed)))
    try:
        ds = load_dataset("cifar10", "test", root=root)
        x, y = ds.get_batch(list(range(len(ds))))
        ok = len(ds) == 0 or (
            x.shape[1:] == (3, 32, 32)
            and bool(((y >= 0) & (y < 10)).all())
            and 0 <= float(x.min()) <= float(x.max()) <= 1
        )
        why = "read"
    except DataError as exc:
        ok, why = _one_sentence(exc), str(exc)
    except Exception as exc:  # noqa: BLE001
        ok, why = False, f"{type(exc).__name__}: {exc}"
    cases.check("input", f"corrupt dataset file: {how}", ok, why[:200])


@pytest.fixture(scope="module")
def good_record(
    tmp_path_factory: pytest.TempPathFactory, small_model: torch.nn.Module
) -> dict[str, Any]:
    rep = evaluate(
        small_model,
        model_id="fuzz",
        perturbations=["contrast", "gaussian_noise"],
        n_images=12,
        batch_size=12,
        out=tmp_path_factory.mktemp("rec"),
        baseline="none",
        plots=False,
    )
    return json.loads(Path(rep.paths["json"]).read_text())


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:3]):
            out += _paths(v, (*prefix, i))
    return out


JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.just([]),
    st.just({}),
    st.lists(st.integers(), max_size=3),
)


@fuzz(150)
@given(data=st.data())
def test_mutated_or_truncated_result_files_are_refused_or_fully_usable(
    data: Any, tmp_path: Path, cases: CaseLedger, good_record: dict[str, Any]
) -> None:
    from robench.report import Report
    from robench.report.tables import format_r_table, long_table, wide_table

    rec = json.loads(json.dumps(good_record))
    paths = _paths(rec)
    target = data.draw(st.sampled_from(paths))
    parent = rec
    for k in target[:-1]:
        parent = parent[k]
    action = data.draw(st.sampled_from(["replace", "delete", "truncate"]))
    if action == "replace":
        parent[target[-1]] = data.draw(JSON_VALUES)
    elif action == "delete" and isinstance(parent, dict):
        del parent[target[-1]]
    text = json.dumps(rec)
    if action == "truncate":
        text = text[: data.draw(st.integers(0, len(text) - 2))]
    path = tmp_path / f"r{abs(hash((target, action, text))) % 10**9}.json"
    path.write_text(text)
    label = f"result file: {action} {'.'.join(map(str, target))}"
    try:
        loaded = read_record(path)
    except ResultError as exc:
        cases.check("input", label, _one_sentence(exc), str(exc))
        return
    try:  # accepted: then every consumer must work on it
        good = Record.from_dict(good_record)
        names = P.names(suite="mtlat24")
        # as robench uses a foreign record: score it, then compare to it
        scored = score_record(loaded, None, names)
        score_record(good, scored, names)
        wide_table([scored, good]).to_csv()
        format_r_table([scored, good])
        Report(scored).r_frame()
        long_table([loaded]).to_csv()
        ok, why = True, ""
    except Exception as exc:  # noqa: BLE001
        ok, why = False, f"{type(exc).__name__}: {exc}"
    cases.check("input", label, ok, why[:200])
