#!/usr/bin/env bash
# System packages the tests need beyond the venv: Debian's chromium, for rendering the HTML report
# headless (tests/test_report.py). Installed only when missing; needs root (or sudo) and apt.
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "test-deps: chromium is missing and there is no apt-get; install Chromium and put it on PATH" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "test-deps: installing chromium (Debian package) for the report test" >&2
$SUDO apt-get install -y -q chromium >/dev/null || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium >/dev/null; }
