#!/usr/bin/env bash
# Example runtime tree: inflate.sh ARCHIVE_DIR INFLATED_DIR VIDEO_NAMES_FILE
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$2"
while read -r name; do
  [ -n "$name" ] || continue
  cp "$1/${name%.*}.raw" "$2/${name%.*}.raw"
done < "$3"
