#!/usr/bin/env bash
# System packages zhtune's reports need, installed only when missing (safe to run again):
#   - a CJK font, so Chinese chart labels render as glyphs and not as empty boxes
#     (fonts-wqy-microhei: 1.6 MB download, the smallest Debian CJK font; fonts-noto-cjk is 57 MB.
#      Any CJK font already on the system, Noto, WenQuanYi or other, is used as is)
#   - chromium, to check in a real headless browser that report.html renders
# Runs as root in CI; elsewhere it uses sudo when something is missing.
set -euo pipefail

missing=()
zh_fonts=$(fc-list :lang=zh family 2>/dev/null || true)
if [ -z "$zh_fonts" ]; then
  missing+=(fonts-wqy-microhei fontconfig)
fi
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
   && ! command -v google-chrome >/dev/null 2>&1; then
  missing+=(chromium)
fi

if [ ${#missing[@]} -eq 0 ]; then
  echo "install_system_deps.sh: CJK font and chromium already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install_system_deps.sh: not root and no sudo; install these yourself: ${missing[*]}" >&2
    exit 1
  fi
fi

echo "install_system_deps.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
# No matplotlib font cache to clear: zhtune.analysis.plots registers CJK font files it finds on disk.
echo "install_system_deps.sh: done"
