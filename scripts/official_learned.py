"""A learned entry's own compress path, shortened so it runs on these CPUs: `fp4_mask_gen`'s compress.py
with its training recipe cut to one epoch of its first run (980 epochs over five runs are hard-coded:
about 40 hours here). Its mask and pose extraction, its codecs and its archive format are the entry's
own; only the network's quality is not. No file of the entry is changed.

    ENV/bin/python scripts/official_learned.py UPSTREAM_DIR      (then zip -0 as its compress.sh does)
"""

import importlib.util
import sys
from pathlib import Path

NAME = "fp4_mask_gen"


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    up = Path(sys.argv[1]).resolve()
    src = up / "submissions" / NAME / "compress.py"
    if not src.is_file():
        sys.exit(f"official_learned: {src}: not there")
    sys.path.insert(0, str(up))
    spec = importlib.util.spec_from_file_location(f"submissions.{NAME}.compress", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    original_run, original_train = mod.PipelineRun, mod.train_run

    def one_epoch(name, stage, epochs, lr, **kw):
        return original_run(name, stage, 1, lr, **dict(kw, qat_start_epoch=0, frame1_fade_epochs=0))

    def first_run_only(run, *args, **kw):
        original_train(run, *args, **kw)  # writes archive/model.pt.br
        print(f"official_learned: {run.name} done after one epoch; the recipe's other runs skipped", file=sys.stderr)
        raise SystemExit(0)

    mod.PipelineRun, mod.train_run = one_epoch, first_run_only
    sys.argv = [str(src), "--device", "cpu", "--batch-size", "2"]
    mod.main()


if __name__ == "__main__":
    main()
