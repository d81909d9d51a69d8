#!/usr/bin/env bash
# Open HTML pages (the report, the false-negative explorer) in headless Chromium, save a
# screenshot of each, and fail on any console message (our pages have no scripts, so any console
# output is an error: a blocked resource, a parse problem, a script injected by mistake).
#
#   scripts/screenshot_report.sh PAGE.html OUT.png [WIDTHxHEIGHT] [PAGE2.html OUT2.png [WxH]] ...
#
# Needs Debian's chromium (apt-get install -y chromium); exits 77 (skip) when it is absent.
set -euo pipefail

browser="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}"
if [[ -z "$browser" ]]; then
  echo "screenshot_report: chromium not found (apt-get install -y chromium)" >&2
  exit 77
fi
if [[ $# -lt 2 ]]; then
  echo "usage: $0 PAGE.html OUT.png [WIDTHxHEIGHT] [PAGE.html OUT.png [WxH]] ..." >&2
  exit 2
fi

status=0
while [[ $# -ge 2 ]]; do
  page="$1" out="$2"
  shift 2
  size="1200,1600"
  if [[ $# -ge 1 && "$1" =~ ^[0-9]+x[0-9]+$ ]]; then
    size="${1/x/,}"
    shift
  fi
  if [[ ! -f "$page" ]]; then
    echo "screenshot_report: no such page: $page" >&2
    exit 2
  fi
  url="file://$(realpath "$page")"
  mkdir -p "$(dirname "$out")"
  rm -f "$out"
  log="$(mktemp)"
  profile="$(mktemp -d)"
  # --no-sandbox: CI containers run as root; a throwaway profile keeps runs independent.
  timeout 120 "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --user-data-dir="$profile" --enable-logging=stderr --v=0 \
    --window-size="$size" --screenshot="$(realpath -m "$out")" "$url" >"$log" 2>&1 || true
  rm -rf "$profile"
  if grep -E "CONSOLE|Uncaught|Failed to load resource" "$log" >&2; then
    echo "screenshot_report: console errors on $page (above)" >&2
    status=1
  fi
  if [[ ! -s "$out" ]]; then
    echo "screenshot_report: no screenshot written for $page; chromium said:" >&2
    tail -n 20 "$log" >&2
    status=1
  else
    echo "screenshot: $out ($page)"
  fi
  rm -f "$log"
done
exit "$status"
