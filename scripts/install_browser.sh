#!/usr/bin/env bash
# Debian's Chromium, used headless by notebook 05 to render one exported feature page to PNG and,
# driven by Playwright (pip, no browser download), by the JupyterLab browser test and the main
# job's lab screenshots (helpers/report/jupyterlab.py). Without it those steps say so and are skipped.
set -uo pipefail
command -v chromium >/dev/null && { echo "chromium ok"; exit 0; }
if ! command -v apt-get >/dev/null; then
  echo "WARNING: install chromium to render feature pages (notebook 05)"; exit 0
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
export DEBIAN_FRONTEND=noninteractive
if $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null; then
  echo "chromium installed"
else
  echo "WARNING: could not install chromium (apt-get install chromium)"
fi
