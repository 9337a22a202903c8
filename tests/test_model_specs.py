"""Model specs (timm:, torchvision:, hf-hub:), .safetensors files and the wrapped preprocessing.

Every test makes its own weights in tmp_path and points the Hugging Face and torch hub caches
there; sockets are blocked, so a test fails if anything reaches for the network.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from click.testing import CliRunner
from safetensors.torch import save_file
from timm.models import save_for_hf

import robench
from robench.cli import main
from robench.data import load_dataset
from robench.evaluation.attack_step import resolve_surrogate
from robench.evaluation.record import read_record
from robench.models import Preprocess, PreprocessedModel, create_model
from robench.models.checkpoint import CheckpointError
from robench.models.loading import load_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Empty hub caches under tmp_path, offline mode, and no socket may connect."""
    hf, th = tmp_path / "hf-cache", tmp_path / "torch-home"
    monkeypatch.setenv("HF_HUB_CACHE", str(hf))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(th))

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    return {"hf": hf, "torch": th / "hub" / "checkpoints"}


def _put_in_hub_cache(cache: Path, repo: str, folder: Path) -> None:
    """``folder``'s files as the snapshot of ``repo`` that ``refs/main`` names (the hub layout)."""
    org, name = repo.split("/")
    root = cache / f"models--{org}--{name}"
    shutil.copytree(folder, root / "snapshots" / COMMIT)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)


def _evaluate_cli(model: str, out: Path, *extra: str) -> Any:
    args = ["evaluate", model, "-p", "fog", "--n-images", "4", "--batch-size", "4"]
    args += ["--baseline", "none", "--device", "cpu", "--no-plots", "--out", str(out), *extra]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    (path,) = out.glob("*.json")
    return read_record(path)


def _count_correct(net: torch.nn.Module, pre: Preprocess, indices: list[int]) -> int:
    """Correct predictions with the preprocessing written out by hand (not timm's transform)."""
    x, y = load_dataset("shapes", "test").get_batch(indices)
    size = pre.resize_size
    mode = pre.interpolation
    x = F.interpolate(x, size=size, mode=mode, antialias=mode != "nearest", align_corners=False)
    h, w = pre.input_size[1:]
    top, left = round((size[0] - h) / 2), round((size[1] - w) / 2)
    x = x[:, :, top : top + h, left : left + w]
    mean = torch.tensor(pre.mean).view(1, -1, 1, 1)
    std = torch.tensor(pre.std).view(1, -1, 1, 1)
    with torch.no_grad():
        out = net.eval()((x - mean) / std)
    logits = out if isinstance(out, torch.Tensor) else out.logits
    return int((logits.argmax(1) == y).sum())


def test_timm_model_with_a_local_safetensors_file_offline(
    tmp_path: Path, offline: dict[str, Path]
) -> None:
    torch.manual_seed(0)
    net = timm.create_model("resnet18", num_classes=10).eval()
    weights = tmp_path / "local.safetensors"
    save_file(net.state_dict(), str(weights))
    rec = _evaluate_cli("timm:resnet18", tmp_path / "r", "--weights", str(weights))
    assert (rec.model.kind, rec.model.source, rec.model.id) == ("timm", "timm:resnet18", "local")
    meta = rec.model.meta
    assert meta is not None
    assert meta["num_classes"] == 10  # from the classifier's rows in the file
    assert meta["arch"] == "resnet18.a1_in1k"  # timm's default tag gives the preprocessing
    pre = meta["preprocess"]
    assert pre["input_size"] == [3, 224, 224] and pre["resize_size"] == [235, 235]
    assert (pre["crop_pct"], pre["interpolation"], pre["crop_mode"]) == (0.95, "bicubic", "center")
    assert meta["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert "fog" in rec.perturbations
    assert rec.clean is not None and rec.dataset.indices is not None
    expected = _count_correct(net, Preprocess.from_timm(pre), list(rec.dataset.indices))
    assert rec.clean.n_correct == expected


def test_torchvision_model_with_a_state_dict_file_offline(
    tmp_path: Path, offline: dict[str, Path]
) -> None:
    torch.manual_seed(1)
    net = torchvision.models.resnet18(num_classes=10).eval()
    weights = tmp_path / "tv-resnet18.pt"
    torch.save(net.state_dict(), weights)
    rec = _evaluate_cli("torchvision:resnet18", tmp_path / "r", "--weights", str(weights))
    meta = rec.model.meta
    assert rec.model.kind == "torchvision" and meta is not None
    assert meta["num_classes"] == 10  # inferred from fc
    pre = meta["preprocess"]  # the DEFAULT weights' transforms: resize 256, crop 224, bilinear
    assert (pre["input_size"], pre["resize_size"]) == ([3, 224, 224], [256, 256])
    assert pre["interpolation"] == "bilinear" and pre["source"] == "torchvision"
    assert rec.clean is not None and rec.dataset.indices is not None
    expected = _count_correct(net, Preprocess.from_timm(pre), list(rec.dataset.indices))
    assert rec.clean.n_correct == expected


def test_torchvision_weights_enum_needs_the_cached_file_or_download(
    tmp_path: Path, offline: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    res = CliRunner().invoke(
        main, ["evaluate", "torchvision:resnet18:IMAGENET1K_V1", "--out", str(tmp_path / "r")]
    )
    assert res.exit_code != 0
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "--download" in lines[0] and "torch-home" in lines[0], res.output
    with pytest.raises(CheckpointError, match="no weights 'IMAGENET9'"):
        load_model("torchvision:resnet18:IMAGENET9")
    # a file in the cache that is not the one its name's hash states is refused
    torch.manual_seed(2)
    net = torchvision.models.resnet18().eval()
    offline["torch"].mkdir(parents=True)
    torch.save(net.state_dict(), offline["torch"] / "resnet18-f37072fd.pth")
    with pytest.raises(CheckpointError, match="does not match the hash in its name"):
        load_model("torchvision:resnet18")  # DEFAULT is IMAGENET1K_V1
    # without a hash in the name (as if), the cached weights are loaded through torchvision
    monkeypatch.setattr(torch.hub, "HASH_REGEX", re.compile(r"-(nohash)\."))
    loaded = load_model("torchvision:resnet18")
    assert loaded.model_id == "resnet18.IMAGENET1K_V1" and loaded.kind == "torchvision"
    inner = loaded.model.model
    assert all(
        torch.equal(a, b)
        for a, b in zip(inner.state_dict().values(), net.state_dict().values(), strict=True)
    )
    assert loaded.spec_meta is not None and loaded.spec_meta["num_classes"] == 1000


def _tiny_timm_folder(path: Path, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = timm.create_model("test_resnet", num_classes=10).eval()
    save_for_hf(net, str(path), safe_serialization=True)
    return net


def test_hf_hub_timm_model_from_the_local_cache(tmp_path: Path, offline: dict[str, Path]) -> None:
    net = _tiny_timm_folder(tmp_path / "a", 3)
    _put_in_hub_cache(offline["hf"], "someone/tiny-resnet", tmp_path / "a")
    _tiny_timm_folder(tmp_path / "b", 4)
    _put_in_hub_cache(offline["hf"], "someone/tiny-base", tmp_path / "b")
    out = tmp_path / "r"
    res = CliRunner().invoke(
        main,
        ["evaluate", "hf-hub:someone/tiny-resnet", "-p", "fog", "--n-images", "6"]
        + ["--batch-size", "6", "--device", "cpu", "--no-plots", "--out", str(out)]
        + ["--baseline", "hf-hub:someone/tiny-base"],
    )
    assert res.exit_code == 0, res.output
    rec = read_record(out / "someone_tiny-resnet__shapes__s0__n6.json")
    assert rec.model.kind == "timm" and rec.model.source == "hf-hub:someone/tiny-resnet"
    assert rec.baseline is not None and rec.baseline.source == "hf-hub:someone/tiny-base"
    meta = rec.model.meta
    assert meta is not None and meta["arch"] == "test_resnet"
    assert meta["preprocess"]["input_size"] == [3, 160, 160]  # from the repo's config.json
    assert rec.clean is not None and rec.dataset.indices is not None
    pre = Preprocess.from_timm(meta["preprocess"])
    assert rec.clean.n_correct == _count_correct(net, pre, list(rec.dataset.indices))
    # a revision, the surrogate path and a folder given directly load the same model
    pinned = load_model(f"hf-hub:someone/tiny-resnet@{COMMIT}")
    sur = resolve_surrogate("hf-hub:someone/tiny-resnet", "shapes", "cpu")
    folder = load_model(tmp_path / "a")
    assert sur is not None and pinned.sha256 == sur.sha256 == folder.sha256 == rec.model.sha256
    with pytest.raises(CheckpointError, match="--download"):
        load_model("hf-hub:someone/absent")


def test_hf_hub_transformers_classifier_from_the_local_cache(
    tmp_path: Path, offline: dict[str, Path]
) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(5)
    cfg = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=10
    )
    net = transformers.ResNetForImageClassification(cfg).eval()
    net.save_pretrained(tmp_path / "hf")
    proc = transformers.ConvNextImageProcessor(
        size={"shortest_edge": 64}, crop_pct=0.875, image_mean=[0.4, 0.45, 0.5]
    )
    proc.save_pretrained(tmp_path / "hf")
    _put_in_hub_cache(offline["hf"], "someone/tiny-hf", tmp_path / "hf")
    rep = robench.evaluate(
        "hf-hub:someone/tiny-hf",
        perturbations=["fog"],
        n_images=6,
        batch_size=6,
        device="cpu",
        baseline="none",
        out=tmp_path / "r",
        plots=False,
    )
    rec = rep.record
    assert rec.model.kind == "transformers" and rec.model.meta is not None
    pre = rec.model.meta["preprocess"]  # ConvNeXt's rule: resize to 64 / 0.875, crop 64
    assert (pre["input_size"], pre["resize_size"]) == ([3, 64, 64], [73, 73])
    assert pre["interpolation"] == "bicubic" and pre["mean"] == [0.4, 0.45, 0.5]
    assert rec.clean is not None and rec.dataset.indices is not None
    expected = _count_correct(net, Preprocess.from_timm(pre), list(rec.dataset.indices))
    assert rec.clean.n_correct == expected


def test_preprocessing_is_differentiable_and_takes_any_image_size() -> None:
    torch.manual_seed(6)
    net = timm.create_model("test_resnet", num_classes=4)
    model = PreprocessedModel(net, Preprocess((3, 48, 48), "bicubic", (0.5,) * 3, (0.25,) * 3))
    for side in (28, 96):
        x = torch.rand(2, 3, side, side, requires_grad=True)
        model(x).sum().backward()
        assert x.grad is not None and x.grad.shape == x.shape and x.grad.abs().sum() > 0
    record = json.loads(json.dumps(model.preprocess.to_dict()))
    assert record["resize_size"] == [48, 48] and record["std"] == [0.25] * 3


def test_torchvision_transforms_map_exactly_onto_timm_terms() -> None:
    seen = 0
    for name in torchvision.models.list_models(module=torchvision.models):
        for w in torchvision.models.get_model_weights(name):
            tf = w.transforms()
            pre = Preprocess.from_torchvision(tf)
            assert pre.resize_size == (tf.resize_size[0],) * 2, w
            assert pre.transform()(torch.rand(1, 3, 40, 50)).shape[-2:] == (tf.crop_size[0],) * 2
            seen += 1
    assert seen > 50


def test_safetensors_file_with_a_registered_arch(tmp_path: Path) -> None:
    torch.manual_seed(7)
    model = create_model("small_cnn", 10, width=4).eval()
    path = tmp_path / "small.safetensors"
    save_file(model.state_dict(), str(path))
    loaded = load_model(path, arch="small_cnn", arch_kwargs={"width": 4})
    assert loaded.kind == "safetensors" and loaded.model_id == "small"
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(loaded.model(x), model(x))
    with pytest.raises(
        CheckpointError, match="--arch timm:resnet18 or --arch torchvision:resnet18"
    ):
        load_model(path, arch="resnet18")
    with pytest.raises(ValueError, match="--weights goes with"):
        load_model(path, arch="small_cnn", weights=path)
    # safetensors sorts its keys: the class count comes from the classifier, not the last bias
    tv = tmp_path / "tv7.safetensors"
    save_file(torchvision.models.resnet18(num_classes=7).state_dict(), str(tv))
    for loaded in (
        load_model("torchvision:resnet18", weights=tv),
        load_model(tv, arch="torchvision:resnet18"),
    ):
        assert loaded.spec_meta is not None and loaded.spec_meta["num_classes"] == 7
        assert loaded.model(torch.rand(1, 3, 32, 32)).shape == (1, 7)


def test_spec_weights_are_read_without_running_code(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (print, ("ran",))

    path = tmp_path / "evil.pt"
    torch.save({"fc.weight": torch.zeros(2, 2), "x": Payload()}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_model("timm:resnet18", weights=path)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="not a readable .safetensors"):
        load_model("torchvision:resnet18", weights=bad)
    with pytest.raises(CheckpointError, match="unknown timm architecture 'resnet18x'"):
        load_model("timm:resnet18x", weights=bad)
    small = tmp_path / "mismatch.safetensors"
    save_file(timm.create_model("resnet10t", num_classes=3).state_dict(), str(small))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model("timm:resnet18", weights=small)
