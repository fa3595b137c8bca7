#!/bin/sh
# Install what the test suite needs on a fresh machine, then check and run it.
#   - Debian's chromium and chromium-driver: a real browser for the upload page's test
#     (Selenium drives it);
#   - Debian's opentracker, aria2 and transmission-daemon: a real tracker, and real
#     clients other than libtorrent, for the interop tests (apt-get, when missing);
#     iproute2's 'ip' for the network namespaces some of them run in (as root);
#   - the package with its 'test' and 'gdrive' extras: pytest, xdist, hypothesis, the
#     libtorrent wheel, import-linter, mypy, Sphinx, and Google's API client;
#   - owmeta-core 0.13.5 for the loader's tests, then wrapt>=1.14 in a second step: its
#     pinned wrapt 1.11 does not import on Python 3.11, and pip's resolver refuses the
#     two in one command (docs/owmeta.md says the same to users);
#   - then: imports go downward only (lint-imports), types check (mypy), the tests.
set -eu
cd "$(dirname "$0")/.."
if ! command -v opentracker >/dev/null 2>&1 || ! command -v aria2c >/dev/null 2>&1 \
        || [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ] \
        || ! command -v transmission-daemon >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq opentracker aria2 chromium chromium-driver \
        transmission-daemon iproute2
fi
python -m pip install -q '.[test,gdrive]'
python -m pip install -q 'owmeta-core==0.13.5'
python -m pip install -q 'wrapt>=1.14'
lint-imports --no-cache
python -m mypy
exec python -m pytest -n 2 "$@"
