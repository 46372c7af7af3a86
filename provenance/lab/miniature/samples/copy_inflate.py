"""Near-lossless sample: the archive holds the original clip; decode it to raw frames."""

import os
import sys

import av
import numpy as np

src, dst, names = sys.argv[1:4]
os.makedirs(dst, exist_ok=True)
for name in open(names).read().split():
    base = os.path.splitext(name)[0]
    with av.open(os.path.join(src, base + ".mkv")) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    frames.tofile(os.path.join(dst, base + ".raw"))
