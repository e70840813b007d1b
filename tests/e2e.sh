#!/usr/bin/env bash
# tests/e2e.sh — connector's end-to-end suite against a real Docker engine.
#
#   sudo tests/e2e.sh [CASE...]  (scripts/test builds everything first, then runs this;
#                                 CASE = function names below, default all, in order)
#
# Needs: target/debug/connector, images connector-agent:dev and connector-workload:dev,
# a running dockerd. Environment: LAB_KEEP=1 keeps the logs, LAB_PERF=0 skips the
# (informational) ping/iperf3 comparison, LAB_RESULTS_FILE=F writes "passed failed" to F.
#
# Each case is one assertion a user would make; a failure is recorded and the suite
# goes on. The last line is "N passed, M failed"; the exit status is 0 only if M = 0.
set -uo pipefail

# shellcheck source=tests/lab.sh
. "$(dirname "${BASH_SOURCE[0]}")/lab.sh"

P=$LAB_PREFIX
NET_A="${P}-a"
NET_B="${P}-b"
NET_INT="${P}-int"
NET_LATE="${P}-late"
SUBNET_A=10.231.16.0/24
SUBNET_B=10.231.17.0/24
SUBNET_INT=10.231.18.0/24
SUBNET_LATE=10.231.19.0/24

C_DEF="${P}-def"
C_A="${P}-a1"
C_B="${P}-b1"
C_AB="${P}-ab"
C_INT="${P}-i1"
C_LATE="${P}-l1"

CONFIG=""
TARGETS=()          # "label|ip|expected body"
RULES_FIRST_RUN=""  # the agent's tagged rules while the first daemon ran
PERF_LINES=()
TIME_TO_HTTP=""
TIME_FIRST=""
TIME_RESTART=""

# ------------------------------------------------------------------------- setup
setup() {
  [ -x "$LAB_CONNECTOR" ] || lab_die "$LAB_CONNECTOR is missing (cargo build --workspace)"
  docker image inspect "$LAB_WORKLOAD_IMAGE" >/dev/null 2>&1 || lab_die "image $LAB_WORKLOAD_IMAGE is missing (scripts/workload-image)"
  docker image inspect "$LAB_AGENT_IMAGE" >/dev/null 2>&1 || lab_die "image $LAB_AGENT_IMAGE is missing (scripts/agent-image --local)"

  lab_log "topology: netns $LAB_NS ($LAB_MAC_IP) <-> $LAB_VETH_VM ($LAB_VM_IP) in the VM"
  lab_topology_up

  lab_log "networks and workloads"
  lab_network "$NET_A" "$SUBNET_A"
  lab_network "$NET_B" "$SUBNET_B"
  lab_network "$NET_INT" "$SUBNET_INT" --internal
  lab_workload "$C_DEF" bridge
  lab_workload "$C_A" "$NET_A"
  lab_workload "$C_B" "$NET_B"
  lab_workload "$C_AB" "$NET_A" "$NET_B"
  lab_workload "$C_INT" "$NET_INT"

  TARGETS=(
    "default-bridge container|$(container_ip "$C_DEF" bridge)|$C_DEF"
    "net-A container|$(container_ip "$C_A" "$NET_A")|$C_A"
    "net-B container|$(container_ip "$C_B" "$NET_B")|$C_B"
    "dual-homed container via its net-A IP|$(container_ip "$C_AB" "$NET_A")|$C_AB"
    "dual-homed container via its net-B IP|$(container_ip "$C_AB" "$NET_B")|$C_AB"
    "internal-network container|$(container_ip "$C_INT" "$NET_INT")|$C_INT"
  )
  local t label ip name
  for t in "${TARGETS[@]}"; do
    IFS='|' read -r label ip name <<<"$t"
    [ -n "$ip" ] || lab_die "no IP for the $label"
    # The VM itself reaches every container (OUTPUT is not filtered): proves the workloads run.
    PROBE_NS='' wait_until 15 http_probe "$ip" "$name" 1 || lab_die "workload $name ($ip) does not answer HTTP even from the VM"
    PROBE_NS='' wait_until 5 udp_probe "$ip" "ready-$name" 1 || lab_die "workload $name ($ip) does not answer UDP even from the VM"
    lab_log "  $label: $name $ip"
  done

  lab_log "emulating Engine 28.2's firewall on every bridge network ($(lab_docker_ipt))"
  emulate_28_2_all

  CONFIG="$LAB_TMP/connector.toml"
  lab_write_config "$CONFIG"
}

# ---------------------------------------------------------- case 1: before connector
case_before_daemon() { lab_all_unreachable ping; }

# Lab sanity: the block is the emulated 28.2 firewall, not a routing problem.
case_lab_sanity() {
  local ip name ipt
  IFS='|' read -r _ ip name <<<"${TARGETS[0]}"
  ipt=$(lab_docker_ipt)
  # Open Docker 20.10's own forward filter for the veth (20.10 drops foreign traffic by policy).
  "$ipt" -w -t filter -I DOCKER-USER -i "$LAB_VETH_VM" -m comment --comment "$LAB_PROBE_TAG" -j ACCEPT
  if http_probe "$ip" "$name" 1; then
    lab_fail "lab: with the forward filter open, the emulated 28.2 raw rule still blocks the Mac" "HTTP to $ip answered: the raw PREROUTING emulation is not effective"
  else
    lab_pass "lab: with the forward filter open, the emulated 28.2 raw rule still blocks the Mac" "HTTP to $ip fails"
  fi
  emulation_remove
  if wait_until 3 http_probe "$ip" "$name" 1; then
    lab_pass "lab: without the emulation the direct path works (the block is the firewall)" "HTTP to $ip answered"
    if [ "${LAB_PERF:-1}" = 1 ]; then perf_measure "direct path (no tunnel)" "$C_DEF" "$ip"; fi
  else
    lab_fail "lab: without the emulation the direct path works (the block is the firewall)" "HTTP to $ip still fails: the lab topology is broken"
  fi
  lab_delete_tagged "$LAB_PROBE_TAG"
  emulate_28_2_all
  if http_probe "$ip" "$name" 1; then
    lab_fail "lab: emulation restored, the Mac is blocked again" "HTTP to $ip answered"
  else
    lab_pass "lab: emulation restored, the Mac is blocked again" "HTTP to $ip fails"
  fi
}

# Informational: ping RTT and iperf3 throughput from the Mac to a container.
perf_measure() { # LABEL CONTAINER IP
  local label=$1 c=$2 ip=$3 pid rtt bw port=5201
  rtt=$(probe_in timeout 10 ping -n -q -c 10 -i 0.2 -W 2 "$ip" 2>/dev/null | awk -F/ '/^rtt|^round-trip/ {print $5 " ms"}')
  [ -n "$rtt" ] || rtt=$(probe_in timeout 10 busybox ping -q -c 10 -i 0.2 -W 2 "$ip" 2>/dev/null | awk -F/ '/round-trip/ {print $4 " ms"}')
  bw="n/a"
  if command -v iperf3 >/dev/null 2>&1 && command -v nsenter >/dev/null 2>&1; then
    pid=$(docker inspect -f '{{.State.Pid}}' "$c")
    timeout 30 nsenter -t "$pid" -n iperf3 -s -1 -p "$port" >/dev/null 2>&1 &
    local spid=$!
    wait_until 5 nsenter -t "$pid" -n sh -c "ss -ltn | grep -q ':$port '" || true
    bw=$(probe_in timeout 20 iperf3 -c "$ip" -p "$port" -t 3 -f m 2>/dev/null | awk '/receiver/ {print $(NF-2) " " $(NF-1)}')
    [ -n "$bw" ] || bw="n/a"
    kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null
  fi
  PERF_LINES+=("$label: ping avg RTT ${rtt:-n/a}, iperf3 TCP 3 s ${bw}")
  lab_log "PERF $label: ping avg RTT ${rtt:-n/a}, iperf3 TCP 3 s ${bw}"
}

# -------------------------------------------------- case 5: sync-networks, no daemon
case_sync_without_daemon() {
  local name="sync-networks without a running daemon: exit 1 and a clear error" out err rc
  err="$LAB_TMP/sync-nodaemon.err"
  out=$(ip netns exec "$LAB_NS" timeout 15 "$LAB_CONNECTOR" sync-networks --config "$CONFIG" 2>"$err"); rc=$?
  if [ "$rc" = 1 ] && grep -q "connector.sock" "$err"; then
    lab_pass "$name" "exit 1: $(head -n 1 "$err")"
  else
    lab_fail "$name" "exit $rc, stdout: $(echo "$out" | head -c 200), stderr: $(head -c 300 "$err") (want exit 1 and the socket $LAB_TMP/connector.sock named on stderr)"
  fi
}

# --------------------------------------------------------------- case 4: bad config
# bad_config_case NAME CONFIG-PATH WORD... — connector run must fail, name every WORD
# on stderr, and leave the system as it was.
bad_config_case() {
  local name=$1 cfg=$2; shift 2
  local before after err="$LAB_TMP/bad-config-$RANDOM.err" rc w missing=""
  before=$(lab_snapshot)
  ip netns exec "$LAB_NS" timeout 20 "$LAB_CONNECTOR" run --config "$cfg" --log-level debug \
    >"$err.out" 2>"$err" </dev/null
  rc=$?
  after=$(lab_snapshot)
  for w in "$@"; do grep -qF -- "$w" "$err" || missing="$missing '$w'"; done
  if [ "$rc" = 124 ]; then
    lab_fail "$name" "connector run did not exit within 20 s (it started with a bad config)"
    docker rm -f "$LAB_AGENT_NAME" >/dev/null 2>&1 || true
    lab_learn_agent
    lab_delete_rules "${LAB_AGENT_TAG:-$LAB_AGENT_NAME}" "$LAB_AGENT_TUN"
  elif [ "$rc" = 0 ]; then
    lab_fail "$name" "connector run exited 0; stderr: $(head -c 300 "$err")"
  elif [ -n "$missing" ]; then
    lab_fail "$name" "exit $rc but stderr does not name$missing; stderr: $(head -c 300 "$err")"
  elif [ "$before" != "$after" ]; then
    lab_fail "$name" "exit $rc but the system changed: $(diff <(echo "$before") <(echo "$after") | grep '^[<>]' | paste -sd';' -)"
  else
    lab_pass "$name" "exit $rc: $(grep -v '^\s*$' "$err" | tail -n 1 | head -c 200)"
  fi
}

case_bad_config() {
  local c
  c="$LAB_TMP/bad-unknown-key.toml"; lab_write_config "$c" 'bogus_key = true'
  bad_config_case "bad config: an unknown key is rejected, nothing changed" "$c" bogus_key
  c="$LAB_TMP/bad-mtu.toml"; lab_write_config "$c"; sed -i 's/^mtu = .*/mtu = 99999/' "$c"
  bad_config_case "bad config: mtu = 99999 is rejected, nothing changed" "$c" mtu 99999
  c="$LAB_TMP/bad-nat.toml"; lab_write_config "$c"; sed -i 's/^nat = .*/nat = "sideways"/' "$c"
  bad_config_case "bad config: nat = \"sideways\" is rejected, nothing changed" "$c" nat sideways
  c="$LAB_TMP/does-not-exist.toml"
  bad_config_case "bad config: --config naming a missing file is rejected, nothing changed" "$c" "$c"
}

# ------------------------------------------------------------ case: without root
# What `brew services start connector` without sudo does: a per-user job runs
# `connector run` as the user. It must stop at once, say how to start it, and touch nothing.
run_as_nobody() { # [ENV=VALUE...]
  ip netns exec "$LAB_NS" setpriv --reuid=65534 --regid=65534 --clear-groups \
    env "$@" timeout 10 "$LAB_CONNECTOR" run --config "$CONFIG" 2>&1
}

case_not_root() {
  local name="connector run without root: exits 1 within 2 s naming the fix, nothing changed"
  local before after out rc t0 ms
  before=$(lab_snapshot)
  t0=$(now_ms)
  out=$(run_as_nobody); rc=$?
  ms=$(( $(now_ms) - t0 ))
  after=$(lab_snapshot)
  if [ "$rc" = 1 ] && [ "$ms" -lt 2000 ] && [[ "$out" == *"sudo brew services start connector"* ]] \
      && [ "$(grep -c . <<<"$out")" = 1 ] && [ "$before" = "$after" ]; then
    lab_pass "$name" "exit 1 after $ms ms: $out"
  else
    lab_fail "$name" "exit $rc after $ms ms, output: $(head -c 300 <<<"$out"); system changed: $([ "$before" = "$after" ] && echo no || diff <(echo "$before") <(echo "$after") | grep '^[<>]' | paste -sd';' -)"
  fi
  out=$(run_as_nobody XPC_SERVICE_NAME=homebrew.mxcl.connector); rc=$?
  if [ "$rc" = 1 ] && [[ "$out" == *"per-user launchd job"*"brew services stop connector"* ]]; then
    lab_pass "connector run from a per-user launchd job says so" "$out"
  else
    lab_fail "connector run from a per-user launchd job says so" "exit $rc: $(head -c 300 <<<"$out")"
  fi
}

# --------------------------------------------------------- case: shell completions
case_completions() {
  local shell out bad=""
  for shell in bash zsh fish; do
    out="$LAB_TMP/connector.$shell"
    "$LAB_CONNECTOR" completions "$shell" >"$out" 2>&1 || { bad="$bad $shell: $(head -c 100 "$out");"; continue; }
    [ -s "$out" ] || bad="$bad $shell: empty;"
  done
  bash -n "$LAB_TMP/connector.bash" 2>/dev/null || bad="$bad bash -n fails;"
  if command -v zsh >/dev/null 2>&1; then zsh -n "$LAB_TMP/connector.zsh" || bad="$bad zsh -n fails;"; fi
  if [ -z "$bad" ] && (source "$LAB_TMP/connector.bash" && complete -p connector >/dev/null); then
    lab_pass "connector completions: bash, zsh and fish scripts; bash loads its script" "$(complete -p connector 2>/dev/null || (source "$LAB_TMP/connector.bash"; complete -p connector))"
  else
    lab_fail "connector completions: bash, zsh and fish scripts; bash loads its script" "${bad:-bash did not register a completion for connector}"
  fi
}

# --------------------------------------------------------- case 2: connector run
# Start the daemon and wait for the first HTTP reply; sets TIME_TO_HTTP (ms) or fails.
start_daemon_and_wait() { # CASE-NAME
  local ip name t0
  IFS='|' read -r _ ip name <<<"${TARGETS[0]}"
  lab_daemon_start "$CONFIG"
  t0=$LAB_DAEMON_STARTED_MS
  if wait_until 20 http_probe_alive "$ip" "$name" && lab_daemon_alive; then
    TIME_TO_HTTP=$(( $(now_ms) - t0 ))
    lab_pass "$1" "first HTTP reply from $name after ${TIME_TO_HTTP} ms"
    return 0
  fi
  if lab_daemon_alive; then
    lab_fail "$1" "no HTTP reply from $name ($ip) within 20 s of connector run"
  else
    wait "$LAB_DAEMON_PID" 2>/dev/null; local rc=$?
    lab_fail "$1" "connector run exited ($rc) before the first HTTP reply"
    LAB_DAEMON_PID=""
  fi
  return 1
}

# http_probe_fast that stops the wait (returns 0) when the daemon died.
http_probe_alive() {
  lab_daemon_alive || return 0
  http_probe_fast "$1" "$2"
}

case_reachable() {
  local t label ip name tok
  for t in "${TARGETS[@]}"; do
    IFS='|' read -r label ip name <<<"$t"
    if wait_until 5 http_probe "$ip" "$name" 2; then
      lab_pass "with connector: HTTP from the Mac to the $label" "body contains '$name' ($ip)"
    else
      lab_fail "with connector: HTTP from the Mac to the $label" "curl http://$ip/ fails or lacks '$name'"
    fi
    tok="echo-$name-$RANDOM"
    if wait_until 5 udp_probe "$ip" "$tok" 2; then
      lab_pass "with connector: UDP echo from the Mac to the $label" "'$tok' came back from $ip:7"
    else
      lab_fail "with connector: UDP echo from the Mac to the $label" "no echo of '$tok' from $ip:7"
    fi
    if wait_until 5 ping_probe "$ip" 2; then
      lab_pass "with connector: ping from the Mac to the $label" "$ip answers"
    else
      lab_fail "with connector: ping from the Mac to the $label" "no echo reply from $ip"
    fi
  done
}

case_daemon_run() {
  if start_daemon_and_wait "connector run: the first container answers HTTP within 20 s"; then
    TIME_FIRST=$TIME_TO_HTTP
    lab_log "TIME connector run -> first HTTP reply: ${TIME_FIRST} ms"
  fi
  case_reachable
  lab_learn_agent
  RULES_FIRST_RUN=$(lab_agent_rules | sort)
  lab_log "agent rules while running, $(lab_agent_rules_desc) ($(echo "$RULES_FIRST_RUN" | grep -c .)):"
  echo "$RULES_FIRST_RUN" | sed 's/^/    /'
  if [ "${LAB_PERF:-1}" = 1 ]; then
    local ip
    IFS='|' read -r _ ip _ <<<"${TARGETS[0]}"
    perf_measure "through connector" "$C_DEF" "$ip"
  fi
}

# ------------------------------------------------------ case 3: a network created later
sync_networks() { # OUTFILE — runs sync-networks from the Mac; returns its exit status
  ip netns exec "$LAB_NS" timeout 30 "$LAB_CONNECTOR" sync-networks --config "$CONFIG" >"$1" 2>"$1.err"
}

mac_has_route() { ip -n "$LAB_NS" route show "$1" | grep -q .; }
mac_lacks_route() { ! mac_has_route "$1"; }

# sync_expect OUTFILE SIGN SUBNET PREPARE... — run PREPARE (may be empty), then
# sync-networks at once; succeed if it exits 0 and prints "<SIGN> ...SUBNET".
# One retry: the daemon's own periodic reconcile may win the race with PREPARE.
sync_expect() {
  local out=$1 sign=$2 subnet=$3 attempt rc; shift 3
  for attempt in 1 2; do
    [ $# -eq 0 ] || "$@"
    sync_networks "$out"; rc=$?
    if [ "$rc" = 0 ] && grep -qE "^\\${sign} .*${subnet//./\\.}" "$out"; then return 0; fi
    [ $# -gt 0 ] || break
  done
  return 1
}

# Networks created and removed while the daemon runs. The daemon may follow Docker's
# events (then routes change by themselves, which is recorded as its own case); the
# sync-networks cases then simulate a missed event by editing the Mac's routes first.
case_late_network() {
  local ip out rc live=0
  lab_network "$NET_LATE" "$SUBNET_LATE"
  emulate_28_2 "$NET_LATE"
  lab_workload "$C_LATE" "$NET_LATE"
  ip=$(container_ip "$C_LATE" "$NET_LATE")
  PROBE_NS='' wait_until 15 http_probe "$ip" "$C_LATE" 1 || lab_warn "late workload $C_LATE ($ip) does not answer even from the VM"

  if wait_until 3 mac_has_route "$SUBNET_LATE"; then
    live=1
    lab_log "the daemon follows Docker events: $SUBNET_LATE was routed without sync-networks"
    if wait_until 5 http_probe "$ip" "$C_LATE" 2; then
      lab_pass "new network: reachable without any command (Docker events)" "HTTP to $ip answers"
    else
      lab_fail "new network: reachable without any command (Docker events)" "route added but HTTP to $ip fails"
    fi
    sleep 0.5
  else
    if http_probe "$ip" "$C_LATE" 1; then
      lab_fail "new network: not reachable before sync-networks" "HTTP to $ip answered without a route for $SUBNET_LATE"
    else
      lab_pass "new network: not reachable before sync-networks" "HTTP to $ip fails"
    fi
  fi

  out="$LAB_TMP/sync-add.out"
  if [ "$live" = 1 ]; then
    # A missed event: the route is gone and the daemon has not noticed.
    sync_expect "$out" + "$SUBNET_LATE" ip -n "$LAB_NS" route del "$SUBNET_LATE" dev "$LAB_TUN"; rc=$?
  else
    sync_expect "$out" + "$SUBNET_LATE"; rc=$?
  fi
  lab_log "sync-networks:"; sed 's/^/    /' "$out" "$out.err"
  local what="a new network"; [ "$live" = 0 ] || what="a missing route (missed event)"
  if [ "$rc" = 0 ]; then
    lab_pass "sync-networks picks up $what: exit 0, reports '+ $SUBNET_LATE'" "$(grep -E '^\+ ' "$out" | paste -sd';' -)"
  else
    lab_fail "sync-networks picks up $what: exit 0, reports '+ $SUBNET_LATE'" "stdout: $(head -c 300 "$out"), stderr: $(head -c 300 "$out.err")"
  fi

  if wait_until 5 http_probe "$ip" "$C_LATE" 2; then
    lab_pass "new network: HTTP from the Mac after sync-networks" "body contains '$C_LATE' ($ip)"
  else
    lab_fail "new network: HTTP from the Mac after sync-networks" "curl http://$ip/ fails"
  fi
  if wait_until 5 ping_probe "$ip" 2; then
    lab_pass "new network: ping from the Mac after sync-networks" "$ip answers"
  else
    lab_fail "new network: ping from the Mac after sync-networks" "no echo reply from $ip"
  fi

  out="$LAB_TMP/sync-noop.out"
  sync_networks "$out"; rc=$?
  if [ "$rc" = 0 ] && ! grep -qE '^[+-] ' "$out"; then
    lab_pass "sync-networks with nothing new changes nothing" "exit 0, no '+'/'-' lines"
  else
    lab_fail "sync-networks with nothing new changes nothing" "exit $rc, stdout: $(head -c 300 "$out")"
  fi

  docker rm -f "$C_LATE" >/dev/null
  emulation_remove_net "$NET_LATE"
  docker network rm "$NET_LATE" >/dev/null
  out="$LAB_TMP/sync-del.out"
  if wait_until 3 mac_lacks_route "$SUBNET_LATE"; then
    # Removed by the daemon on its own (Docker events).
    lab_pass "removed network: its route goes without any command (Docker events)" "no route for $SUBNET_LATE"
    sleep 0.5
    # A missed event: a stale route of connector's (same form as the daemon's own:
    # proto static, scope link) that the daemon has not noticed.
    sync_expect "$out" - "$SUBNET_LATE" ip -n "$LAB_NS" route replace "$SUBNET_LATE" dev "$LAB_TUN" proto static scope link; rc=$?
    what="a stale route (missed event)"
  else
    sync_expect "$out" - "$SUBNET_LATE"; rc=$?
    what="a removed network"
  fi
  lab_log "sync-networks after removing $NET_LATE:"; sed 's/^/    /' "$out" "$out.err"
  if [ "$rc" = 0 ]; then
    lab_pass "sync-networks drops $what: exit 0, reports '- $SUBNET_LATE'" "$(grep -E '^- ' "$out" | paste -sd';' -)"
  else
    lab_fail "sync-networks drops $what: exit 0, reports '- $SUBNET_LATE'" "stdout: $(head -c 300 "$out"), stderr: $(head -c 300 "$out.err")"
  fi
  if mac_has_route "$SUBNET_LATE"; then
    lab_fail "removed network: its route is gone from the Mac" "$(ip -n "$LAB_NS" route show "$SUBNET_LATE")"
  else
    lab_pass "removed network: its route is gone from the Mac" "no route for $SUBNET_LATE"
  fi
  # The other networks must be untouched.
  local ipa
  IFS='|' read -r _ ipa _ <<<"${TARGETS[1]}"
  if http_probe "$ipa" "$C_A" 2; then
    lab_pass "removed network: the other networks stay reachable" "HTTP to $ipa answers"
  else
    lab_fail "removed network: the other networks stay reachable" "HTTP to $ipa fails"
  fi
}

# ------------------------------------------------------- case 7: kill -9 then restart
agent_container_count() {
  # By name prefix: the configured name, or any renamed copy of it (e.g. a "-old" left behind).
  docker ps -aq --filter "name=^/${LAB_AGENT_NAME}" | grep -c . || true
}

case_kill9_restart() {
  if lab_daemon_alive; then
    lab_daemon_stop KILL 10 || true
  else
    lab_warn "no daemon was running before kill -9"
  fi
  lab_log "daemon killed with SIGKILL; starting again"
  if start_daemon_and_wait "after kill -9: connector run again answers HTTP within 20 s"; then
    TIME_RESTART=$TIME_TO_HTTP
    [ "$TIME_RESTART" -le 3000 ] || lab_warn "after kill -9 the first HTTP reply took ${TIME_RESTART} ms (first start: ${TIME_FIRST:-?} ms)"
  fi

  local t label ip name bad=""
  for t in "${TARGETS[@]}"; do
    IFS='|' read -r label ip name <<<"$t"
    wait_until 5 http_probe "$ip" "$name" 2 || bad="$bad $label ($ip);"
  done
  if [ -z "$bad" ]; then
    lab_pass "after kill -9 and restart: every container answers HTTP" "${#TARGETS[@]} targets"
  else
    lab_fail "after kill -9 and restart: every container answers HTTP" "no answer from:$bad"
  fi
  bad=""
  for t in "${TARGETS[@]}"; do
    IFS='|' read -r label ip name <<<"$t"
    wait_until 5 udp_probe "$ip" "k9-$RANDOM" 2 || bad="$bad $label ($ip);"
  done
  if [ -z "$bad" ]; then
    lab_pass "after kill -9 and restart: every container answers UDP echo" "${#TARGETS[@]} targets"
  else
    lab_fail "after kill -9 and restart: every container answers UDP echo" "no echo from:$bad"
  fi

  local rules dups n
  lab_learn_agent
  rules=$(lab_agent_rules | sort)
  dups=$(echo "$rules" | grep . | uniq -d)
  n=$(echo "$rules" | grep -c .)
  if [ "$n" -gt 0 ] && [ -z "$dups" ] && { [ -z "$RULES_FIRST_RUN" ] || [ "$rules" = "$RULES_FIRST_RUN" ]; }; then
    lab_pass "after kill -9 and restart: each tagged rule exists exactly once" "$n rules, same set as the first run"
  elif [ "$n" = 0 ]; then
    lab_fail "after kill -9 and restart: each tagged rule exists exactly once" "no agent rule ($(lab_agent_rules_desc)) at all"
  elif [ -n "$dups" ]; then
    lab_fail "after kill -9 and restart: each tagged rule exists exactly once" "duplicated: $(echo "$dups" | paste -sd';' -)"
  else
    lab_fail "after kill -9 and restart: each tagged rule exists exactly once" "rule set differs from the first run: $(diff <(echo "$RULES_FIRST_RUN") <(echo "$rules") | grep '^[<>]' | paste -sd';' -)"
  fi

  n=$(agent_container_count)
  if [ "$n" = 1 ]; then
    lab_pass "after kill -9 and restart: exactly one agent container" "$(docker ps -a --filter "name=^/${LAB_AGENT_NAME}\$" --format '{{.Names}} {{.Status}}')"
  else
    lab_fail "after kill -9 and restart: exactly one agent container" "$n agent containers: $(docker ps -a --filter "name=^/${LAB_AGENT_NAME}" --format '{{.Names}} {{.Status}}' | paste -sd, -)"
  fi
}

# ------------------------------------------------------------------ case 6: SIGTERM
case_sigterm() {
  if ! lab_daemon_alive; then
    lab_warn "no daemon running before the SIGTERM case; starting one"
    start_daemon_and_wait "SIGTERM case: connector run answers HTTP within 20 s (restart)" || true
  fi
  local pid=$LAB_DAEMON_PID rc
  if lab_daemon_stop TERM 20; then
    rc=$LAB_DAEMON_RC
    if [ "$rc" = 0 ]; then
      lab_pass "SIGTERM: the daemon exits 0" "pid $pid exited 0"
    else
      lab_fail "SIGTERM: the daemon exits 0" "pid $pid exited $rc"
    fi
  else
    lab_fail "SIGTERM: the daemon exits 0" "pid $pid still running 20 s after SIGTERM (killed)"
  fi
  if ip -n "$LAB_NS" link show "$LAB_TUN" >/dev/null 2>&1; then
    lab_fail "after SIGTERM: no $LAB_TUN in the Mac" "$(ip -n "$LAB_NS" -br link show "$LAB_TUN")"
  else
    lab_pass "after SIGTERM: no $LAB_TUN in the Mac" "gone"
  fi
  local routes
  routes=$(ip -n "$LAB_NS" route show table all | grep -E "dev $LAB_TUN|10\.231\.1[6-9]\.|172\.17\." || true)
  if [ -z "$routes" ]; then
    lab_pass "after SIGTERM: no route via $LAB_TUN and none for the Docker subnets in the Mac" "none"
  else
    lab_fail "after SIGTERM: no route via $LAB_TUN and none for the Docker subnets in the Mac" "$(echo "$routes" | paste -sd';' -)"
  fi
  local n
  n=$(agent_container_count)
  if [ "$n" = 0 ]; then
    lab_pass "after SIGTERM: no agent container" "none"
  else
    lab_fail "after SIGTERM: no agent container" "$(docker ps -a --filter "name=^/${LAB_AGENT_NAME}" --format '{{.Names}} {{.Status}}' | paste -sd, -)"
  fi
  local rules
  rules=$(lab_agent_rules)
  if [ -z "$rules" ]; then
    lab_pass "after SIGTERM: no agent iptables rule left (any table, nft and legacy)" "none $(lab_agent_rules_desc)"
  else
    lab_fail "after SIGTERM: no agent iptables rule left (any table, nft and legacy)" "$(echo "$rules" | paste -sd';' -)"
  fi
}

# --------------------------------------------------------------------------- main
ALL_CASES=(case_before_daemon case_lab_sanity case_sync_without_daemon case_bad_config
           case_not_root case_completions case_daemon_run case_late_network case_kill9_restart
           case_sigterm)
lab_select_cases e2e "$@"
lab_init setpriv
setup
lab_cases_loop

echo
[ -z "$TIME_FIRST" ] || echo "time from 'connector run' to the first HTTP reply: ${TIME_FIRST} ms"
[ -z "$TIME_RESTART" ] || echo "time from 'connector run' after kill -9 to the first HTTP reply: ${TIME_RESTART} ms"
for l in "${PERF_LINES[@]}"; do echo "perf: $l"; done
lab_summary
if [ -n "${LAB_RESULTS_FILE:-}" ]; then echo "$LAB_PASSED $LAB_FAILED" >"$LAB_RESULTS_FILE"; fi
[ "$LAB_FAILED" = 0 ]
