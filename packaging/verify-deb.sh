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

echo "== a 0600 secret reaches the service's user as a systemd credential, and only so"
# The unit runs as a dynamic user, which cannot read root's 0600 files.
# systemd is not PID 1 here, so the service itself cannot be started: the
# credential is handed over as systemd does it (a directory of the
# service's user, the file 0400 in it, $CREDENTIALS_DIRECTORY), and the
# installed binary runs as another unprivileged user (nobody).
secret=/etc/mailgate/client_secret
dropin=/etc/systemd/system/mailgate.service.d
work="$(mktemp -d)"
chmod 0755 "$work"
printf 'verify-deb-secret\n' | $SUDO install -m 0600 /dev/stdin "$secret"
conf() {
  cat > "$work/mailgate.toml" <<EOF
[gateway]
state_dir = "$work/state"
[[listener]]
protocol = "imap"
address = "127.0.0.1:1143"
[provider.o]
preset = "office365"
client_id = "00000000-0000-0000-0000-000000000000"
tenant = "contoso.com"
client_secret_file = "$1"
[[account]]
user = "a@contoso.com"
provider = "o"
EOF
  chmod 0644 "$work/mailgate.toml"
}
as_service() { $SUDO setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
conf "$secret"
if as_service /usr/bin/mailgate -c "$work/mailgate.toml" check >"$work/out" 2>&1; then
  echo "the service's user read a 0600 secret directly"; cat "$work/out"; exit 1
fi
grep -q "Permission denied" "$work/out" || { cat "$work/out"; exit 1; }
creds="$work/credentials"
$SUDO install -d -m 0500 -o 65534 -g 65534 "$creds"
$SUDO install -m 0400 -o 65534 -g 65534 "$secret" "$creds/client_secret"
conf "credential:client_secret"
as_service env CREDENTIALS_DIRECTORY="$creds" /usr/bin/mailgate -c "$work/mailgate.toml" check >"$work/out" 2>&1 \
  || { echo "the credential was not read"; cat "$work/out"; exit 1; }
if grep -q "verify-deb-secret" "$work/out"; then echo "check printed the secret"; exit 1; fi
# The unit with the drop-in an administrator writes (systemctl edit).
$SUDO mkdir -p "$dropin"
printf '[Service]\nLoadCredential=client_secret:%s\n' "$secret" | $SUDO tee "$dropin/credentials.conf" >/dev/null
systemd-analyze verify "$unit"
$SUDO rm -rf "$dropin" "$secret" "$work"

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
