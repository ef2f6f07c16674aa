#!/usr/bin/env bash
# Builds every fuzz target with libFuzzer coverage instrumentation on the
# stable toolchain (no sanitizer: that needs nightly) and runs each for a
# bounded time. Usage: fuzz/smoke.sh [SECONDS_PER_TARGET]
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-10}"
target="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares"
# An explicit --target keeps RUSTFLAGS away from build scripts.
cargo build --release --target-dir target/sancov --target "$target"
bins=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^mailgate-fuzz$')
status=0
for t in $bins; do
  corpus="corpus/$t"
  mkdir -p "$corpus" artifacts
  echo "fuzzing $t for ${secs}s"
  log="target/$t.log"
  case "$t" in
    imap_*) dict=dict/imap.dict ;;
    smtp_*) dict=dict/smtp.dict ;;
    pop3_*) dict=dict/pop3.dict ;;
    *) dict=dict/all.dict ;;
  esac
  # The committed seeds are read too; new finds go to corpus/ (not committed).
  if "target/sancov/$target/release/$t" "$corpus" "seeds/$t" -dict="$dict" \
      -max_total_time="$secs" -max_len=4096 \
      -artifact_prefix="artifacts/$t-" >"$log" 2>&1; then
    grep -E 'DONE' "$log" || true
  else
    echo "FAILED: $t crashed; the input is in fuzz/artifacts/"; tail -30 "$log"; status=1
  fi
done
[ "$status" = 0 ] && echo "fuzz smoke: every target ran without a crash"
exit "$status"
