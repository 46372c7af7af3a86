#!/usr/bin/env bash
# Miniature evaluate.sh: the official arguments and steps.
#   evaluate.sh --submission-dir DIR --device cpu|cuda
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
SUB=""; DEVICE="cpu"
while [ $# -gt 0 ]; do
  case "$1" in
    --submission-dir) SUB="$2"; shift 2;;
    --device) DEVICE="$2"; shift 2;;
    *) echo "unknown argument $1" >&2; exit 2;;
  esac
done
[ -n "$SUB" ] || { echo "usage: evaluate.sh --submission-dir DIR --device cpu|cuda" >&2; exit 2; }
NAMES="$HERE/public_test_video_names.txt"
unzip -o "$SUB/archive.zip" -d "$SUB/archive"
bash "$SUB/inflate.sh" "$SUB/archive" "$SUB/inflated" "$NAMES"
while read -r name; do
  [ -n "$name" ] || continue
  [ -f "$SUB/inflated/${name%.*}.raw" ] || { echo "missing $SUB/inflated/${name%.*}.raw" >&2; exit 1; }
done < "$NAMES"
cd "$HERE"
python evaluate.py --submission-dir "$SUB" --uncompressed-dir "$HERE/videos" --report "$SUB/report.txt" \
  --video-names-file "$NAMES" --device "$DEVICE"
