#!/usr/bin/env bash
# The test command: installs what is missing, then runs every test of the workspace
# (unit, property, crash-point enumeration, simulation and real-process tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo test --workspace --release --locked -- --show-output
