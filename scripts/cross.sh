#!/usr/bin/env bash
# Builds the no_std crates (`bedrock`, `bedrock-embedded`) for three Cortex-M targets: M0/M0+
# (thumbv6m, no atomics CAS), M4F/M7F (thumbv7em, hard float) and M3 (thumbv7m). Uses the rustup
# target when it is installed, else Debian's rustc building `core` from source; see
# scripts/embedded-toolchain.sh. Run `bash scripts/deps.sh` first on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/embedded-toolchain.sh

for target in thumbv6m-none-eabi thumbv7em-none-eabihf thumbv7m-none-eabi; do
  echo "cross: $target via $(embedded_route "$target")"
  embedded_cargo "$target" build --locked -p bedrock -p bedrock-embedded --target-dir target/cross
done
echo "cross: bedrock and bedrock-embedded build for every target"
