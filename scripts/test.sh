#!/usr/bin/env bash
# The test command: installs what is missing, then runs every test of the workspace
# (unit, property, crash-point enumeration, simulation and real-process tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
# Unit, integration and process tests, showing the figures the simulation tests print.
cargo test --workspace --release --locked --lib --bins --tests -- --show-output
# Doc tests (a compile_fail test's expected compiler error is not worth showing).
cargo test --workspace --release --locked --doc
