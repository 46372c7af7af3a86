"""Sweep sample: the archive holds a downscaled re-encode; decode and upsample by SCALE with FILTER
(nearest or bilinear). inflate.sh passes SCALE and FILTER after the three contest arguments."""

import os
import sys

import av
import numpy as np

src, dst, names, scale, filt = sys.argv[1:6]
scale = int(scale)
os.makedirs(dst, exist_ok=True)


def upsample(a, axis):
    if filt == "nearest":
        return a.repeat(scale, axis=axis)
    n = a.shape[axis]
    x = np.clip((np.arange(n * scale) + 0.5) / scale - 0.5, 0, n - 1)
    i0 = np.floor(x).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    shape = [1] * a.ndim
    shape[axis] = -1
    w = (x - i0).reshape(shape)
    return np.take(a, i0, axis=axis) * (1 - w) + np.take(a, i1, axis=axis) * w


for name in open(names).read().split():
    base = os.path.splitext(name)[0]
    with av.open(os.path.join(src, base + ".mkv")) as c:
        small = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.float32)
    big = upsample(upsample(small, 1), 2)
    np.clip(np.rint(big), 0, 255).astype(np.uint8).tofile(os.path.join(dst, base + ".raw"))
