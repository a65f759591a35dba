#!/usr/bin/env bash
# Make sure Debian's chromium is at /usr/bin/chromium for the web UI's browser tests (playwright
# drives it; it never downloads a browser of its own). Installs it with apt when missing.
# Never fails the build by itself: the tests decide (REQUIRE_BROWSER=1 turns a missing browser
# into failures; without it the browser tests skip).
browser=${REGISTRY_TEST_CHROMIUM:-/usr/bin/chromium}
if [ -x "$browser" ]; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing chromium with apt for the browser tests" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
    || true
fi
if [ -x "$browser" ]; then
  exit 0
fi
echo "chromium is not at $browser and could not be installed; browser tests will skip (or fail with REQUIRE_BROWSER=1)" >&2
exit 0
