#!/usr/bin/env bash
# Install what the end-to-end benchmark drives (Debian/Ubuntu, as root): wrk (the default
# load generator), hey (the second), curl (bulk transfers), and the programs of the built-in
# peers (--peers): openssh-server and openssh-client (ssh -R), nginx (one proxy hop).
# The daemons are only installed, never enabled here: the harness starts its own throw-away
# instances on loopback. matplotlib (the chart) and trustme (ytun-tls's certificate) are
# Python extras: `.venv/bin/pip install -e '.[bench]'`.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
$sudo apt-get update -qq
# policy-rc.d keeps Debian's maintainer scripts from starting sshd and nginx system-wide.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    trap '$sudo rm -f "$policy"' EXIT
fi
$sudo apt-get install -y -qq --no-install-recommends \
    wrk hey curl ca-certificates openssh-server openssh-client nginx >/dev/null
wrk --version 2>&1 | head -1 || true
command -v hey
curl --version | head -1
ssh -V
PATH="$PATH:/usr/sbin" nginx -v
