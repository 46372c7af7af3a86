#!/usr/bin/env bash
# The real contest on this machine: the official evaluator's own code, in its own environment,
# replaying real submissions against labelled stand-ins for the git-LFS weights and clip.
#
#   bash scripts/official.sh [--env-only] [WORK]   (default WORK: .cache/official; DEVICE=cuda for a GPU)
#
# --env-only stops after step 2 (CI builds the environment so the test of the real evaluator runs).
#
# 1. the official tree (../shared/official's tarball, or OFFICIAL_TAR) unpacked into WORK/upstream;
# 2. its own Python: `prov upstream env` from its pyproject.toml (WORK/env, kept between runs);
# 3. stand-ins for its LFS files (scripts/official_standins.py, FRAMES frames: labelled, never a score);
# 4. for each of SUBMISSIONS (add fp4_mask_gen for a learned codec, its training cut to one epoch by
#    scripts/official_learned.py: about 10 minutes more): its compress.sh makes archive.zip from the stand-in clip; `prov replay
#    --python WORK/env` records it (grade B: the pins fail on the stand-ins, by name); a release is
#    signed and `prov verify`ed; the official evaluate.sh runs the same inputs outside the sandbox
#    and `prov replay --compare` shows the components agree bit for bit.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
ENV_ONLY=""
[ "${1:-}" = --env-only ] && { ENV_ONLY=1; shift; }
WORK=$(realpath -m "${1:-.cache/official}")
TAR=${OFFICIAL_TAR:-$REPO/../shared/official/official-d0013db.tar.gz}
FRAMES=${FRAMES:-20}
DEVICE=${DEVICE:-cpu}
SUBMISSIONS=${SUBMISSIONS:-"no_compress baseline_fast"}
PROV="$REPO/.venv/bin/prov"
export PROV_STORE="$WORK/store"
say() { echo "official: $*" >&2; }
since() { "$REPO/.venv/bin/python" -c "import sys, time; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$1"; }

[ -f "$TAR" ] || { echo "official: $TAR: the official tree's tarball is not there (set OFFICIAL_TAR)" >&2; exit 2; }
[ -n "$ENV_ONLY" ] || command -v ffmpeg >/dev/null || {
  echo "official: ffmpeg is needed by the submissions' compress.sh (apt-get install ffmpeg)" >&2; exit 3; }
mkdir -p "$WORK"
rm -rf "$WORK/upstream" "$WORK/runs"
mkdir -p "$WORK/upstream" "$WORK/runs"
tar -xzf "$TAR" -C "$WORK/upstream"
UP="$WORK/upstream"

if [ ! -f "$WORK/env/prov-env.json" ]; then
  rm -rf "$WORK/env"
  group=cpu; [ "$DEVICE" = cuda ] && group=cu126
  say "building the upstream's own Python (group $group)"
  t0=$(date +%s.%N)
  "$PROV" upstream env "$UP" --out "$WORK/env" --group "$group"
  say "env built in $(since "$t0") s"
fi
PY="$WORK/env/bin/python"
[ -z "$ENV_ONLY" ] || exit 0

say "stand-ins for the LFS files ($FRAMES frames)"
"$PY" scripts/official_standins.py "$UP" --frames "$FRAMES"

"$PROV" key generate --out "$WORK/keys" >/dev/null 2>&1 || true
"$PROV" trust init --release-key "$WORK/keys/key.pub.pem" --expires 2099-01-01T00:00:00Z --out "$WORK/trust.json" >/dev/null

for name in $SUBMISSIONS; do
  run="$WORK/runs/$name"
  mkdir -p "$run"
  # the runtime as the repository ships it: its files, nothing compress.sh leaves behind
  cp -a "$UP/submissions/$name" "$run/runtime"
  if [ "$name" = fp4_mask_gen ]; then  # a learned codec: its own compress.py, training cut to one epoch
    say "$name: its compress.py, shortened to one epoch (scripts/official_learned.py), then zip -0 as its compress.sh"
    (cd "$UP" && PATH="$WORK/env/bin:$PATH" "$PY" "$REPO/scripts/official_learned.py" "$UP" >"$run/compress.log" 2>&1 &&
     cd "submissions/$name/archive" && zip -q -0 ../archive.zip model.pt.br mask.obu.br pose.bin.br)
  else
    say "$name: compress.sh from the stand-in clip"
    (cd "$UP" && PATH="$WORK/env/bin:$PATH" bash "submissions/$name/compress.sh" >"$run/compress.log" 2>&1)
  fi
  cp "$UP/submissions/$name/archive.zip" "$run/archive.zip"
  say "$name: the official evaluate.sh, outside the sandbox"
  direct="$UP/submissions/$name"
  rm -rf "$direct/archive" "$direct/inflated"
  # the sandbox's thread counts: with others, SegNet's argmax can flip (a different summation order)
  t0=$(date +%s.%N)
  (cd "$UP" && OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PATH="$WORK/env/bin:$PATH" \
     bash evaluate.sh --submission-dir "$direct" --device "$DEVICE" >"$run/evaluate.log" 2>&1)
  t_direct=$(since "$t0")
  cp "$direct/report.txt" "$run/report.txt"
  "$PROV" adjudicate "$run/report.txt" --archive "$run/archive.zip" --runtime "$run/runtime" --json \
    | "$PY" -c "import json,sys; print(json.dumps(json.load(sys.stdin)['record']))" >"$run/direct-record.json"
  say "$name: prov replay, the official evaluator in the sandbox, compared with evaluate.sh's report"
  t0=$(date +%s.%N)
  "$PROV" replay --archive "$run/archive.zip" --runtime "$run/runtime" --upstream "$UP" --python "$WORK/env" \
    --name "$name" --device "$DEVICE" --compare "$run/direct-record.json" --json >"$run/replay.json" || true
  t_replay=$(since "$t0")
  "$PY" - "$run" "$t_direct" "$t_replay" <<'PY'
import json, sys
run, t_direct, t_replay = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
out = json.load(open(f"{run}/replay.json"))
rec = out["record"]
open(f"{run}/record.sha256", "w").write(out["digest"]["sha256"])
pin = next(c for c in out["checks"] if c["name"] == "evaluator_pinned")
print(f"  score {rec['result']['canonical_score']!r} grade {rec['grade']}; {out['compare']['verdict']} against "
      f"evaluate.sh ({', '.join(d['field'] for d in out['compare']['fields'] if d['same'])} agree); "
      f"replay {t_replay:.1f} s, evaluate.sh {t_direct:.1f} s\n  evaluator_pinned: {pin['detail']}", file=sys.stderr)
PY
  "$PROV" cat "$(cat "$run/record.sha256")" >"$run/record.json"
  "$PROV" release create --record "$(cat "$run/record.sha256")" --archive "$run/archive.zip" --runtime "$run/runtime" \
    --name "$name" --key "$WORK/keys/key.pem" --out "$run/manifest.json" >/dev/null
  "$PROV" verify "$run/manifest.json" --trust "$WORK/trust.json" --archive "$run/archive.zip" \
    --runtime "$run/runtime" --record "$run/record.json" >"$run/verify.txt" || true
  # a judge's verify: everything holds but the score, which a stand-in run never bears
  grep -E "^✗" "$run/verify.txt" | sed "s/^/  verify: /" >&2
  tail -1 "$run/verify.txt" | sed "s/^/  verify: /" >&2
done
say "done: $WORK/runs/<name>/ holds archive.zip, runtime/, record.json, manifest.json, verify.txt, report.txt (evaluate.sh), replay.json"
