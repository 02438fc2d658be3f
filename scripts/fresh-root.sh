#!/usr/bin/env bash
# Runs commands in this project on a FRESH Debian 12 machine, as a new user would: a debootstrap'ed bookworm
# root (variant minbase, plus git and ca-certificates, nothing else) entered with chroot as root. CI (.ci/run)
# runs the README's two commands this way, so a missing install step fails CI instead of a user.
#
#   usage (as root, or with sudo): bash scripts/fresh-root.sh COMMAND...
#   e.g.  bash scripts/fresh-root.sh 'bash scripts/main-job.sh' 'bash scripts/test.sh'
#
# The commands run one after the other in ONE root, in /src/<project> (what a user has after `git clone`:
# the tracked and untracked-but-not-ignored files plus .git; no host build folder comes along), with the
# project's ../shared folder, when there is one, copied to /src/shared as CI has it. Each command's output
# is streamed (and kept in FRESH_LOG, default <root's parent>/run.log) and its wall time printed; the first
# failing command stops the run and fails the script (exit 1).
#
# The pristine root is cached as a tarball between runs (FRESH_CACHE, default /var/cache/fresh-bookworm.tar,
# the same layout as ../shared/tools/fresh-machine.sh; delete it to rebuild: debootstrap, ~1 min). The apt
# mirror is the host's Debian one, read from /etc/apt at run time (or FRESH_MIRROR), and the host's apt
# settings (proxy, snapshot) are copied in. The root (FRESH_ROOT, default /tmp/zerolora-fresh/root) is kept
# after a failure for inspection (and after success with FRESH_KEEP=1); the next run replaces it.
set -euo pipefail
[ $# -ge 1 ] || { sed -n 2,19p "$0"; exit 2; }
if [ "$(id -u)" -ne 0 ]; then exec sudo -E bash "$0" "$@"; fi
PROJECT=$(cd "$(dirname "$0")/.." && pwd); NAME=$(basename "$PROJECT")
R=${FRESH_ROOT:-/tmp/zerolora-fresh/root}; CACHE=${FRESH_CACHE:-/var/cache/fresh-bookworm.tar}
LOG=${FRESH_LOG:-$(dirname "$R")/run.log}
mkdir -p "$(dirname "$R")" "$(dirname "$CACHE")"

mounts() { findmnt -rn -o TARGET | grep -E "^$R(/|\$)" || true; }
unmount_all() { mounts | sort -r | while read -r m; do umount "$m" || umount -l "$m"; done; }  # deepest first
pid=
stop() { [ -z "$pid" ] || { kill -TERM -- "-$pid" 2>/dev/null; wait "$pid" 2>/dev/null; }; echo "fresh root: stopped"; exit 130; }
trap unmount_all EXIT; trap stop INT TERM
die() { tail -n 30 "$LOG"; echo "fresh root: FAIL: $1"; exit 1; }

mirror() {  # the host's first non-security Debian mirror (one-line .list or deb822 .sources)
  { grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
      | awk '{for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break }}'
    awk '/^URIs:/ { print $2 }' /etc/apt/sources.list.d/*.sources 2>/dev/null; } | grep -v security | head -n1
}
host_apt_into_root() {  # the host's apt sources + network settings (proxy, snapshot Valid-Until), DNS, and
  # /etc/hosts: debootstrap writes none, and without it every MPI_Init waits ~5 s on a DNS lookup of the host name
  rm -f "$R/etc/apt/sources.list" "$R"/etc/apt/sources.list.d/*
  [ ! -f /etc/apt/sources.list ] || cp /etc/apt/sources.list "$R/etc/apt/"
  find /etc/apt/sources.list.d -maxdepth 1 \( -name '*.list' -o -name '*.sources' \) -exec cp -t "$R/etc/apt/sources.list.d/" {} +
  { grep -ls 'Acquire::' /etc/apt/apt.conf.d/* || true; } | xargs -r cp -t "$R/etc/apt/apt.conf.d/"
  cp -L /etc/resolv.conf "$R/etc/resolv.conf"; cp -L /etc/hosts "$R/etc/hosts"
}
mount_all() {  # rslave: what is mounted under the root's /dev never propagates back to the host's /dev
  mount -t proc proc "$R/proc"; mount -t sysfs sys "$R/sys"
  mount --bind /dev "$R/dev"; mount --make-rslave "$R/dev"
  mount --bind /dev/pts "$R/dev/pts"; mount -t tmpfs -o size=50% shm "$R/dev/shm"
}
in_root() {  # a command in the root, as its own process group (so that stop() ends all of it), output streamed
  setsid chroot "$R" /usr/bin/env -i HOME=/root TERM=dumb DEBIAN_FRONTEND=noninteractive \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin bash -c "$1" > >(tee -a "$LOG") 2>&1 & pid=$!
  local rc=0; wait "$pid" || rc=$?; pid=; return "$rc"
}

# 1. a pristine root: from the cached tarball, or debootstrap (then cache it)
unmount_all
[ -z "$(mounts)" ] || { echo "still mounted under $R; not removing it" >&2; exit 1; }
rm -rf --one-file-system "$R"; mkdir -p "$R"; : > "$LOG"
t0=$SECONDS
if [ -f "$CACHE" ]; then
  tar -C "$R" --numeric-owner -xf "$CACHE"
  echo "fresh root: Debian 12 from $CACHE ($((SECONDS - t0)) s)"
else
  command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap; } >> "$LOG" 2>&1
  M=${FRESH_MIRROR:-$(mirror)}; [ -n "$M" ] || { echo "no Debian mirror found in /etc/apt" >&2; exit 1; }
  debootstrap --variant=minbase bookworm "$R" "$M" >> "$LOG" 2>&1 || die debootstrap
  host_apt_into_root; mount_all
  in_root 'apt-get update -qq && apt-get install -y -qq --no-install-recommends git ca-certificates && apt-get clean' \
    > /dev/null || die "installing git ca-certificates"
  unmount_all
  # the cache holds no apt lists, logs or mirror name: a fresh machine has not run apt-get update yet
  rm -rf "$R"/var/lib/apt/lists/* "$R"/var/log/apt/* "$R/var/log/bootstrap.log" "$R/etc/apt/sources.list" "$R"/etc/apt/sources.list.d/*
  tar -C "$R" --numeric-owner -cf "$CACHE.tmp.$$" . && mv "$CACHE.tmp.$$" "$CACHE"
  echo "fresh root: debootstrap bookworm + git + ca-certificates ($((SECONDS - t0)) s), cached in $CACHE"
fi

# 2. the project (+ ../shared) in /src, then the commands
host_apt_into_root; mount_all
mkdir -p "$R/src/$NAME"
if git -c safe.directory='*' -C "$PROJECT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$PROJECT" && { git -c safe.directory='*' ls-files -z -c -o --exclude-standard; printf '.git\0'; } \
     | tar --null --ignore-failed-read -T - -cf - 2>/dev/null) | tar -C "$R/src/$NAME" --no-same-owner -xf -
else
  cp -a "$PROJECT/." "$R/src/$NAME/"
fi
if [ -d "$PROJECT/../shared" ]; then
  cp -a "$PROJECT/../shared" "$R/src/shared" && chown -R 0:0 "$R/src/shared"
  echo "fresh root: /src/$NAME, /src/shared"
else
  echo "fresh root: /src/$NAME (no ../shared beside the project: the tests that need it skip)"
fi
rc=0
for cmd in "$@"; do
  echo "fresh root: running '$cmd' in /src/$NAME"
  t0=$SECONDS
  in_root "cd /src/$NAME && $cmd" || rc=$?
  echo "fresh root: '$cmd' $([ $rc -eq 0 ] && echo passed || echo "FAILED (exit $rc)") in $((SECONDS - t0)) s"
  [ $rc -eq 0 ] || break
done
unmount_all
if [ $rc -eq 0 ]; then
  [ "${FRESH_KEEP:-0}" = 1 ] || rm -rf --one-file-system "$R"
  echo "fresh root: PASS"
else
  echo "fresh root: FAIL (root kept at $R; log $LOG)"
fi
exit $(( rc != 0 ))
