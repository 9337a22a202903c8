"""The registered architectures: small CIFAR-style nets and torchvision's ImageNet backbones."""

from __future__ import annotations

from typing import cast

from torch import Tensor, nn

from robench.models._base import register_model

__all__ = ["SmallCNN", "AllConvNet", "VGG", "resnet18_cifar"]


def _conv_bn(cin: int, cout: int, stride: int = 1, k: int = 3) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class SmallCNN(nn.Module):
    """Cavey et al.'s CIFAR net: conv-BN-ReLU pairs, max pooling, dropout 0.2 per pool, linear head.

    Args:
        num_classes: output logits.
        in_chans: input channels.
        width: channels of the first block (doubled per block).
        blocks: number of conv-conv-pool blocks.
        dropout: dropout after each pool.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        width: int = 32,
        blocks: int = 3,
        dropout: float = 0.2,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for b in range(blocks):
            w = width * 2**b
            layers += _conv_bn(c, w) + _conv_bn(w, w) + [nn.MaxPool2d(2), nn.Dropout(dropout)]
            c = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits: the pooled features through the linear head."""
        return cast(Tensor, self.head(self.pool(self.features(x)).flatten(1)))


class AllConvNet(nn.Module):
    """Springenberg et al.'s All-Convolutional Net with batch norms (Borkar & Karam, Fig. 3a).

    Args:
        num_classes: output logits.
        in_chans: input channels.
        width: 96 in the paper (first stage); the second stage has twice as many.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 96):
        super().__init__()
        w1, w2 = width, 2 * width
        self.features = nn.Sequential(
            *_conv_bn(in_chans, w1),
            *_conv_bn(w1, w1),
            *_conv_bn(w1, w1, stride=2),
            *_conv_bn(w1, w2),
            *_conv_bn(w2, w2),
            *_conv_bn(w2, w2, stride=2),
            *_conv_bn(w2, w2),
            *_conv_bn(w2, w2, k=1),
        )
        self.classifier = nn.Conv2d(w2, num_classes, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits: the 1x1-conv class maps, averaged over the image."""
        return cast(Tensor, self.pool(self.classifier(self.features(x)))).flatten(1)


_VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
    """VGG-11 with batch norm for small images (the black-box surrogate), width-scalable.

    Args:
        num_classes: output logits.
        in_chans: input channels.
        width_div: divide every layer width by this (4 keeps the checkpoint small).
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width_div: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for v in _VGG11:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                w = max(8, int(v) // width_div)
                layers += _conv_bn(c, w)
                c = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits: the pooled features through the linear head."""
        return cast(Tensor, self.head(self.pool(self.features(x)).flatten(1)))


@register_model(
    "small_cnn",
    input_size=32,
    description="Cavey et al.'s CIFAR CNN (3 conv blocks, BN, dropout)",
    source="Cavey et al.",
)
def small_cnn(
    num_classes: int = 10, in_chans: int = 3, width: int = 32, blocks: int = 3, dropout: float = 0.2
) -> nn.Module:
    """Build :class:`SmallCNN`."""
    return SmallCNN(num_classes, in_chans, width, blocks, dropout)


@register_model(
    "allconv",
    input_size=32,
    description="All-Convolutional Net with batch norm",
    source="Springenberg et al.; DeepCorrect (Borkar and Karam)",
)
def allconv(num_classes: int = 10, in_chans: int = 3, width: int = 96) -> nn.Module:
    """Build :class:`AllConvNet`."""
    return AllConvNet(num_classes, in_chans, width)


@register_model(
    "vgg11",
    input_size=32,
    description="VGG-11 with BN for small images (black-box surrogate)",
    source="Simonyan & Zisserman; M-TLAT (Laugros et al.)",
)
def vgg11(num_classes: int = 10, in_chans: int = 3, width_div: int = 1) -> nn.Module:
    """Build :class:`VGG` (VGG-11)."""
    return VGG(num_classes, in_chans, width_div)


@register_model(
    "resnet18_cifar",
    input_size=32,
    description="ResNet-18 with a CIFAR stem (3x3 conv, no max-pool)",
    source="He et al.; torchvision",
)
def resnet18_cifar(num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    """The torchvision ResNet-18 with its 7x7/2 stem and max-pool replaced by a 3x3/1 conv."""
    from torchvision.models import resnet18

    m: nn.Module = resnet18(weights=None, num_classes=num_classes)
    m.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    return m


def _torchvision(fn_name: str, num_classes: int, in_chans: int) -> nn.Module:
    import torchvision.models as tvm

    m: nn.Module = getattr(tvm, fn_name)(weights=None, num_classes=num_classes)
    if in_chans != 3:
        m.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
    return m


@register_model(
    "resnet50",
    input_size=224,
    description="torchvision ResNet-50 (224 px)",
    source="He et al.; torchvision",
)
def resnet50(num_classes: int = 1000, in_chans: int = 3) -> nn.Module:
    """The torchvision ResNet-50, random weights."""
    return _torchvision("resnet50", num_classes, in_chans)


@register_model(
    "resnext50_32x4d",
    input_size=224,
    description="torchvision ResNeXt-50 32x4d (224 px)",
    source="Xie et al.; torchvision",
)
def resnext50_32x4d(num_classes: int = 1000, in_chans: int = 3) -> nn.Module:
    """The torchvision ResNeXt-50 32x4d, random weights."""
    return _torchvision("resnext50_32x4d", num_classes, in_chans)
