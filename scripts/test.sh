#!/usr/bin/env bash
# The project's test command (the README's second command): formatting, lints, then every test.
# As root with a loop device, the fscrypt suite also checks itself against the live kernel;
# with CI=true that check is required.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --release
