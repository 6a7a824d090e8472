#!/bin/sh
# Build the hashicorp/yamux reference peer (yamux_peer/main.go) offline against
# Debian's packaged sources:
#   apt-get install golang-go golang-github-hashicorp-yamux-dev
# Usage: tests/interop/build.sh OUTPUT_PATH
set -eu

if [ "$#" -ne 1 ]; then
    echo "usage: $0 OUTPUT_PATH" >&2
    exit 2
fi
out=$1

if ! command -v go >/dev/null 2>&1; then
    echo "build.sh: 'go' not found; install golang-go (apt-get install golang-go golang-github-hashicorp-yamux-dev)" >&2
    exit 1
fi

gopath=/usr/share/gocode
if [ ! -f "$gopath/src/github.com/hashicorp/yamux/session.go" ]; then
    echo "build.sh: hashicorp/yamux sources not found under $gopath; install golang-github-hashicorp-yamux-dev" >&2
    exit 1
fi

# Resolve the output path before changing directory.
case $out in
    /*) ;;
    *) out=$(pwd)/$out ;;
esac

# GOPATH mode resolves github.com/hashicorp/yamux from Debian's gocode tree,
# so nothing is downloaded; GOPROXY=off makes sure of that. GOFLAGS is cleared
# so that an inherited module flag cannot interfere.
export GOPATH="$gopath" GO111MODULE=off GOPROXY=off GOFLAGS=
# go needs a build cache; without a usable HOME it cannot find a default one.
if [ -z "${GOCACHE:-}" ] && [ -z "${XDG_CACHE_HOME:-}" ] && [ -z "${HOME:-}" ]; then
    export GOCACHE="${TMPDIR:-/tmp}/ytun-interop-gocache"
fi

cd "$(dirname "$0")/yamux_peer"
exec go build -o "$out" .
