#!/usr/bin/env bash
# The main job: replay every submission in params.yaml on the miniature contest with DVC,
# release and verify them, then verify the demo release the way a judge would.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
dvc repro
echo
echo "== prov verify evidence/releases/half/manifest.json (what a judge runs) =="
prov verify evidence/releases/half/manifest.json --trust evidence/trust.json \
  --archive submissions/half/archive.zip --runtime submissions/half/runtime \
  --record evidence/releases/half/record.json
echo
echo "== the notebook: frontier, promotions and rejections, by the rule (open evidence/site/index.html) =="
prov --store evidence/store frontier
prov --store evidence/store ledger show
