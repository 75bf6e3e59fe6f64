#!/usr/bin/env bash
# Debian packages holding the offline corpora (see data/README.md for provenance and licences).
# Installs the missing ones when apt-get is available (as root, or with passwordless sudo);
# otherwise says what to install and carries on (the tiny profile needs none of them).
set -uo pipefail
want=(python3.11-doc bible-kjv bible-kjv-text fortunes wordnet-base)
missing=()
for p in "${want[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && { echo "corpora ok: ${want[*]}"; exit 0; }
if ! command -v apt-get >/dev/null; then
  echo "WARNING: install these Debian packages for the offline corpora: ${missing[*]}"; exit 0
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
export DEBIAN_FRONTEND=noninteractive
if $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null; then
  echo "corpora installed: ${missing[*]}"
else
  echo "WARNING: could not install ${missing[*]} (apt-get install ${missing[*]}); the offline profile needs them"
fi
