#!/usr/bin/env bash
# Installs what bedrock's builds and tests need and is missing: Debian packages for the
# firmware (qemu-system-arm, lld, and Debian's rustc with standard-library sources for
# -Zbuild-std), and the rustup components clippy and rustfmt when rustup is present.
set -euo pipefail

need=()
command -v qemu-system-arm >/dev/null 2>&1 || need+=(qemu-system-arm)
command -v ld.lld >/dev/null 2>&1 || need+=(lld)
# scripts/firmware.sh reads section sizes with binutils' size, and bounds qemu with timeout.
command -v size >/dev/null 2>&1 || need+=(binutils)
command -v timeout >/dev/null 2>&1 || need+=(coreutils)
for target in thumbv6m-none-eabi thumbv7em-none-eabihf thumbv7m-none-eabi; do
  if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    # No rustup target for this Cortex-M: build core from source with Debian's toolchain.
    if [ ! -x /usr/bin/rustc ] || [ ! -x /usr/bin/cargo ] ||
      [ ! -d /usr/lib/rustlib/src/rust/library/core ]; then
      need+=(rustc-web cargo-web rust-web-src)
    fi
    break
  fi
done
if [ ${#need[@]} -gt 0 ]; then
  echo "deps: installing ${need[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi
if command -v rustup >/dev/null 2>&1; then
  for component in clippy rustfmt; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
  done
fi
