"""Small PoseNet-like and SegNet-like scorers in plain torch, and a minimal safetensors reader."""

import json
import struct

import torch
from torch import nn
from torch.nn import functional as F


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        assert spec["dtype"] == "F32"
        a, b = spec["data_offsets"]
        out[name] = torch.frombuffer(bytearray(data[base + a:base + b]), dtype=torch.float32).reshape(spec["shape"])
    return out


class PoseNet(nn.Module):
    """Pairs of frames (6 channels) -> 12 pose-like outputs; the first 6 are scored."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(6, 16, 5, stride=2, padding=2)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.head = nn.Linear(32, 12)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


class SegNet(nn.Module):
    """One frame -> 5-class logits per 8x8 cell: it labels regions, as a real segmenter does, so
    grain it cannot see costs nothing and a region's colour is what counts."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 5, 1)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(F.avg_pool2d(x, 8))))


def load(cls, path):
    net = cls()
    net.load_state_dict(load_safetensors(path))
    return net.eval()
