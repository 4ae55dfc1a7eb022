"""BatchNorm folded into the convolution before it, for inference: the same function in fewer passes over memory.

In eval mode a BatchNorm is an affine map per channel, y = (x - mean) / sqrt(var + eps) * gamma + beta, so a conv
followed directly by one equals a single conv with rescaled weights and a bias (torch.nn.utils.fusion, as
torch.ao's fuse_modules and ONNX Runtime's graph optimiser do it). On a CPU the small networks' time goes largely
to such memory-bound passes (docs/benchmarks.md), which folding removes.

A pair is folded only where forward() is known to apply the BN to the conv's output and to nothing else: convK ->
bnK in BasicBlock, Bottleneck, d2l's Residual and the ResNet stem, and a Conv2d followed by a BatchNorm2d inside an
nn.Sequential (the projection shortcuts, timm's deep stems). Pre-activation blocks apply their BN to a block's input,
so they keep theirs.
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from reslab.models.blocks import BasicBlock, Bottleneck, Residual
from reslab.models.resnet import ResNet

# the classes whose forward() runs out = bnK(convK(...)) with nothing else reading convK's output
PAIRS: dict[type, tuple[tuple[str, str], ...]] = {
    BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
    Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    Residual: (("conv1", "bn1"), ("conv2", "bn2")),
    ResNet: (("conv1", "bn1"),),
}


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with every foldable BatchNorm folded into its conv (and replaced by an
    Identity); `model` itself is left as it was. Outputs agree with the original's in eval mode to fp32 rounding."""
    fused = copy.deepcopy(model).eval()
    for module in list(fused.modules()):
        for conv_name, bn_name in PAIRS.get(type(module), ()):
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                    module[i] = fuse_conv_bn_eval(module[i], module[i + 1])
                    module[i + 1] = nn.Identity()
    return fused
