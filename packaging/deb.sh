#!/usr/bin/env bash
# Builds the Debian package: the release binary, then the man page and
# completions generated from it, then `cargo deb --no-build`. Prints the
# package's path on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null 2>&1 || cargo install --locked cargo-deb
cargo build --release --locked -p mailgate --bin mailgate
target="${CARGO_TARGET_DIR:-target}"
out="$target/release/packaging"
mkdir -p "$out"
bin="$target/release/mailgate"
"$bin" man | gzip -9n > "$out/mailgate.1.gz"
"$bin" completions bash > "$out/mailgate.bash"
"$bin" completions zsh > "$out/_mailgate"
"$bin" completions fish > "$out/mailgate.fish"
cargo deb -p mailgate --no-build --no-strip --output "$target/debian/" | tail -1
