#!/usr/bin/env bash
# Installs what the browser test (tests/tests/browser.rs) needs: Debian's Chromium, Node.js + npm, and the npm
# packages locked in tests/browser (playwright-core, which drives the system Chromium; it downloads no browser).
# Idempotent: installs only what is missing. Uses only the Debian and npm registries.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$(id -u)" = 0 ]; then SUDO=(); else SUDO=(sudo); fi

apt_packages=()
command -v chromium >/dev/null 2>&1 || apt_packages+=(chromium)
command -v node >/dev/null 2>&1 || apt_packages+=(nodejs)
command -v npm >/dev/null 2>&1 || apt_packages+=(npm)
if [ ${#apt_packages[@]} -gt 0 ]; then
    echo "browser-setup: installing ${apt_packages[*]}"
    "${SUDO[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${apt_packages[@]}"
fi

locked=$(cd tests/browser && node -p "require('./package-lock.json').packages['node_modules/playwright-core'].version")
installed=$(cd tests/browser && node -p "require('./node_modules/playwright-core/package.json').version" 2>/dev/null || true)
if [ "$locked" != "$installed" ]; then
    echo "browser-setup: npm ci in tests/browser"
    (cd tests/browser && npm ci --no-audit --no-fund --ignore-scripts)
fi

echo "browser-setup: $(chromium --version 2>/dev/null | tail -n 1), node $(node --version), playwright-core $(node -p "require('./tests/browser/node_modules/playwright-core/package.json').version")"
