#!/usr/bin/env bash
# inflate.sh ARCHIVE_DIR INFLATED_DIR VIDEO_NAMES_FILE
set -euo pipefail
exec python "$(dirname "$0")/inflate.py" "$@" 2 nearest
