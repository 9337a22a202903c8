"""``evaluate --dry-run``: the counted passes are those a real run makes, minus finished parts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from robench import evaluate
from robench.cli import main
from robench.evaluation.plan import plan_evaluation

RUN = {"n_images": 40, "batch_size": 16, "baseline": "none", "surrogate": "none"}


class _PassCounter:
    """Images through the model's forward, with a gradient (attack steps) or without.

    A context manager: the hook is removed on exit, so the shared model stays as it was.
    """

    def __init__(self, model: nn.Module) -> None:
        self.forward = self.gradient = 0
        self.model = model

    def __enter__(self) -> _PassCounter:
        self.handle = self.model.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if torch.is_grad_enabled() and args[0].requires_grad:
            self.gradient += args[0].shape[0]
        else:
            self.forward += args[0].shape[0]


def test_counted_passes_equal_the_passes_of_the_real_run(
    tiny_trained: nn.Module, tmp_path: Path
) -> None:
    names = ["gaussian_noise", "pgd", "cw_l2"]
    plan = plan_evaluation(tiny_trained, perturbations=names, out=tmp_path, **RUN)
    assert [c.what for c in plan.counts] == ["clean", *names, "gradient-masking checks"]
    # after planning: the calibration's passes are not the run's
    with _PassCounter(tiny_trained) as counter:
        evaluate(tiny_trained, perturbations=names, out=tmp_path, plots=False, **RUN)
    assert not tiny_trained._forward_hooks  # the session's model is left as it was
    assert (plan.total("forward"), plan.total("gradient")) == (counter.forward, counter.gradient)
    # PGD, C&W; the masking checks on the first batch (16 images)
    assert plan.total("gradient") == 40 * (10 + 40) + 16 * (10 + 10 + 10 + 40 + 10)
    assert plan.total("corrupted") == 5 * 40 and plan.seconds > 0


def test_a_finished_run_costs_nothing_and_only_new_parts_are_counted(
    tiny_trained: nn.Module, tmp_path: Path
) -> None:
    evaluate(tiny_trained, perturbations=["brightness"], out=tmp_path, plots=False, **RUN)
    assert (
        plan_evaluation(tiny_trained, perturbations=["brightness"], out=tmp_path, **RUN).counts
        == []
    )
    more = plan_evaluation(
        tiny_trained, perturbations=["brightness", "contrast"], out=tmp_path, **RUN
    )
    assert [(c.what, c.forward) for c in more.counts] == [("contrast", 5 * 40)]
    fresh = plan_evaluation(
        tiny_trained, perturbations=["brightness"], out=tmp_path, resume=False, **RUN
    )
    assert [c.what for c in fresh.counts] == ["clean", "brightness"]


def test_cli_dry_run_prints_the_plan_and_writes_nothing(tmp_path: Path) -> None:
    from robench.models import create_model
    from robench.models.checkpoint import CheckpointMeta, save_checkpoint

    model = create_model("small_cnn", 10, width=4)
    mean, std = (
        tuple(model.normalize.mean.flatten().tolist()),
        tuple(model.normalize.std.flatten().tolist()),
    )
    save_checkpoint(
        model,
        tmp_path / "m.pt",
        CheckpointMeta(
            arch="small_cnn",
            arch_kwargs={"width": 4},
            num_classes=10,
            input_size=32,
            mean=mean,
            std=std,
        ),
    )
    out = tmp_path / "results"
    res = CliRunner().invoke(
        main,
        [
            "evaluate",
            str(tmp_path / "m.pt"),
            "-p",
            "pgd",
            "--n-images",
            "20",
            "--baseline",
            "none",
            "--surrogate",
            "none",
            "--out",
            str(out),
            "--dry-run",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (
        "pgd" in res.output and "200" in res.output and "estimated time" in res.output
    )  # 20 images x 10 steps
    assert not out.exists()
    bad = CliRunner().invoke(main, ["evaluate", str(tmp_path / "m.pt"), "-p", "nope", "--dry-run"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output and "nope" in bad.output


def test_bad_batch_size_is_one_sentence(tiny_trained: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        plan_evaluation(tiny_trained, batch_size=0, out=tmp_path)
