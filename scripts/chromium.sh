#!/usr/bin/env bash
# `make chromium`, a prerequisite of `make test` and `make reproduce`: headless Chromium opens the
# report pages (tests/test_report_browser.py, python -m common.browser). When no browser is found
# (the names common/browser.py looks for, or $CHROMIUM), Debian's `chromium` is installed if this
# user may (root, or sudo without a password). Otherwise this stops at once, before the virtual
# environment or any test, with the one command that fixes it.
set -euo pipefail

if [ -n "${CHROMIUM:-}" ]; then
    if command -v "$CHROMIUM" >/dev/null 2>&1; then exit 0; fi
    echo "error: \$CHROMIUM=$CHROMIUM is not an executable; unset it or point it at a Chromium/Chrome binary" >&2
    exit 1
fi
for name in chromium chromium-browser google-chrome google-chrome-stable; do     # common.browser.CANDIDATES
    if command -v "$name" >/dev/null 2>&1; then exit 0; fi
done

FIX="sudo apt-get install -y chromium   (or set CHROMIUM=/path/to/chromium)"
if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
    SUDO=(sudo -n)
else
    echo "error: headless Chromium is needed to open the report pages and this user cannot install it; run: $FIX" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: headless Chromium is needed to open the report pages and there is no apt-get here; install Chromium with this system's package manager, or set CHROMIUM=/path/to/chromium" >&2
    exit 1
fi
echo "Installing Debian's chromium (headless, for the report pages): apt-get install -y chromium"
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
command -v chromium >/dev/null 2>&1 || { echo "error: apt-get installed no chromium binary; run: $FIX" >&2; exit 1; }
