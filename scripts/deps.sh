#!/usr/bin/env bash
# deps.sh [--test]: installs what modelfs needs on Debian/Ubuntu when it is
# missing: fuse3 (fusermount3, mount.fuse3), attr (getfattr), openssl, python3
# and curl; with --test also strace, mkfs.xfs and mkfs.ext4 (the import tests'
# loop-mounted images), docker-registry and htpasswd (apache2-utils) for the
# registry tests, and the Python gguf reader and oras SDK the tests use.
set -euo pipefail
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v getfattr >/dev/null || need+=(attr)
command -v openssl >/dev/null || need+=(openssl)
command -v python3 >/dev/null || need+=(python3 python3-pip)
command -v curl >/dev/null || need+=(curl)
command -v umount >/dev/null || need+=(mount)
if [ "${1:-}" = "--test" ]; then
  command -v strace >/dev/null || need+=(strace)
  command -v mkfs.xfs >/dev/null || need+=(xfsprogs)
  command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
  [ -x /usr/bin/docker-registry ] || need+=(docker-registry)
  command -v htpasswd >/dev/null || need+=(apache2-utils)
fi
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ "${1:-}" = "--test" ] && ! python3 -c "import gguf, numpy" 2>/dev/null; then
  echo "installing the Python gguf reader (pip install gguf numpy)"
  python3 -m pip install -q gguf numpy 2>/dev/null \
    || python3 -m pip install -q --break-system-packages gguf numpy
fi
if [ "${1:-}" = "--test" ] && ! python3 -c "import oras.client" 2>/dev/null; then
  echo "installing the Python oras SDK (pip install oras)"
  python3 -m pip install -q oras 2>/dev/null \
    || python3 -m pip install -q --break-system-packages oras
fi
