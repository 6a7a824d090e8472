#!/usr/bin/env bash
# Install the load generators the end-to-end benchmark drives (Debian/Ubuntu, as root):
# wrk (the default), hey (the second) and curl (bulk transfers). matplotlib is optional
# (the chart): `.venv/bin/pip install -e '.[bench]'`.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends wrk hey curl ca-certificates >/dev/null
wrk --version 2>&1 | head -1 || true
command -v hey
curl --version | head -1
