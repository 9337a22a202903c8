"""Memory-safe defaults: ``batch_size="auto"`` measures the model, never changes a result, the
dry run calibrates on a few images instead of whole batches, and a batch that runs out of memory
steps the batch size down without losing finished work or changing a result."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from robench import evaluate
from robench.cli import main
from robench.evaluation import memory
from robench.evaluation.memory import (
    MAX_AUTO_BATCH,
    MEMORY_SHARE,
    StepDown,
    choose_batch_size,
    image_memory,
    is_out_of_memory,
    parse_batch_size,
    peak_memory,
)
from robench.evaluation.plan import plan_evaluation
from robench.models import create_model


def _images(side: int, k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(k, 3, side, side, generator=g), torch.zeros(k, dtype=torch.long)


@pytest.mark.parametrize(
    ("value", "expected"), [("auto", None), (" AUTO ", None), (16, 16), ("32", 32), (1, 1)]
)
def test_batch_size_values(value: int | str, expected: int | None) -> None:
    assert parse_batch_size(value) == expected


@pytest.mark.parametrize("value", [0, -3, "0", "abc", "1.5", "", True, 2.0])
def test_bad_batch_sizes_are_one_sentence(value: object) -> None:
    with pytest.raises(ValueError, match="batch_size must be") as err:
        parse_batch_size(value)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


def test_per_image_memory_grows_with_the_resolution_not_with_the_weights() -> None:
    model = create_model("small_cnn", 10, width=8).eval()
    small = image_memory(model, *_images(32))
    large = image_memory(model, *_images(128))
    assert 8 < large / small < 32  # 16x the pixels: activations scale with them
    wide = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4096), nn.ReLU(), nn.Linear(4096, 10))
    weights = sum(p.numel() * 4 for p in wide.parameters())  # 50 MB of weights
    assert image_memory(wide, *_images(32)) < weights / 50  # weights are not per-image cost


def test_the_measure_leaves_the_model_as_it_was() -> None:
    model = create_model("small_cnn", 10, width=4).train()
    flags = [p.requires_grad for p in model.parameters()]
    image_memory(model, *_images(32))
    assert model.training and [p.requires_grad for p in model.parameters()] == flags


def test_batch_is_a_share_of_free_memory_capped_and_at_least_one() -> None:
    model = create_model("small_cnn", 10, width=4).eval()
    x, y = _images(32)
    per = image_memory(model, x, y)
    six = choose_batch_size([model], x, y, "cpu", available=lambda d: int(6.5 * per / MEMORY_SHARE))
    assert six.size == 6 and six.per_image == per and "MiB per image" in str(six)
    assert choose_batch_size([model], x, y, "cpu", available=lambda d: 2**50).size == MAX_AUTO_BATCH
    assert choose_batch_size([model], x, y, "cpu", available=lambda d: 1).size == 1
    unknown = choose_batch_size([model], x, y, "cpu", available=lambda d: 0)
    assert unknown.size == MAX_AUTO_BATCH and "unknown" in str(unknown)
    # the heaviest of several models decides
    big = create_model("small_cnn", 10, width=32).eval()
    both = choose_batch_size([model, big], x, y, "cpu", available=lambda d: 2**33)
    alone = choose_batch_size([model], x, y, "cpu", available=lambda d: 2**33)
    assert both.per_image > alone.per_image


def test_a_model_that_cannot_be_measured_leaves_the_cap_and_says_why() -> None:
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("shapes do not match")

    choice = choose_batch_size([Broken()], *_images(32), "cpu", available=lambda d: 2**30)
    assert choice.size == MAX_AUTO_BATCH and "shapes do not match" in str(choice)


def test_free_memory_reads_meminfo_and_the_cgroup_limit(tmp_path: Path) -> None:
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:  16000000 kB\nMemAvailable:   8000000 kB\n")
    assert memory._meminfo_available(info) == 8_000_000 * 1024
    assert memory._meminfo_available(tmp_path / "absent") is None
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("4000000000\n")
    (v2 / "memory.current").write_text("1000000000\n")
    assert memory._cgroup_headroom(v2) == 3_000_000_000
    (v2 / "memory.max").write_text("max\n")
    assert memory._cgroup_headroom(v2) is None
    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("2000000000\n")
    (v1 / "memory.usage_in_bytes").write_text("500000000\n")
    assert memory._cgroup_headroom(v1.parent) == 1_500_000_000
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "unlimited"
    assert memory._cgroup_headroom(v1.parent) is None
    assert memory.available_memory("cpu") > 0


def test_torchrun_processes_on_one_machine_share_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_host_available", lambda: 8_000)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert memory.available_memory("cpu") == 2_000


def test_peak_memory_is_the_process_high_water_mark() -> None:
    peak = peak_memory("cpu")
    assert peak["peak_rss_mib"] > 50  # torch alone takes more
    assert "peak_cuda_mib" not in peak


def _bits(rec: object) -> dict[str, object]:
    out: dict[str, object] = {"clean": rec.clean.correct}  # type: ignore[attr-defined]
    for name, entry in rec.perturbations.items():  # type: ignore[attr-defined]
        out[name] = [(s.severity, s.correct) for s in entry.severities]
    return out


def test_auto_batch_is_recorded_with_the_peak_and_changes_no_result(
    tiny_trained: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from robench.data import load_dataset

    x, y = memory.probe_images(load_dataset("shapes", "test"), "cpu")
    per = image_memory(tiny_trained, x, y)
    monkeypatch.setattr(memory, "available_memory", lambda d: int(6.5 * per / MEMORY_SHARE))
    run = {"perturbations": ["contrast", "pgd"], "n_images": 20, "baseline": "none"}
    auto = evaluate(tiny_trained, out=tmp_path / "auto", plots=False, **run).record
    assert auto.config.batch_size == 6  # 20 images in batches of 6, 6, 6, 2
    assert auto.environment.peak_rss_mib is not None and auto.environment.peak_rss_mib > 0
    fixed = evaluate(tiny_trained, out=tmp_path / "one", plots=False, batch_size=20, **run).record
    assert fixed.config.batch_size == 20
    assert _bits(auto) == _bits(fixed)  # every image's randomness is its own, not its batch's


class _Slow(nn.Module):
    """A model whose every pass takes longer than a calibration needs: it counts what it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = create_model("small_cnn", 10, width=4).eval()
        self.biggest = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.biggest = max(self.biggest, x.shape[0])
        time.sleep(0.3)
        return self.inner(x)


def test_dry_run_calibrates_on_a_few_images_not_on_whole_batches(tmp_path: Path) -> None:
    model = _Slow()
    plan = plan_evaluation(
        model, perturbations=["contrast"], n_images=200, out=tmp_path, baseline="none"
    )
    assert plan.batch_size >= 1 and "auto:" in str(plan).splitlines()[0]
    assert model.biggest <= 2 * memory.PROBE_IMAGES  # the memory probe, then 1-image timings
    assert set(plan.calibration_images.values()) == {1} and "(on 1)" in str(plan)
    assert plan.counts[0].forward == 200  # the counts still cover the whole run


def test_cli_batch_size_auto_and_bad_values(tiny_trained: nn.Module, tmp_path: Path) -> None:
    bad = CliRunner().invoke(main, ["evaluate", "zoo:standard", "--batch-size", "lots"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output
    assert "batch_size must be 'auto' or a positive integer" in bad.output
    res = CliRunner().invoke(
        main,
        ["evaluate", "zoo:standard", "-p", "contrast", "--n-images", "8", "--dry-run"]
        + ["--out", str(tmp_path)],
    )
    assert res.exit_code == 0, res.output
    assert "auto: " in res.output and "MiB per image" in res.output


# --- out of memory: the batch size steps down, nothing finished is lost -----------------------


def test_allocation_failures_are_told_from_other_errors() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_out_of_memory(MemoryError())
    cpu = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 8000000000 bytes."
    assert is_out_of_memory(RuntimeError(cpu))
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] not enough memory"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))  # not an allocator's error


def test_predict_lets_an_allocation_failure_through_for_the_step_down() -> None:
    from robench.evaluation.loop import predict

    class Full(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate")

    with pytest.raises(RuntimeError, match="DefaultCPUAllocator"):
        predict(Full(), torch.zeros(2, 3, 8, 8), 10)
    with pytest.raises(ValueError, match="the model failed on a batch"):
        predict(nn.Linear(3, 10), torch.zeros(2, 3, 8, 8), 10)  # a real model error: one sentence


def test_step_down_halves_to_one_then_says_so_in_one_sentence(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tried: list[int] = []

    def step(size: int) -> int:
        tried.append(size)
        if size > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return size

    steps = StepDown(16, "cuda:0")
    with caplog.at_level("WARNING", logger="robench.evaluation.memory"):
        assert steps.run(step) == 2
    assert tried == [16, 8, 4, 2] and steps.size == 2 and steps.stepped
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"out of memory at batch size {a}: going on with batch size {b}"
        for a, b in ((16, 8), (8, 4), (4, 2))
    ]
    assert steps.run(lambda size: size) == 2  # later parts keep the smaller size

    def never(size: int) -> int:
        raise MemoryError

    with pytest.raises(ValueError, match="out of memory on cpu even at batch size 1") as err:
        StepDown(4, "cpu").run(never)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="pass a smaller --batch-size"):
        StepDown(4, "cuda:1", alone=False).run(never)  # a torchrun rank cannot step alone

    def broken(size: int) -> int:
        raise RuntimeError("shapes do not match")

    with pytest.raises(RuntimeError, match="shapes do not match"):
        StepDown(4, "cpu").run(broken)  # not an allocation failure: no retry


class _Hungry(nn.Module):
    """A model that runs out of memory on batches above ``limit`` once it made ``calls_ok`` calls.

    Its state is the wrapped model's: every run of it has the wrapped model's hash.
    """

    def __init__(self, inner: nn.Module, limit: int, calls_ok: int = 0, **kw: object) -> None:
        super().__init__()
        self.inner, self.limit, self.calls_ok, self.calls = inner, limit, calls_ok, 0
        self.gradient_only = bool(kw.get("gradient_only", False))
        self.error = kw.get("error", torch.OutOfMemoryError)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        hungry = x.requires_grad or not self.gradient_only
        if self.calls > self.calls_ok and x.shape[0] > self.limit and hungry:
            raise self.error(  # type: ignore[operator]
                "DefaultCPUAllocator: can't allocate memory: you tried to allocate 9999 bytes"
            )
        return self.inner(x)  # type: ignore[no-any-return]


def _count_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Calls of the clean pass and of each corruption's computation, by name."""
    from robench.evaluation import loop

    calls: dict[str, int] = {}
    clean, corrupt = loop._clean, loop._corruption_entry

    def counted_clean(*a: object, **k: object) -> object:
        calls["clean"] = calls.get("clean", 0) + 1
        return clean(*a, **k)  # type: ignore[arg-type]

    def counted_corruption(spec: object, *a: object, **k: object) -> object:
        name = spec.name  # type: ignore[attr-defined]
        calls[name] = calls.get(name, 0) + 1
        return corrupt(spec, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "_clean", counted_clean)
    monkeypatch.setattr(loop, "_corruption_entry", counted_corruption)
    return calls


CORRUPT = {"perturbations": ["contrast", "gaussian_noise"], "n_images": 12, "baseline": "none"}


def test_out_of_memory_steps_down_keeps_finished_parts_and_changes_no_result(
    tiny_trained: nn.Module,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from robench.evaluation.record import read_record

    calls = _count_calls(monkeypatch)
    # the clean pass (1 batch of 12) and gaussian_noise (5 batches, first in the suite's order)
    # fit; contrast runs out of memory above 4 images: 12 -> 6 -> 3
    hungry = _Hungry(tiny_trained, limit=4, calls_ok=6)
    with caplog.at_level("WARNING", logger="robench.evaluation.memory"):
        run = evaluate(hungry, out=tmp_path / "oom", plots=False, batch_size=12, **CORRUPT)
    assert calls == {"clean": 1, "gaussian_noise": 1, "contrast": 3}  # only the failed part again
    assert [r.getMessage() for r in caplog.records] == [
        "out of memory at batch size 12: going on with batch size 6",
        "out of memory at batch size 6: going on with batch size 3",
    ]
    rec = run.record
    assert rec.config.batch_size == 3  # the size actually used
    assert read_record(run.paths["json"]).config.batch_size == 3
    small = evaluate(tiny_trained, out=tmp_path / "four", plots=False, batch_size=4, **CORRUPT)
    assert _bits(rec) == _bits(small.record)  # as if batch size 4 had been asked from the start
    assert rec.summary == small.record.summary


def test_an_attack_steps_down_on_a_cpu_allocation_failure(
    tiny_trained: nn.Module, tmp_path: Path
) -> None:
    run = {"perturbations": ["pgd"], "n_images": 8, "baseline": "none", "surrogate": "none"}
    hungry = _Hungry(tiny_trained, limit=2, gradient_only=True, error=RuntimeError)
    rec = evaluate(hungry, out=tmp_path / "oom", plots=False, batch_size=8, **run).record
    assert rec.config.batch_size == 2 and rec.gradient_masking is not None
    two = evaluate(tiny_trained, out=tmp_path / "two", plots=False, batch_size=2, **run).record
    assert _bits(rec) == _bits(two)


def test_out_of_memory_at_batch_size_one_is_one_sentence_and_the_run_resumes(
    tiny_trained: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from robench.evaluation.record import read_record

    calls = _count_calls(monkeypatch)
    full = _Hungry(tiny_trained, limit=0, calls_ok=6)  # nothing fits after gaussian_noise
    with pytest.raises(ValueError, match="out of memory on cpu even at batch size 1") as err:
        evaluate(full, out=tmp_path, plots=False, batch_size=12, **CORRUPT)
    assert "\n" not in str(err.value) and "can't allocate memory" in str(err.value)
    (path,) = tmp_path.glob("*.json")
    saved = read_record(path)  # what was finished before the error is on disk
    assert saved.clean is not None and set(saved.perturbations) == {"gaussian_noise"}
    calls.clear()
    fits = _Hungry(tiny_trained, limit=12)  # the same model (same hash) with memory to spare
    rec = evaluate(fits, out=tmp_path, plots=False, batch_size=12, **CORRUPT).record
    assert calls == {"contrast": 1}  # the rerun resumes: clean and gaussian_noise are kept
    assert _bits(rec)["gaussian_noise"] == _bits(saved)["gaussian_noise"]
