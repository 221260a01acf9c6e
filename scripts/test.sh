#!/usr/bin/env bash
# Runs every test: unit tests, the fetch/CLI tests against a real HTTPS
# origin on loopback, and the real-mount tests (they need root or a user
# allowed to mount FUSE, /dev/fuse and fusermount3; without them they fail
# and say what is missing, they never skip).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh --test
cargo test --all-targets --no-fail-fast "$@"
