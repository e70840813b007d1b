#!/usr/bin/env bash
# tests/e2e-ipv6.sh — IPv6 through the tunnel (issue 12), against a real Docker engine,
# in the lab of tests/lab.sh: dual-stack bridge networks, Engine 28.2's direct-access
# filtering emulated for IPv6 as for IPv4, a container on two dual-stack networks, an
# --internal dual-stack network, a container reachable only over IPv6 (a corporate VPN
# route takes its IPv4 range; the VPN's IPv6 catch-all halves take nothing), TCP, UDP and
# ICMPv6 from the Mac, status and doctor, kill -9 + restart, `ipv6 = false`, stop and
# uninstall.
#
#   sudo tests/e2e-ipv6.sh [CASE...]   (default: every case below, in order)
#
# Needs: target/debug/connector, images connector-agent:dev and connector-workload:dev
# (scripts/setup builds them), a running dockerd, python3, ip6tables.
#
# Its own lab names: prefix cnv<pid>, veth 10.236.0.0/30 and fd00:236::/126, networks
# 10.236.16-18.0/24 + fd42:236:a-c::/64 and 10.236.130.0/24 + fd42:236:d::/64 (inside the
# "corporate" IPv4 route 10.236.128.0/17), tunnel 10.254.246.0/30 + fd5c:9a2e:83b1:fe36::/126,
# UDP port 51876, agent container connector-agent-v6, test label io.connector.v6test. Takes
# the lab lock (/run/connector-lab.lock).
#
# Environment: LAB_KEEP=1 keeps the logs, LAB_RESULTS_FILE=F writes "passed failed" to F,
# LAB_CONNECTOR / LAB_AGENT_IMAGE run another build (e.g. an older one, to see a case fail).
# The last line is "N passed, M failed"; the exit status is 0 only if M = 0.
set -uo pipefail

LAB_PREFIX=cnv$$
LAB_AGENT_NAME=connector-agent-v6
LAB_AGENT_TAG=$LAB_AGENT_NAME
LAB_LISTEN_PORT=51876
LAB_TUNNEL_CIDR=10.254.246.0/30
# shellcheck source=tests/lab.sh
. "$(dirname "${BASH_SOURCE[0]}")/lab.sh"

LAB_VM_IP=10.236.0.1
LAB_MAC_IP=10.236.0.2
LAB_VM_IP6=fd00:236::1
LAB_MAC_IP6=fd00:236::2
LAB_EMU_TAG=connector-v6-emulation
LAB_PROBE_TAG=connector-v6-probe
LAB_LABEL_KEY=io.connector.v6test
LAB_LABEL="$LAB_LABEL_KEY=1"

P=$LAB_PREFIX
TUNNEL_V6=fd5c:9a2e:83b1:fe36::/126
HOST_TUN_IP6=fd5c:9a2e:83b1:fe36::1
NET_A="${P}-a";    SUBNET_A=10.236.16.0/24;   SUBNET6_A=fd42:236:a::/64
NET_B="${P}-b";    SUBNET_B=10.236.17.0/24;   SUBNET6_B=fd42:236:b::/64
NET_INT="${P}-int"; SUBNET_INT=10.236.18.0/24; SUBNET6_INT=fd42:236:c::/64
NET_CORP="${P}-corp"; SUBNET_CORP=10.236.130.0/24; SUBNET6_CORP=fd42:236:d::/64
CORP_ROUTE=10.236.128.0/17
C_A="${P}-a1"; C_AB="${P}-ab"; C_INT="${P}-i1"; C_CORP="${P}-c1"
VPN="${P}vpn"; VPN_PEER="${P}vpx"

CONFIG=""
TARGETS=()          # "label|ipv6|expected body"
IP_A=""; IP6_A=""; IP_CORP=""; IP6_CORP=""

# ------------------------------------------------------------------------ helpers
STATUS=""
status_now() { STATUS="$LAB_TMP/status.json"; lab_status_json "$CONFIG" "$STATUS"; }
status_is() { status_now && [ "$(lab_status_eval "$STATUS" "$1")" = True ]; }
status_desc() { status_now; head -c 800 "$STATUS" "$STATUS.err" 2>/dev/null | tr '\n' ' '; }
check() { # NAME SECONDS DETAIL-COMMAND COMMAND...
  local name=$1 secs=$2 detail=$3; shift 3
  if wait_until "$secs" "$@"; then lab_pass "$name" "ok"; else lab_fail "$name" "$(eval "$detail")"; fi
}

mac_tun_routes6() {
  ip -n "$LAB_NS" -6 route show dev "$LAB_TUN" 2>/dev/null | grep -v -e '^fe80' -e 'proto kernel' | awk '{ print $1 }' | sort
}
mac_routes6_desc() { ip -n "$LAB_NS" -6 route show 2>/dev/null | paste -sd';' -; }
agent_rules6() { lab_agent_rules | awk '$1 ~ /6$/'; }
agent_has_rules6() { [ -n "$(agent_rules6)" ]; }
tun_routes6_are() { [ "$(mac_tun_routes6 | sort)" = "$1" ]; }
tun_has_address6() { ip -n "$LAB_NS" -6 addr show dev "$LAB_TUN" 2>/dev/null | grep -q "inet6 $HOST_TUN_IP6/126"; }
all_reached() { [ "$(probe_all_parallel "$1" 1 | grep -c .)" = "${#TARGETS[@]}" ]; }
agent_arg_present() { docker inspect -f '{{join .Config.Cmd " "}}' "$LAB_AGENT_NAME" 2>/dev/null | grep -q -- "$1"; }

write_config() { # PATH [EXTRA...]
  lab_write_config "$@"
  echo "tunnel_v6 = \"$TUNNEL_V6\"" >>"$1"
  chmod 644 "$1"
}

http_probe_up() { lab_daemon_alive || return 0; http_probe_fast "$1" "$2"; }

daemon_up() { # CONFIG NAME
  CONFIG=$1
  local t0; t0=$(now_ms)
  lab_daemon_start "$CONFIG"
  if wait_until 25 http_probe_up "$IP_A" "$C_A" && lab_daemon_alive; then
    lab_pass "$2" "HTTP to $C_A ($IP_A) after $(( $(now_ms) - t0 )) ms"
    return 0
  fi
  lab_fail "$2" "no HTTP reply from $C_A within 25 s; $(tail -n 5 "$LAB_DAEMON_LOG" | tr '\n' ' ')"
  return 1
}
daemon_down() { lab_daemon_stop TERM 20 || lab_warn "daemon did not stop within 20 s"; }

vpn_up() {
  ip -n "$LAB_NS" link add "$VPN" type veth peer name "$VPN_PEER"
  ip -n "$LAB_NS" addr add 10.99.236.1/30 dev "$VPN"
  ip -n "$LAB_NS" addr add fd99:236::1/64 dev "$VPN" nodad
  ip -n "$LAB_NS" link set "$VPN" up
  ip -n "$LAB_NS" link set "$VPN_PEER" up
  ip -n "$LAB_NS" route add "$CORP_ROUTE" via 10.99.236.2 dev "$VPN"
  # wg-quick's IPv6 full tunnel: the two halves of the address space.
  ip -n "$LAB_NS" -6 route add ::/1 dev "$VPN"
  ip -n "$LAB_NS" -6 route add 8000::/1 dev "$VPN"
}

# ------------------------------------------------------------------------- setup
setup() {
  lab_need_images "$LAB_WORKLOAD_IMAGE" "$LAB_AGENT_IMAGE"
  command -v "$(lab_docker_ip6t)" >/dev/null || lab_die "missing $(lab_docker_ip6t) (scripts/setup installs iptables)"
  [ "$(sysctl -n net.ipv6.conf.all.forwarding)" = 1 ] || sysctl -qw net.ipv6.conf.all.forwarding=1
  lab_log "topology: netns $LAB_NS ($LAB_MAC_IP, $LAB_MAC_IP6) <-> $LAB_VETH_VM ($LAB_VM_IP, $LAB_VM_IP6)"
  lab_topology_up
  lab_network "$NET_A" "$SUBNET_A" --ipv6 --subnet "$SUBNET6_A"
  lab_network "$NET_B" "$SUBNET_B" --ipv6 --subnet "$SUBNET6_B"
  lab_network "$NET_INT" "$SUBNET_INT" --ipv6 --subnet "$SUBNET6_INT" --internal
  lab_network "$NET_CORP" "$SUBNET_CORP" --ipv6 --subnet "$SUBNET6_CORP"
  lab_workload "$C_A" "$NET_A"
  lab_workload "$C_AB" "$NET_A" "$NET_B"
  lab_workload "$C_INT" "$NET_INT"
  lab_workload "$C_CORP" "$NET_CORP"
  IP_A=$(container_ip "$C_A" "$NET_A"); IP6_A=$(container_ip6 "$C_A" "$NET_A")
  IP_CORP=$(container_ip "$C_CORP" "$NET_CORP"); IP6_CORP=$(container_ip6 "$C_CORP" "$NET_CORP")
  TARGETS=(
    "net-A container|$IP6_A|$C_A"
    "dual-homed container via its net-A IPv6|$(container_ip6 "$C_AB" "$NET_A")|$C_AB"
    "dual-homed container via its net-B IPv6|$(container_ip6 "$C_AB" "$NET_B")|$C_AB"
    "internal-network container|$(container_ip6 "$C_INT" "$NET_INT")|$C_INT"
    "corporate-range container|$IP6_CORP|$C_CORP"
  )
  local t label ip name
  for t in "${TARGETS[@]}"; do
    IFS='|' read -r label ip name <<<"$t"
    [ -n "$ip" ] || lab_die "no IPv6 address for the $label"
    PROBE_NS='' wait_until 15 http_probe "$ip" "$name" 1 || lab_die "workload $name ($ip) does not answer HTTP over IPv6 even from the VM"
    PROBE_NS='' wait_until 5 udp_probe "$ip" "ready-$name" 1 || lab_die "workload $name ($ip) does not answer UDP over IPv6 even from the VM"
    lab_log "  $label: $name $ip"
  done
  lab_log "emulating Engine 28.2's firewall (IPv4 and IPv6) on every bridge network"
  emulate_28_2_all
  CONFIG="$LAB_TMP/connector.toml"
  write_config "$CONFIG"
}

# ------------------------------------------------------------------------- cases
case_before_daemon() { lab_all_unreachable ICMPv6 "over IPv6"; }

# The block is the emulated firewall, not a missing path: without it the Mac reaches
# the container over the veth.
case_lab_sanity() {
  emulation_remove
  if wait_until 3 http_probe "$IP6_A" "$C_A" 1; then
    lab_pass "lab: without the IPv6 emulation the direct path works (the block is the firewall)" "HTTP to [$IP6_A] answered"
  else
    lab_fail "lab: without the IPv6 emulation the direct path works (the block is the firewall)" "HTTP to [$IP6_A] fails: $(mac_routes6_desc)"
  fi
  emulate_28_2_all
  if http_probe "$IP6_A" "$C_A" 1; then
    lab_fail "lab: emulation restored, the Mac is blocked over IPv6 again" "HTTP to [$IP6_A] answered"
  else
    lab_pass "lab: emulation restored, the Mac is blocked over IPv6 again" "HTTP to [$IP6_A] fails"
  fi
}

case_daemon_up() {
  vpn_up
  daemon_up "$CONFIG" "the daemon starts behind a VPN (IPv4 corporate route, IPv6 full tunnel)" || return
}

case_reach_every_container() {
  local proto fn reached missing t label ip name
  for proto in HTTP UDP ICMPv6; do
    case $proto in HTTP) fn=http_probe ;; UDP) fn=udp_probe ;; ICMPv6) fn=ping_probe ;; esac
    wait_until 10 all_reached "$fn" || true
    reached=$(probe_all_parallel "$fn" 2)
    missing=""
    for t in "${TARGETS[@]}"; do
      IFS='|' read -r label ip name <<<"$t"
      grep -qF "$label ($ip)" <<<"$reached" || missing+="$label ($ip); "
    done
    if [ -z "$missing" ]; then
      lab_pass "with connector: $proto over IPv6 reaches every container (two networks, internal, corporate range)" "${#TARGETS[@]} of ${#TARGETS[@]}"
    else
      lab_fail "with connector: $proto over IPv6 reaches every container (two networks, internal, corporate range)" "no answer from: $missing"
    fi
  done
}

case_status_and_routes() {
  local want
  check "status: every IPv6 subnet is routed" 5 'echo "$(status_desc)"' \
    status_is "all(any(n['subnet'] == sub and n['state'] == 'routed' for n in s['networks']) for sub in ['$SUBNET6_A', '$SUBNET6_B', '$SUBNET6_INT', '$SUBNET6_CORP'])"
  check "status: the corporate network's IPv4 subnet is skipped for the VPN route, its IPv6 subnet routed" 5 'echo "$(status_desc)"' \
    status_is "[(n['state'], '$CORP_ROUTE' in (n.get('reason') or '')) for n in net('$NET_CORP') if n['subnet'] == '$SUBNET_CORP'] == [('skipped', True)]"
  want=$(printf '%s\n' "$SUBNET6_A" "$SUBNET6_B" "$SUBNET6_CORP" "$SUBNET6_INT" | sort)
  check "the Mac routes exactly the IPv6 subnets through $LAB_TUN (the VPN's ::/1 and 8000::/1 take none)" 5 \
    'echo "tun routes: $(mac_tun_routes6 | paste -sd, -); all: $(mac_routes6_desc)"' \
    tun_routes6_are "$want"
  check "the Mac's tun carries the host's IPv6 tunnel address" 2 'ip -n "$LAB_NS" -6 addr show dev "$LAB_TUN"' \
    tun_has_address6
  local text
  text=$(ip netns exec "$LAB_NS" timeout 20 "$LAB_CONNECTOR" status --config "$CONFIG" 2>&1)
  if grep -E "$NET_A +$SUBNET6_A +routed" <<<"$text" >/dev/null; then
    lab_pass "connector status shows the IPv6 row as routed" "$(grep -F "$SUBNET6_A" <<<"$text")"
  else
    lab_fail "connector status shows the IPv6 row as routed" "$text"
  fi
}

case_only_over_ipv6() {
  if http_probe "$IP_CORP" "$C_CORP" 1; then
    lab_fail "the corporate-range container is not reached over IPv4 (the VPN owns the range)" "HTTP to $IP_CORP answered"
  else
    lab_pass "the corporate-range container is not reached over IPv4 (the VPN owns the range)" "HTTP to $IP_CORP fails"
  fi
  check "…and is reached over IPv6" 5 'echo "HTTP to [$IP6_CORP] fails"' http_probe "$IP6_CORP" "$C_CORP" 2
}

case_vm_rules() {
  local rules
  rules=$(agent_rules6)
  if grep -q ' raw .*PREROUTING' <<<"$rules" && grep -q ' nat .*MASQUERADE' <<<"$rules"; then
    lab_pass "the agent's IPv6 rules are in the VM (raw accept, masquerade)" "$(echo "$rules" | wc -l) rule(s)"
  else
    lab_fail "the agent's IPv6 rules are in the VM (raw accept, masquerade)" "got: $(echo "$rules" | paste -sd';' -)"
  fi
}

case_doctor() {
  local out rc
  out=$(ip netns exec "$LAB_NS" timeout 60 "$LAB_CONNECTOR" doctor --config "$CONFIG" 2>&1); rc=$?
  if grep -Eq '^ok +probe6 +container .* \(fd42:236:' <<<"$out"; then
    lab_pass "doctor probes a container over ICMPv6 through the tunnel" "$(grep probe6 <<<"$out")"
  else
    lab_fail "doctor probes a container over ICMPv6 through the tunnel" "exit $rc: $(echo "$out" | paste -sd';' -)"
  fi
}

# The restart adopts the agent: same rules, same routes, nothing twice.
case_kill9_restart() {
  local before after routes
  before=$(agent_rules6 | sort)
  kill -KILL "$LAB_DAEMON_PID" 2>/dev/null; wait "$LAB_DAEMON_PID" 2>/dev/null; LAB_DAEMON_PID=""
  daemon_up "$CONFIG" "after kill -9 the daemon comes back" || return
  check "after kill -9 + restart: IPv6 reaches the net-A container again" 10 'echo "$(status_desc)"' http_probe "$IP6_A" "$C_A" 2
  after=$(agent_rules6 | sort)
  if [ -n "$after" ] && [ "$before" = "$after" ] && [ -z "$(agent_rules6 | sort | uniq -d)" ]; then
    lab_pass "after kill -9 + restart: the agent's IPv6 rules are the same, none twice" "$(echo "$after" | wc -l) rule(s)"
  else
    lab_fail "after kill -9 + restart: the agent's IPv6 rules are the same, none twice" "before: $(echo "$before" | paste -sd';' -) after: $(echo "$after" | paste -sd';' -)"
  fi
  routes=$(mac_tun_routes6)
  if [ -z "$(uniq -d <<<"$routes")" ] && [ "$(echo "$routes" | grep -c .)" = 4 ]; then
    lab_pass "after kill -9 + restart: each IPv6 subnet has one route" "$(echo "$routes" | paste -sd, -)"
  else
    lab_fail "after kill -9 + restart: each IPv6 subnet has one route" "$(echo "$routes" | paste -sd, -)"
  fi
}

case_stop() {
  daemon_down
  if [ -z "$(ip -n "$LAB_NS" -6 route show 2>/dev/null | grep -F -e "$SUBNET6_A" -e "$SUBNET6_CORP")" ]; then
    lab_pass "stop: no IPv6 route is left on the Mac" "ok"
  else
    lab_fail "stop: no IPv6 route is left on the Mac" "$(mac_routes6_desc)"
  fi
  # The agent stays after a stop (the next start adopts it); its rules go with it.
  lab_agent_remove
  if [ -z "$(agent_rules6)" ]; then
    lab_pass "the agent's SIGTERM removes its IPv6 rules" "none left"
  else
    lab_fail "the agent's SIGTERM removes its IPv6 rules" "$(agent_rules6 | paste -sd';' -)"
  fi
}

case_ipv6_off() {
  local cfg="$LAB_TMP/off.toml"
  write_config "$cfg" "ipv6 = false"
  daemon_up "$cfg" "with ipv6 = false the daemon starts and IPv4 works" || return
  check "with ipv6 = false: status says why the IPv6 subnets are not routed" 5 'echo "$(status_desc)"' \
    status_is "all(n['state'] == 'skipped' and 'ipv6 = false' in n['reason'] for n in s['networks'] if ':' in n['subnet'])"
  if http_probe "$IP6_A" "$C_A" 1; then
    lab_fail "with ipv6 = false: IPv6 does not go through the tunnel" "HTTP to [$IP6_A] answered"
  else
    lab_pass "with ipv6 = false: IPv6 does not go through the tunnel" "HTTP to [$IP6_A] fails"
  fi
  if [ -z "$(mac_tun_routes6)" ] && [ -z "$(agent_rules6)" ] && ! agent_arg_present --address6; then
    lab_pass "with ipv6 = false: no IPv6 route on the Mac, no IPv6 rule in the VM" "ok"
  else
    lab_fail "with ipv6 = false: no IPv6 route on the Mac, no IPv6 rule in the VM" "routes: $(mac_tun_routes6 | paste -sd, -); rules: $(agent_rules6 | paste -sd';' -)"
  fi
  daemon_down
}

# After a crash, `connector uninstall` removes what the daemon and the agent made.
case_uninstall_after_crash() {
  daemon_up "$CONFIG" "the daemon starts again (IPv6 on)" || return
  wait_until 10 agent_has_rules6 || true
  kill -KILL "$LAB_DAEMON_PID" 2>/dev/null; wait "$LAB_DAEMON_PID" 2>/dev/null; LAB_DAEMON_PID=""
  local out
  out=$(ip netns exec "$LAB_NS" timeout 60 "$LAB_CONNECTOR" uninstall --config "$CONFIG" 2>&1)
  if [ -z "$(agent_rules6)" ] && [ -z "$(lab_agent_rules)" ] && [ -z "$(docker ps -aq --filter "name=^/$LAB_AGENT_NAME\$")" ]; then
    lab_pass "uninstall after kill -9 leaves no agent, no IPv4 or IPv6 rule" "$(echo "$out" | paste -sd';' -)"
  else
    lab_fail "uninstall after kill -9 leaves no agent, no IPv4 or IPv6 rule" "rules: $(lab_agent_rules | paste -sd';' -); $out"
  fi
}

ALL_CASES=(
  case_before_daemon
  case_lab_sanity
  case_daemon_up
  case_reach_every_container
  case_status_and_routes
  case_only_over_ipv6
  case_vm_rules
  case_doctor
  case_kill9_restart
  case_stop
  case_ipv6_off
  case_uninstall_after_crash
)

lab_select_cases e2e-ipv6 "$@"
lab_init python3 busybox
setup
lab_cases_loop
lab_summary
if [ -n "${LAB_RESULTS_FILE:-}" ]; then echo "$LAB_PASSED $LAB_FAILED" >"$LAB_RESULTS_FILE"; fi
[ "$LAB_FAILED" = 0 ]
