"""Sweep sample, broken on purpose: as scaled_inflate.py, but it writes each frame's bytes as planar
yuv444p where the evaluator reads interleaved rgb24 (the byte-layout bug of the seed notebook's
failed AV1 run). Every .raw has the right size, so the evaluator scores garbage: the demo's failure,
off the plots' scale. inflate.sh passes SCALE and FILTER after the three contest arguments."""

import os
import sys

import av
import numpy as np

src, dst, names, scale, filt = sys.argv[1:6]
scale = int(scale)
os.makedirs(dst, exist_ok=True)

for name in open(names).read().split():
    base = os.path.splitext(name)[0]
    with av.open(os.path.join(src, base + ".mkv")) as c:
        small = np.stack([f.to_ndarray(format="yuv444p") for f in c.decode(video=0)])  # (frames, planes, rows, cols)
    big = small.repeat(scale, axis=2).repeat(scale, axis=3)
    np.ascontiguousarray(big).astype(np.uint8).tofile(os.path.join(dst, base + ".raw"))
