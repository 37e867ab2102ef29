#!/usr/bin/env bash
# Compare mailroom's spam filter with its peers (bogofilter, SpamAssassin Bayes, rspamd, crm114)
# under TREC's immediate-feedback online protocol, on the same messages in the same order.
#
#   benches/peers/run.sh [--index FILE] [--limit N] [--peers a,b,c] [--out FILE.md]
#                        [--json FILE] [--peer-timeout SECONDS] [--min-learns N]
#                        [--no-install] [--self-test]
#
# Installs the peers' Debian packages when missing (as root, without starting their system
# services), then runs peers.py, which starts every server it needs on 127.0.0.1 or a unix
# socket inside a temporary directory and stops it at the end. See README.md here.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PEERS="bogofilter,spamassassin,rspamd,crm114,mailroom"
PEER_TIMEOUT=3600
INSTALL=1
ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --peers) PEERS="$2"; ARGS+=("$1" "$2"); shift 2 ;;
    --peers=*) PEERS="${1#*=}"; ARGS+=("$1"); shift ;;
    --peer-timeout) PEER_TIMEOUT="$2"; ARGS+=("$1" "$2"); shift 2 ;;
    --peer-timeout=*) PEER_TIMEOUT="${1#*=}"; ARGS+=("$1"); shift ;;
    --no-install) INSTALL=0; shift ;;
    --self-test) exec python3 "$HERE/peers.py" --self-test ;;
    -h|--help) sed -n '2,10p' "$0"; python3 "$HERE/peers.py" --help; exit 0 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done

WORK="$(mktemp -d /tmp/mr-peers-run.XXXXXX)"
export MR_PEERS_PIDFILE="$WORK/pids"
: > "$MR_PEERS_PIDFILE"
POLICY_RC_CREATED=0

cleanup() {
  # peers.py and the servers it started (redis-server, rspamd, the SpamAssassin helper) normally
  # stop by themselves; if the run was killed, stop those still alive, by their recorded ids only.
  local pid
  while read -r pid; do
    [[ -n "$pid" && -d "/proc/$pid" ]] || continue
    if grep -qaE 'peers\.py|rspamd|redis-server|sa_bayes' "/proc/$pid/cmdline" 2>/dev/null; then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    fi
  done < "$MR_PEERS_PIDFILE"
  if [[ "$POLICY_RC_CREATED" == 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# peer -> "command-to-check:debian-package ..."
needs() {
  case "$1" in
    bogofilter) echo "bogofilter:bogofilter" ;;
    spamassassin) echo "sa-learn:spamassassin" ;;
    rspamd|rspamd-stock) echo "rspamd:rspamd redis-server:redis-server" ;;
    crm114) echo "crm:crm114" ;;
    *) echo "" ;;
  esac
}

if [[ "$INSTALL" == 1 ]]; then
  missing=()
  IFS=',' read -ra plist <<< "$PEERS"
  for p in "${plist[@]}"; do
    for pair in $(needs "$p"); do
      cmd="${pair%%:*}"; pkg="${pair##*:}"
      command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    done
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    if [[ "$(id -u)" != 0 ]]; then
      echo "peers: missing ${missing[*]}; not root, so not installing (those peers will be 'not available')" >&2
    else
      echo "peers: installing ${missing[*]} from Debian" >&2
      # Keep the packages' postinst from starting system-wide daemons (rspamd, redis).
      if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=1
      fi
      if ! { timeout 600 apt-get update -qq &&
             DEBIAN_FRONTEND=noninteractive timeout 1200 apt-get install -y -qq \
               --no-install-recommends "${missing[@]}"; } >"$WORK/apt.log" 2>&1; then
        echo "peers: apt-get failed (tail of its log below); affected peers will be 'not available'" >&2
        tail -5 "$WORK/apt.log" >&2
      fi
      if [[ "$POLICY_RC_CREATED" == 1 ]]; then rm -f /usr/sbin/policy-rc.d; POLICY_RC_CREATED=0; fi
    fi
  fi
fi

# Bounded in time: each peer has its own budget inside peers.py; this is the backstop.
IFS=',' read -ra plist <<< "$PEERS"
TOTAL=$(( (${#plist[@]} + 1) * PEER_TIMEOUT + 300 ))
# In the background plus `wait`, so that INT/TERM reach the traps at once (the EXIT trap then
# stops peers.py and its servers).
timeout --signal=TERM --kill-after=60 "$TOTAL" python3 "$HERE/peers.py" "${ARGS[@]}" &
status=0
wait "$!" || status=$?
exit "$status"
