#!/usr/bin/env bash
# Installs what the Cortex-M tests need (Debian/Ubuntu): the arm-none-eabi cross compiler, newlib for it
# and QEMU's system emulator for Arm. Quiet when they are already there; when they cannot be installed
# here (no apt-get, not root and no passwordless sudo) it says so and exits 0: the tests then skip.
set -euo pipefail

PACKAGES="gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"

have_newlib() {
    local specs
    specs=$(arm-none-eabi-gcc -print-file-name=rdimon.specs 2>/dev/null) || return 1
    [ -f "$specs" ]
}

if command -v arm-none-eabi-gcc >/dev/null 2>&1 && command -v qemu-system-arm >/dev/null 2>&1 && have_newlib; then
    exit 0
fi

skip() {
    echo "install-arm-tools: $1; skipping (the Cortex-M tests will be skipped)." >&2
    echo "install-arm-tools: to install them: apt-get install $PACKAGES" >&2
    exit 0
}

command -v apt-get >/dev/null 2>&1 || skip "arm-none-eabi-gcc, newlib or qemu-system-arm is missing and there is no apt-get"
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    skip "arm-none-eabi-gcc, newlib or qemu-system-arm is missing and installing needs root (no passwordless sudo)"
fi

echo "install-arm-tools: installing $PACKAGES" >&2
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086  # $SUDO and $PACKAGES are word lists
if ! $SUDO apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null; then
    $SUDO apt-get update -qq >/dev/null || skip "apt-get update failed"
    $SUDO apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null || skip "apt-get install failed"
fi
echo "install-arm-tools: done ($(arm-none-eabi-gcc --version | head -n 1); $(qemu-system-arm --version | head -n 1))" >&2
