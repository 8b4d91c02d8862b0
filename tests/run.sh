#!/usr/bin/env bash
# Everything the test suite needs, on a fresh machine, then the suite itself.
# Usage: bash tests/run.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet -r tests/requirements.txt

# The browser tests drive Debian's Chromium through Playwright; Playwright's own
# browser download is never used (it cannot be fetched on our machines).
# g++ builds our attention operation (janus_ov/attention.py; tests/test_attention.py and the
# decode_attention benchmark's test need it).
PACKAGES=""
command -v chromium >/dev/null 2>&1 || PACKAGES="$PACKAGES chromium"
command -v g++ >/dev/null 2>&1 || PACKAGES="$PACKAGES g++"
if [ -n "$PACKAGES" ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $PACKAGES >/dev/null
fi

# No test may reach the Hub: everything runs on tiny models the suite builds itself.
export HF_HUB_DISABLE_TELEMETRY=1
# Our machines and CI may run in the C locale; the suite itself reads and writes UTF-8 explicitly,
# and this keeps the tools it runs (pip, subprocesses) on UTF-8 as well.
export PYTHONIOENCODING=utf-8
exec python3 -m pytest tests -ra --timeout=900 "$@"
