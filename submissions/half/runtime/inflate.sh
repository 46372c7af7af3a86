#!/usr/bin/env bash
# inflate.sh ARCHIVE_DIR INFLATED_DIR VIDEO_NAMES_FILE
# Runs as a module from the upstream root, as many real submissions do.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
exec python -m "submissions.$(basename "$here").inflate" "$@"
