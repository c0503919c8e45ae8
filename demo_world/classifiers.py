"""The judges of the demo world: an object classifier and a style classifier.

Two small CNNs over 64x64 downsampled images; they decide what the demo model
drew, which is what every erasure metric counts. Pure torch (no ComfyUI).
"""
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from . import config
from .dataset import OBJECTS, STYLES

INPUT_SIZE = 64
# Recognising shapes through textures needs more capacity than recognising palettes.
WIDTHS = {"object": (48, 64, 96, 128, 192), "style": (32, 48, 64, 96, 128)}


class SmallCNN(torch.nn.Module):
    def __init__(self, num_classes, widths):
        super().__init__()
        layers, c_in = [], 3
        for i, c_out in enumerate(widths):
            stride = 1 if i == 2 else 2  # 64 -> 32 -> 16 -> 16 -> 8 -> 4
            layers += [torch.nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), torch.nn.BatchNorm2d(c_out),
                       torch.nn.ReLU(inplace=True)]
            c_in = c_out
        self.features = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(c_in, num_classes)

    def forward(self, x):
        """x: float [N, 3, 64, 64] in [0, 1] -> logits."""
        return self.head(self.features(x * 2 - 1).mean(dim=(2, 3)))


def to_input(images):
    """uint8 [N,H,W,3], or float [N,H,W,3] in 0..1 (a ComfyUI IMAGE) -> float [N,3,64,64]."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    x = x.permute(0, 3, 1, 2)
    return F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="area") if x.shape[-1] != INPUT_SIZE else x


@dataclass
class Judgement:
    object: str
    object_conf: float
    style: str
    style_conf: float


class Judges:
    """Both classifiers, loaded from config.CLASSIFIERS_FILE (the shipped weights unless a retrain points elsewhere)."""

    def __init__(self):
        self.object_net = SmallCNN(len(OBJECTS), WIDTHS["object"])
        self.style_net = SmallCNN(len(STYLES), WIDTHS["style"])
        sd = {k: v.float() for k, v in load_file(str(config.CLASSIFIERS_FILE)).items()}
        for name, net in (("object", self.object_net), ("style", self.style_net)):
            missing, unexpected = net.load_state_dict(
                {k[len(name) + 1:]: v for k, v in sd.items() if k.startswith(name + ".")}, strict=False)
            # BatchNorm's step counter is not a weight and is not shipped.
            assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
            net.eval()

    @torch.no_grad()
    def probabilities(self, images, batch=256):
        """(object probs [N, n_objects], style probs [N, n_styles])."""
        x = to_input(images)
        obj = torch.cat([self.object_net(x[i:i + batch]).softmax(-1) for i in range(0, len(x), batch)])
        sty = torch.cat([self.style_net(x[i:i + batch]).softmax(-1) for i in range(0, len(x), batch)])
        return obj, sty

    def classify(self, images):
        obj, sty = self.probabilities(images)
        oc, oi = obj.max(-1)
        sc, si = sty.max(-1)
        return [Judgement(OBJECTS[o], float(a), STYLES[s], float(b))
                for o, a, s, b in zip(oi.tolist(), oc.tolist(), si.tolist(), sc.tolist())]


_judges = None


def classify(images):
    """Judge images: a list of Judgement(object, object_conf, style, style_conf), one per image."""
    global _judges
    if _judges is None:
        _judges = Judges()
    return _judges.classify(images)
