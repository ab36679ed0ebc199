#!/bin/sh
# Install Debian packages (e.g. redis-server, chromium) if we are allowed to; otherwise say how.
# Usage: sh scripts/install_apt.sh PACKAGE...
set -e
if [ "$(id -u)" = 0 ]; then SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"
else
  echo "$* not installed and this user cannot install packages." >&2
  echo "Install with: sudo apt-get install -y $*" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "$* missing and apt-get is not available: install with your package manager." >&2
  exit 1
fi
echo "Installing $* with apt-get ..."
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
