#!/bin/sh
# Install Debian's redis-server if we are allowed to; otherwise say how.
set -e
if [ "$(id -u)" = 0 ]; then SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"
else
  echo "redis-server is not installed and this user cannot install packages." >&2
  echo "Install it with: sudo apt-get install -y redis-server   (or set REDIS_URL to a running Redis)" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "redis-server is missing and apt-get is not available: install Redis 7 with your package manager." >&2
  exit 1
fi
echo "Installing redis-server with apt-get ..."
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
