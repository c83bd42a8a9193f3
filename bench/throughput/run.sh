#!/usr/bin/env bash
# Entry point: creates the harness and peer venvs under bench/.venv-peers/ on first run.
#   bench/throughput/run.sh [--peers shoal,celery,...] [--runs 3] [--quick] [--out FILE]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python3}" "$here/run.py" "$@"
