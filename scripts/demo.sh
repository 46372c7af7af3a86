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
echo
# last: what this run changed in the working tree, and why (a fresh clone signs with its own keys)
if changed=$(git status --porcelain -- dvc.lock evidence 2>/dev/null) && [ -n "$changed" ]; then
  why=()
  for f in $(printf '%s\n' "$changed" | cut -c4-); do
    case "$f" in
      evidence/trust.json) why+=("$f: this clone made its own lab keys (evidence/keys/ is never committed)");;
      dvc.lock) why+=("$f: stages re-ran, and a release is signed when it is made");;
      evidence/verify.json) why+=("$f: it says when each release was verified");;
      evidence/plots/*) why+=("$f: drawn from the releases");;
      evidence/metrics/*) why+=("$f: a replay scored differently: compare it before you commit");;
      *) why+=("$f: written by dvc repro");;
    esac
  done
  echo "git status: $(IFS=';'; echo "${why[*]}" | sed 's/;/; /g') (commit to publish this lab's evidence, or git checkout -- dvc.lock evidence)"
else
  echo "git status: clean (the committed evidence was reproduced)"
fi
