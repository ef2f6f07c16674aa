#!/usr/bin/env bash
# Checks a built Debian package (default: the newest target/debian/*.deb)
# on this machine: lintian with no errors, `dpkg -i`, the installed binary's
# `check` on the installed default configuration, `systemd-analyze verify`
# on the installed units, then `dpkg --purge`, which must leave none of the
# package's files, its configuration or its state behind. Needs root (or
# sudo) for dpkg.
set -euo pipefail
cd "$(dirname "$0")/.."
deb="${1:-$(ls -t "${CARGO_TARGET_DIR:-target}"/debian/mailgate_*.deb | head -1)}"
if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
echo "== lintian $deb"
# Errors fail; warnings and notes are printed for the record.
lintian --fail-on error --tag-display-limit 0 "$deb"

echo "== contents"
dpkg-deb --contents "$deb" | awk '{print $1, $6}'
for f in ./usr/bin/mailgate ./etc/mailgate/mailgate.toml ./usr/share/man/man1/mailgate.1.gz \
    ./usr/share/bash-completion/completions/mailgate ./usr/share/zsh/vendor-completions/_mailgate \
    ./usr/share/fish/vendor_completions.d/mailgate.fish ./usr/lib/systemd/user/mailgate.service \
    ./usr/share/doc/mailgate/examples/gateway-box.toml; do
  dpkg-deb --contents "$deb" | awk '{print $6}' | grep -qx "$f" || { echo "missing from the package: $f"; exit 1; }
done
dpkg-deb --contents "$deb" | awk '{print $6}' | grep -Eq '^\./(usr/)?lib/systemd/system/mailgate\.service$' \
  || { echo "missing from the package: the system unit"; exit 1; }
dpkg-deb --info "$deb" conffiles | grep -qx /etc/mailgate/mailgate.toml \
  || { echo "/etc/mailgate/mailgate.toml is not a conffile"; exit 1; }

echo "== dpkg -i"
if dpkg -s mailgate >/dev/null 2>&1; then $SUDO dpkg --purge mailgate; fi
$SUDO dpkg -i "$deb"
files="$(dpkg -L mailgate)"
/usr/bin/mailgate --version
/usr/bin/mailgate -c /etc/mailgate/mailgate.toml check
unit="$(echo "$files" | grep -E '^(/usr)?/lib/systemd/system/mailgate\.service$')"
systemd-analyze verify "$unit"
systemd-analyze verify /usr/lib/systemd/user/mailgate.service
man -w mailgate >/dev/null

echo "== dpkg --purge"
$SUDO dpkg --purge mailgate
left=()
while IFS= read -r f; do
  # Directories the package shares with others (/usr/bin, ...) stay.
  if [ -e "$f" ] && [ ! -d "$f" ]; then left+=("$f"); fi
done <<< "$files"
for d in /etc/mailgate /var/lib/mailgate /var/lib/private/mailgate /usr/share/doc/mailgate; do
  [ -e "$d" ] && left+=("$d")
done
if [ ${#left[@]} -gt 0 ]; then
  echo "left behind after purge: ${left[*]}"
  exit 1
fi
echo "package verified"
