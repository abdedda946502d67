#!/usr/bin/env bash
# Builds the cargo-fuzz targets (libFuzzer needs nightly features: RUSTC_BOOTSTRAP=1 on stable).
# Running them is documented in fuzz/README.md; CI only checks that they build.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v cargo-fuzz >/dev/null 2>&1; then
  (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build --dev)
else
  # Without cargo-fuzz, build the same targets as plain binaries to keep them compiling.
  cargo build --manifest-path fuzz/Cargo.toml --locked
fi
