#!/usr/bin/env bash
# tests/e2e-live.sh — connector follows Docker live and heals by itself (issue 3),
# against a real Docker engine, in the lab of tests/lab.sh.
#
#   sudo tests/e2e-live.sh [CASE...]   (default: every case below, in order)
#
# Needs: target/debug/connector, images connector-agent:dev (scripts/agent-image --local)
# and connector-workload:dev (scripts/workload-image), a running dockerd, python3.
#
# The lab is tests/lab.sh's with its own names so it never collides with tests/e2e.sh or
# scripts/bench: prefix cnl<pid>, veth 10.232.0.0/30, networks 10.232.16.0/24 (A),
# 10.232.17.0/24 (created while running), 10.232.64-83.0/24 (burst), tunnel 10.254.250.0/30,
# UDP port 51873, agent container connector-agent-live (tun cvm<hash>, rule tag
# connector-agent-live). It takes the lab lock (/run/connector-lab.lock, one lab at a time:
# a daemon removes agent containers of other names as strays) and waits for other agents
# to go away. One case stops and restarts dockerd: it waits for a quiet engine first (no
# other agent, lab namespace or running container), keeps the window short and restores
# dockerd on any exit.
#
# Environment: LAB_KEEP=1 keeps the logs, LIVE_QUIET_WAIT=600 (seconds to wait for a quiet
# engine before the dockerd restart), LIVE_SKIP_DOCKERD=1 skips the dockerd restart case,
# LAB_RESULTS_FILE=F writes "passed failed" to F.
#
# Each case asserts what a user sees; a failure is recorded and the suite goes on. Recovery
# times are printed, asserted only against generous deadlines. The last line is
# "N passed, M failed"; the exit status is 0 only if M = 0.
set -uo pipefail

LAB_PREFIX=cnl$$
LAB_AGENT_NAME=connector-agent-live
LAB_AGENT_TAG=$LAB_AGENT_NAME        # the agent tags its rules with its agent_name
LAB_LISTEN_PORT=51873
LAB_TUNNEL_CIDR=10.254.250.0/30
# The agent image under a tag of this suite's own: other engineers rebuilding
# connector-agent:dev mid-run would otherwise make the daemon replace its agent
# ("configuration differs") and blur what a case measures.
LIVE_SOURCE_IMAGE=${LAB_AGENT_IMAGE:-connector-agent:dev}
LAB_AGENT_IMAGE=connector-agent:e2e-live
# shellcheck source=tests/lab.sh
. "$(dirname "${BASH_SOURCE[0]}")/lab.sh"

# lab.sh fixes these; this suite has its own.
LAB_VM_IP=10.232.0.1
LAB_MAC_IP=10.232.0.2
LAB_EMU_TAG=connector-live-emulation
LAB_PROBE_TAG=connector-live-probe
LAB_LABEL_KEY=io.connector.live
LAB_LABEL="$LAB_LABEL_KEY=$LAB_PREFIX"
LAB_LOCK=${LAB_LOCK:-/run/connector-lab.lock}

P=$LAB_PREFIX
HOST_TUN_IP=10.254.250.1
NET_A="${P}-a";    SUBNET_A=10.232.16.0/24;    IP_A=10.232.16.10;    C_A="${P}-a1"
NET_L="${P}-live"; SUBNET_L=10.232.17.0/24;    IP_L=10.232.17.10;    C_L="${P}-l1"
NET_6="${P}-v6";   SUBNET_6=10.232.18.0/24;    SUBNET_6V6=fd00:232:18::/64   # dual stack, like kind's
BURST_N=20         # networks ${P}-burstN, 10.232.(64+N).0/24
CONFIG=""
DAEMON_T0_MS=""
LIVE_DOCKERD_STOPPED=0
LIVE_DOCKERD_CMD=()
LIVE_DOCKERD_LOG=/var/log/connector-lab-dockerd.log
TIMES=()           # "what|ms" recovery figures

# ------------------------------------------------------------------------ helpers
# The daemon's log lines (colours stripped) from T0-MS on.
live_log_since() { # T0-MS
  local since
  since=$(date -u -d "@$(( $1 / 1000 ))" +%Y-%m-%dT%H:%M:%S)
  sed -e 's/\x1b\[[0-9;]*m//g' "$LAB_DAEMON_LOG" | awk -v t="$since" 'substr($1, 1, 19) >= t'
}
# Other connector agents on this engine (a daemon removes agents of other names as strays).
other_agents() {
  docker ps -a --filter "label=io.connector.managed=true" --format '{{.Names}}' 2>/dev/null \
    | grep -v "^${LAB_AGENT_NAME}\$" || true
}
no_other_agents() { [ -z "$(other_agents)" ]; }
ms_since() { echo $(( $(now_ms) - $1 )); }
secs_fmt() { awk -v ms="$1" 'BEGIN { printf "%.1f s", ms / 1000 }'; }
record_time() { TIMES+=("$1|$2"); lab_log "TIME $1: $(secs_fmt "$2")"; }

connector() { ip netns exec "$LAB_NS" "$LAB_CONNECTOR" "$@" --config "$CONFIG"; }
# As user nobody (the control socket must let read-only requests through).
connector_nobody() {
  ip netns exec "$LAB_NS" setpriv --reuid=65534 --regid=65534 --clear-groups \
    "$LAB_CONNECTOR" "$@" --config "$CONFIG"
}
status_json() { # OUTFILE
  ip netns exec "$LAB_NS" timeout 20 "$LAB_CONNECTOR" status --json --config "$CONFIG" >"$1" 2>"$1.err"
}
status_field() { # FILE PYTHON-EXPR-ON-s
  python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2" 2>/dev/null
}

# Doctor in the Mac namespace (its probe step pings through the tunnel itself).
doctor() { # OUTFILE — returns doctor's exit status
  ip netns exec "$LAB_NS" timeout 90 "$LAB_CONNECTOR" doctor --config "$CONFIG" >"$1" 2>&1
}
# doctor_state FILE STEP — ok, FAIL, skip or missing
doctor_state() {
  awk -v s="$2" '($1 == "ok" || $1 == "FAIL" || $1 == "skip") && $2 == s { print $1; f = 1; exit } END { if (!f) print "missing" }' "$1"
}
doctor_first_failure() { awk '$1 == "FAIL" || $1 == "skip" { print $2; exit }' "$1"; }
doctor_brief() { grep -E '^(ok|FAIL|skip) ' "$1" | awk '{ printf "%s%s=%s", (NR > 1 ? " " : ""), $2, $1 }'; }

agent_id() { docker inspect -f '{{.Id}}' "$LAB_AGENT_NAME" 2>/dev/null; }
agent_running() { [ "$(docker inspect -f '{{.State.Running}}' "$LAB_AGENT_NAME" 2>/dev/null)" = true ]; }
agent_count() { docker ps -aq --filter "name=^/${LAB_AGENT_NAME}\$" | grep -c . || true; }
# The agent's tun in the VM, as the daemon told the agent (its --tun-name argument).
agent_tun() {
  docker inspect -f '{{range .Config.Cmd}}{{println .}}{{end}}' "$LAB_AGENT_NAME" 2>/dev/null \
    | awk 'p { print; exit } $0 == "--tun-name" { p = 1 }'
}

# Routes via the host tun in the Mac (not the tunnel's own connected route), sorted.
mac_tun_routes() { # both families, but not the kernel's own (tunnel network, link-local)
  { ip -n "$LAB_NS" -4 route show dev "$LAB_TUN" 2>/dev/null; ip -n "$LAB_NS" -6 route show dev "$LAB_TUN" 2>/dev/null; } \
    | grep -v -e 'proto kernel' -e '^fe80:' -e '^ff00:' -e '^multicast' \
    | awk '{ d = $1; if (d !~ /\//) d = d (d ~ /:/ ? "/128" : "/32"); print d }' | sort -u
}
# IPv4 and IPv6 subnets of all of Docker's bridge networks, sorted.
docker_bridge_subnets() {
  local ids
  ids=$(docker network ls -q --filter driver=bridge)
  [ -n "$ids" ] || return 0
  # shellcheck disable=SC2086
  docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' $ids 2>/dev/null \
    | tr ' ' '\n' | grep . | sort -u
}
routes_match_docker() { [ "$(mac_tun_routes)" = "$(docker_bridge_subnets)" ]; }
routes_diff() {
  diff <(docker_bridge_subnets) <(mac_tun_routes) | grep '^[<>]' \
    | sed -e 's/^</missing route:/' -e 's/^>/extra route:/' | paste -sd';' -
}

# A workload that Docker brings back after a restart, at a fixed address.
live_workload() { # NAME NET IP
  docker run -d --name "$1" --hostname "$1" --label "$LAB_LABEL" --network "$2" --ip "$3" \
    --restart unless-stopped --stop-timeout 2 "$LAB_WORKLOAD_IMAGE" /bin/serve "$1" >/dev/null
}

# wait_recovery LABEL T0-MS IP NAME DEADLINE-S — poll HTTP from the Mac until it answers;
# records the time since T0. Returns 1 if it did not answer within DEADLINE-S of now.
RECOVERY_MS=""
wait_recovery() {
  local what=$1 t0=$2 ip=$3 name=$4 secs=$5
  RECOVERY_MS=""
  if wait_until "$secs" http_probe_fast "$ip" "$name"; then
    RECOVERY_MS=$(ms_since "$t0")
    record_time "$what" "$RECOVERY_MS"
    return 0
  fi
  return 1
}

# ------------------------------------------------------------------- dockerd control
# Running containers, agents and lab namespaces that are not this run's.
foreign_activity() {
  docker ps --format '{{.Names}} {{.Label "'"$LAB_LABEL_KEY"'"}}' 2>/dev/null \
    | awk -v me="$P" -v agent="$LAB_AGENT_NAME" '$1 != agent && $2 != me { print "container " $1 }'
  local ns
  for ns in $(ip netns list 2>/dev/null | awk -v me="$LAB_NS" '$1 != me { print $1 }'); do
    [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] || echo "netns $ns (processes: $(ip netns pids "$ns" | paste -sd, -))"
  done
}

engine_quiet() { [ -z "$(foreign_activity)" ]; }

dockerd_pid() { pidof dockerd 2>/dev/null | awk '{ print $1 }'; }

# Stops dockerd (SIGTERM, as a system shutdown would); remembers how to start it again.
dockerd_stop() {
  local pid out
  pid=$(dockerd_pid)
  [ -n "$pid" ] || { lab_warn "no dockerd process"; return 1; }
  mapfile -d '' -t LIVE_DOCKERD_CMD <"/proc/$pid/cmdline"
  out=$(readlink "/proc/$pid/fd/1" 2>/dev/null || true)
  if [ -n "$out" ] && [ -f "$out" ]; then LIVE_DOCKERD_LOG=$out; fi
  LIVE_DOCKERD_STOPPED=1
  if pidof systemd >/dev/null 2>&1 && [ -d /run/systemd/system ] \
     && systemctl is-active --quiet docker 2>/dev/null; then
    LIVE_DOCKERD_CMD=(systemd)
    systemctl stop docker docker.socket >/dev/null 2>&1
  else
    kill -TERM "$pid"
  fi
  wait_until 60 lab_not_running "$pid"
}

# Starts dockerd again the way scripts/test does (setsid nohup, log appended).
dockerd_start() {
  if [ "${LIVE_DOCKERD_CMD[0]:-}" = systemd ]; then
    systemctl start docker >/dev/null 2>&1
  else
    [ ${#LIVE_DOCKERD_CMD[@]} -gt 0 ] || LIVE_DOCKERD_CMD=(dockerd)
    # 9>&-: dockerd and its children must not inherit the lab lock.
    setsid nohup "${LIVE_DOCKERD_CMD[@]}" >>"$LIVE_DOCKERD_LOG" 2>&1 </dev/null 9>&- &
  fi
}

docker_answers() { docker info >/dev/null 2>&1; }

# Makes sure dockerd runs again if this run stopped it (called on every exit path).
dockerd_restore() {
  [ "$LIVE_DOCKERD_STOPPED" = 1 ] || return 0
  if ! docker_answers; then
    [ -n "$(dockerd_pid)" ] || { lab_log "restoring dockerd: ${LIVE_DOCKERD_CMD[*]:-dockerd}"; dockerd_start; }
    wait_until 60 docker_answers || lab_warn "dockerd does not answer after the restore; see $LIVE_DOCKERD_LOG"
  fi
  LIVE_DOCKERD_STOPPED=0
}

# --------------------------------------------------------------------- setup/cleanup
live_cleanup() {
  local c
  if lab_daemon_alive; then lab_daemon_stop TERM 20 >/dev/null 2>&1 || true; fi
  dockerd_restore
  # This run's namespace and any a crashed earlier run of this suite left.
  lab_topologies_remove cnl
  if docker_answers; then
    lab_agent_remove
    for c in $(docker ps -aq --filter "label=$LAB_LABEL_KEY"); do docker rm -f "$c" >/dev/null 2>&1 || true; done
    for c in $(docker network ls -q --filter "label=$LAB_LABEL_KEY"); do docker network rm "$c" >/dev/null 2>&1 || true; done
  fi
  lab_delete_tagged "$LAB_EMU_TAG"
  lab_delete_tagged "$LAB_PROBE_TAG"
  lab_delete_tagged "$LAB_AGENT_TAG"
  if [ "$LIVE_CLEAN_IMAGE" = 1 ] && docker_answers; then docker rmi "$LAB_AGENT_IMAGE" >/dev/null 2>&1 || true; fi
}
LIVE_CLEAN_IMAGE=0

live_leftovers() {
  lab_topologies_left cnl
  if docker_answers; then
    docker ps -a --filter "label=$LAB_LABEL_KEY" --format 'container {{.Names}}'
    docker ps -a --filter "name=^/${LAB_AGENT_NAME}\$" --format 'container {{.Names}}'
    docker network ls --filter "label=$LAB_LABEL_KEY" --format 'network {{.Name}}'
  else
    echo "dockerd does not answer"
  fi
  lab_rules_tagged "$LAB_EMU_TAG" | sed 's/^/rule /'
  lab_rules_tagged "$LAB_PROBE_TAG" | sed 's/^/rule /'
  lab_rules_tagged "$LAB_AGENT_TAG" | sed 's/^/rule /'
}

live_exit_cleanup() { LIVE_CLEAN_IMAGE=1; live_cleanup; }
LAB_CLEANUP_FN=live_exit_cleanup
LAB_LEFTOVERS_FN=live_leftovers

live_init() {
  lab_init python3 setpriv busybox
  lab_need_images "$LAB_WORKLOAD_IMAGE" "$LIVE_SOURCE_IMAGE"
  docker tag "$LIVE_SOURCE_IMAGE" "$LAB_AGENT_IMAGE" || lab_die "docker tag $LIVE_SOURCE_IMAGE $LAB_AGENT_IMAGE"
  # A daemon removes agent containers of other names as strays: never run beside one.
  if [ -n "$(other_agents)" ]; then
    lab_log "other connector agents exist ($(other_agents | paste -sd, -)); waiting up to 10 min"
    wait_until 600 no_other_agents || lab_die "another connector agent is still there: $(other_agents | paste -sd, -)"
  fi
}

setup() {
  lab_log "topology: netns $LAB_NS ($LAB_MAC_IP) <-> $LAB_VETH_VM ($LAB_VM_IP) in the VM"
  lab_topology_up
  lab_log "network $NET_A ($SUBNET_A), workload $C_A ($IP_A)"
  lab_network "$NET_A" "$SUBNET_A"
  live_workload "$C_A" "$NET_A" "$IP_A"
  lab_log "dual-stack network $NET_6 ($SUBNET_6, $SUBNET_6V6)"
  lab_network "$NET_6" "$SUBNET_6" --ipv6 --subnet "$SUBNET_6V6"
  PROBE_NS='' wait_until 15 http_probe "$IP_A" "$C_A" 1 || lab_die "workload $C_A ($IP_A) does not answer HTTP even from the VM"
  lab_log "emulating Engine 28.2's firewall on $NET_A ($(lab_docker_ipt))"
  emulate_28_2 "$NET_A"
  CONFIG="$LAB_TMP/connector.toml"
  lab_write_config "$CONFIG"
  chmod 644 "$CONFIG"
  write_status_checker
}

# ----------------------------------------------------------------- case: start
case_before() {
  if http_probe "$IP_A" "$C_A" 1; then
    lab_fail "before connector: HTTP from the Mac to $C_A fails (28.2 firewall)" "it answered: the emulation is not effective"
  else
    lab_pass "before connector: HTTP from the Mac to $C_A fails (28.2 firewall)" "no answer"
  fi
}

case_start() {
  lab_daemon_start "$CONFIG"
  DAEMON_T0_MS=$LAB_DAEMON_STARTED_MS
  if wait_until 30 http_probe_fast "$IP_A" "$C_A"; then
    lab_pass "connector run: $C_A answers HTTP from the Mac" "after $(secs_fmt "$(ms_since "$DAEMON_T0_MS")")"
  else
    lab_fail "connector run: $C_A answers HTTP from the Mac" "no answer within 30 s (daemon alive: $(lab_daemon_alive && echo yes || echo no))"
  fi
}

# ------------------------------------------------------------ case: status --json
write_status_checker() {
  cat >"$LAB_TMP/check_status.py" <<'EOF'
"""Checks `connector status --json` field by field against the system.
argv: status.json; environment: the lab's names. Prints PASS/FAIL<TAB>field<TAB>detail."""
import ipaddress, json, os, subprocess, sys

E = os.environ
s = json.load(open(sys.argv[1]))
ns = E["NS"]

def sh(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()

def check(name, ok, detail):
    print(("PASS" if ok else "FAIL") + "\t" + name + "\t" + str(detail))

# daemon
version = sh(E["CONNECTOR"], "--version").split()[-1]
check("version", s["version"] == version, f"{s['version']!r} (connector --version: {version!r})")
up, max_up = s["uptime_secs"], int(E["MAX_UPTIME"])
check("uptime_secs", isinstance(up, int) and 0 <= up <= max_up, f"{up} (daemon started {max_up} s ago at most)")
# docker
check("docker_endpoint", s["docker_endpoint"] == "unix:///var/run/docker.sock", s["docker_endpoint"])
check("docker_reachable", s["docker_reachable"] is True, s["docker_reachable"])
engine = sh("docker", "version", "-f", "{{.Server.Version}}")
api = sh("docker", "version", "-f", "{{.Server.APIVersion}}")
check("engine_version", s["engine_version"] in (engine, f"{engine} (API {api})"),
      f"{s['engine_version']!r} (docker version: {engine!r}, API {api})")
# agent
a = s["agent"]
real_id = sh("docker", "inspect", "-f", "{{.Id}}", E["AGENT"])
real_image = sh("docker", "inspect", "-f", "{{.Config.Image}}", E["AGENT"])
real_running = sh("docker", "inspect", "-f", "{{.State.Running}}", E["AGENT"])
check("agent.name", a["name"] == E["AGENT"], a["name"])
check("agent.container_id", bool(real_id) and a["container_id"] == real_id,
      f"{a['container_id'][:12]} (docker inspect: {real_id[:12]}, running={real_running})")
check("agent.image", a["image"] == E["IMAGE"] == real_image, f"{a['image']} (docker inspect: {real_image})")
check("agent.adopted", a["adopted"] is (E["ADOPTED"] == "1"), a["adopted"])
check("agent.error", a["error"] is None, a["error"])
# firewall
f = s["firewall"]
check("firewall.all_present", f["all_present"] is True, f"{f['all_present']} {f['detail']}")
check("firewall.backend", f["backend"] == E["BACKEND"], f"{f['backend']!r} (Docker's chains are in {E['BACKEND']!r})")
# tunnel
t = s["tunnel"]
links = json.loads(sh("ip", "-n", ns, "-d", "-j", "link", "show") or "[]")
link = next((l for l in links if l.get("ifname") == t["interface"]), None)
kind = (link or {}).get("linkinfo", {}).get("info_kind")
check("tunnel.interface", link is not None and kind == "tun" and "UP" in link.get("flags", []),
      f"{t['interface']} (in the Mac: {'tun, ' + ','.join(link.get('flags', [])) if link else 'missing'})")
addrs = json.loads(sh("ip", "-n", ns, "-4", "-j", "addr", "show", "dev", t["interface"]) or "[]")
locals_ = [ai["local"] for x in addrs for ai in x.get("addr_info", [])]
check("tunnel.address", t["address"] == E["TUN_ADDR"] and t["address"].split("/")[0] in locals_,
      f"{t['address']} (on {t['interface']}: {locals_})")
listening = sh("ip", "netns", "exec", ns, "ss", "-H", "-uln")
check("tunnel.listen", t["listen"] == E["LISTEN"] and E["LISTEN"] in listening,
      f"{t['listen']} (a UDP socket listens there: {E['LISTEN'] in listening})")
ep = t["endpoint"] or ""
check("tunnel.endpoint", ep.rsplit(":", 1)[0] == E["VM_IP"], f"{ep!r} (the agent sends from the VM, {E['VM_IP']})")
hs, rx = t["last_handshake_secs"], t["last_received_secs"]
check("tunnel.last_handshake_secs", hs is not None and hs <= 180, f"{hs} (≤ 180: handshakes every 2 min)")
check("tunnel.last_received_secs", rx is not None and rx <= 45, f"{rx} (≤ 45: keepalive every 20 s)")
counters = {k: t[k] for k in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")}
check("tunnel counters", all(isinstance(v, int) and v > 0 for v in counters.values()), counters)
# networks
nets = s["networks"]
states = {n["state"] for n in nets}
check("networks[].state", states <= {"routed", "skipped", "excluded"} and
      all((n["reason"] is None) == (n["state"] == "routed") for n in nets),
      f"states {sorted(states)}; a reason exactly for the unrouted ones")
routes = set(E["MAC_ROUTES"].split())
routed = {str(ipaddress.ip_network(n["subnet"])) for n in nets if n["state"] == "routed"}
check("networks routed = routes via the tun", routed == routes,
      f"{len(routed)} routed; missing routes {sorted(routed - routes)}; extra routes {sorted(routes - routed)}")
docker_nets = set()
for line in E["DOCKER_NETS"].splitlines():
    name, *subnets = line.split()
    docker_nets |= {(name, str(ipaddress.ip_network(x))) for x in subnets}
listed = {(n["name"], str(ipaddress.ip_network(n["subnet"]))) for n in nets}
check("networks = Docker's bridge networks", docker_nets == listed,
      f"{len(listed)} listed; not listed {sorted(docker_nets - listed)}; unknown {sorted(listed - docker_nets)}")
v6 = [(n["subnet"], n["state"], n["reason"]) for n in nets if n["name"] == E["V6_NET"]]
check(f"network {E['V6_NET']} (dual stack): IPv4 and IPv6 routed",
      sorted((ipaddress.ip_network(x).version, st) for x, st, _ in v6) == [(4, "routed"), (6, "routed")], v6)
for name in E["LAB_NETS"].split():
    mine = [n for n in nets if n["name"] == name]
    check(f"network {name} routed", bool(mine) and all(n["state"] == "routed" for n in mine),
          [(n["subnet"], n["state"], n["reason"]) for n in mine] or "not listed")
EOF
}

# check_status NAME-PREFIX FILE ADOPTED — runs the checker; one case per field.
check_status() {
  local prefix=$1 file=$2 adopted=$3 line verdict field detail nets
  nets=$(docker network ls -q --filter driver=bridge | xargs -r docker network inspect \
           -f '{{.Name}} {{range .IPAM.Config}}{{.Subnet}} {{end}}' 2>/dev/null)
  while IFS=$'\t' read -r verdict field detail; do
    case "$verdict" in
      PASS) lab_pass "$prefix: $field" "$detail" ;;
      FAIL) lab_fail "$prefix: $field" "$detail" ;;
      *) [ -z "$verdict" ] || lab_fail "$prefix: checker output" "$verdict $field $detail" ;;
    esac
  done < <(NS="$LAB_NS" CONNECTOR="$LAB_CONNECTOR" AGENT="$LAB_AGENT_NAME" IMAGE="$LAB_AGENT_IMAGE" \
             ADOPTED="$adopted" MAX_UPTIME=$(( $(ms_since "$DAEMON_T0_MS") / 1000 + 2 )) \
             BACKEND="$(lab_docker_ipt | sed 's/^iptables-//')" \
             TUN_ADDR="$HOST_TUN_IP/${LAB_TUNNEL_CIDR#*/}" LISTEN="$LAB_MAC_IP:$LAB_LISTEN_PORT" \
             VM_IP="$LAB_VM_IP" MAC_ROUTES="$(mac_tun_routes)" DOCKER_NETS="$nets" \
             LAB_NETS="bridge $NET_A" V6_NET="$NET_6" python3 "$LAB_TMP/check_status.py" "$file" 2>&1)
}

case_status_json() {
  local f1="$LAB_TMP/status-1.json" f2="$LAB_TMP/status-2.json" rc
  # Let a first keepalive/handshake settle so every counter has moved.
  wait_until 10 http_probe "$IP_A" "$C_A" 2 || true
  status_json "$f1"; rc=$?
  if [ "$rc" != 0 ] || ! python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$f1" 2>/dev/null; then
    lab_fail "status --json: exit 0 and valid JSON" "exit $rc, stdout: $(head -c 300 "$f1"), stderr: $(head -c 300 "$f1.err")"
    return
  fi
  lab_pass "status --json: exit 0 and valid JSON" "$(wc -c <"$f1") bytes"
  check_status "status --json" "$f1" 0
  # The counters follow real traffic.
  local i
  for i in 1 2 3 4 5; do http_probe "$IP_A" "$C_A" 2 || true; done
  status_json "$f2"
  local rx1 rx2 tx1 tx2
  rx1=$(status_field "$f1" 's["tunnel"]["rx_bytes"]'); rx2=$(status_field "$f2" 's["tunnel"]["rx_bytes"]')
  tx1=$(status_field "$f1" 's["tunnel"]["tx_bytes"]'); tx2=$(status_field "$f2" 's["tunnel"]["tx_bytes"]')
  if [ -n "$rx2" ] && [ -n "$tx2" ] && [ "$rx2" -gt "${rx1:-0}" ] && [ "$tx2" -gt "${tx1:-0}" ]; then
    lab_pass "status --json: rx/tx bytes grow with traffic through the tunnel" "rx $rx1 -> $rx2, tx $tx1 -> $tx2 after 5 HTTP requests"
  else
    lab_fail "status --json: rx/tx bytes grow with traffic through the tunnel" "rx $rx1 -> $rx2, tx $tx1 -> $tx2 after 5 HTTP requests"
  fi
}

case_status_nonroot() {
  local out="$LAB_TMP/status-nobody" rc id
  connector_nobody status --json >"$out.json" 2>"$out.err"; rc=$?
  id=$(status_field "$out.json" 's["agent"]["container_id"]')
  if [ "$rc" = 0 ] && [ -n "$id" ] && [ "$id" = "$(agent_id)" ]; then
    lab_pass "status --json as user nobody works (read-only)" "exit 0, agent ${id:0:12}"
  else
    lab_fail "status --json as user nobody works (read-only)" "exit $rc, stdout: $(head -c 200 "$out.json"), stderr: $(head -c 300 "$out.err")"
  fi
  connector_nobody status >"$out.txt" 2>"$out.txt.err"; rc=$?
  if [ "$rc" = 0 ] && grep -q "$LAB_AGENT_NAME" "$out.txt"; then
    lab_pass "status (table) as user nobody works" "exit 0, names $LAB_AGENT_NAME"
  else
    lab_fail "status (table) as user nobody works" "exit $rc, stdout: $(head -c 200 "$out.txt"), stderr: $(head -c 300 "$out.txt.err")"
  fi
  local before after
  before=$(mac_tun_routes)
  connector_nobody sync-networks >"$out.sync" 2>"$out.sync.err"; rc=$?
  after=$(mac_tun_routes)
  if [ "$rc" != 0 ] && grep -qi "permission denied" "$out.sync.err" && [ "$before" = "$after" ]; then
    lab_pass "sync-networks as user nobody is refused with a permission error" "exit $rc: $(head -n 1 "$out.sync.err")"
  else
    lab_fail "sync-networks as user nobody is refused with a permission error" "exit $rc, stdout: $(head -c 200 "$out.sync"), stderr: $(head -c 300 "$out.sync.err")"
  fi
}

# ------------------------------------------------------------------- case: doctor
DOCTOR_STEPS="config daemon docker agent handshake routes conflicts vm-rules probe"

case_doctor_healthy() {
  local out="$LAB_TMP/doctor-healthy.out" rc s bad=""
  doctor "$out"; rc=$?
  for s in $DOCTOR_STEPS; do
    [ "$(doctor_state "$out" "$s")" = ok ] || bad="$bad $s=$(doctor_state "$out" "$s")"
  done
  if [ "$rc" = 0 ] && [ -z "$bad" ]; then
    lab_pass "doctor on the healthy lab: exit 0, every step ok" "$(doctor_brief "$out")"
  else
    lab_fail "doctor on the healthy lab: exit 0, every step ok" "exit $rc,$bad; output: $(tr '\n' '|' <"$out" | head -c 600)"
  fi
}

# Steps before STEP must be ok.
doctor_ok_before() { # FILE STEP
  local s
  for s in $DOCTOR_STEPS; do
    [ "$s" = "$2" ] && return 0
    [ "$(doctor_state "$1" "$s")" = ok ] || return 1
  done
}

agent_raw_rule_present() { # TUN
  [ -n "$(lab_rules_tagged "$LAB_AGENT_TAG" | awk -v t="$1" '$2 == "raw" && / -A PREROUTING / && index($0, " -i " t " ")')" ]
}

case_doctor_vm_rule() {
  local out="$LAB_TMP/doctor-vm-rule.out" rc attempt rule v table ok=0 tun
  tun=$(agent_tun)
  for attempt in 1 2 3; do
    # The agent's raw PREROUTING accept for its tun (it re-asserts its rules every 10 s:
    # delete it and ask doctor at once; retry if the agent won the race).
    read -r v table rule < <(lab_rules_tagged "$LAB_AGENT_TAG" | awk '$2 == "raw" && / -A PREROUTING /')
    if [ -z "${rule:-}" ]; then
      wait_until 12 agent_raw_rule_present "$tun"
      continue
    fi
    eval "iptables-$v -w -t raw ${rule/#-A /-D }" || { lab_warn "could not delete: $rule"; continue; }
    doctor "$out"; rc=$?
    if [ "$(doctor_state "$out" vm-rules)" = FAIL ]; then ok=1; break; fi
    lab_log "attempt $attempt: doctor did not see the deleted rule (re-asserted first?): $(doctor_brief "$out")"
    sleep 1
  done
  if [ "$ok" = 1 ] && [ "$rc" = 1 ] && doctor_ok_before "$out" vm-rules; then
    lab_pass "doctor with the agent's raw PREROUTING rule deleted: exit 1, vm-rules is the step that FAILs" \
      "$(doctor_brief "$out"); $(grep -A1 '^FAIL  vm-rules' "$out" | tr -s ' ' | paste -sd' ' - | head -c 300)"
  else
    lab_fail "doctor with the agent's raw PREROUTING rule deleted: exit 1, vm-rules is the step that FAILs" \
      "exit ${rc:-?}, first failure: $(doctor_first_failure "$out"); $(doctor_brief "$out"); rule: ${rule:-none found}"
  fi
  if grep -A1 '^FAIL  vm-rules' "$out" | grep -q '^ *fix: '; then
    lab_pass "doctor prints a fix under the vm-rules failure" "$(grep -A1 '^FAIL  vm-rules' "$out" | grep 'fix:' | sed 's/^ *//')"
  else
    lab_fail "doctor prints a fix under the vm-rules failure" "$(tr '\n' '|' <"$out" | head -c 400)"
  fi
  # The agent puts it back by itself (every 10 s).
  if wait_until 15 agent_raw_rule_present "$tun"; then
    lab_pass "the deleted VM rule is back within 15 s (the agent re-asserts it)" "raw PREROUTING -i $tun ACCEPT present"
  else
    lab_fail "the deleted VM rule is back within 15 s (the agent re-asserts it)" "still missing"
  fi
  if wait_until 15 http_probe_fast "$IP_A" "$C_A"; then
    lab_pass "after the rule is back: $C_A answers HTTP" "ok"
  else
    lab_fail "after the rule is back: $C_A answers HTTP" "no answer"
  fi
}

case_doctor_agent_stopped() {
  local out="$LAB_TMP/doctor-agent-stopped.out" rc attempt ok=0
  for attempt in 1 2 3; do
    wait_until 30 agent_running || true
    docker stop -t 10 "$LAB_AGENT_NAME" >/dev/null 2>&1
    doctor "$out"; rc=$?
    if [ "$(doctor_state "$out" agent)" = FAIL ]; then ok=1; break; fi
    lab_log "attempt $attempt: the agent was healed before doctor looked: $(doctor_brief "$out")"
  done
  if [ "$ok" = 1 ] && [ "$rc" = 1 ] && doctor_ok_before "$out" agent; then
    lab_pass "doctor with the agent stopped: exit 1, agent is the step that FAILs" \
      "$(doctor_brief "$out"); $(grep -A1 '^FAIL  agent' "$out" | tr -s ' ' | paste -sd' ' - | head -c 300)"
  else
    lab_fail "doctor with the agent stopped: exit 1, agent is the step that FAILs" \
      "exit $rc, first failure: $(doctor_first_failure "$out"); $(tr '\n' '|' <"$out" | head -c 600)"
  fi
  # The daemon heals it; doctor passes again.
  local t0
  t0=$(now_ms)
  if wait_until 45 doctor "$LAB_TMP/doctor-healed.out"; then
    lab_pass "after the daemon replaces the stopped agent, doctor passes again" "exit 0 after $(secs_fmt "$(ms_since "$t0")")"
  else
    lab_fail "after the daemon replaces the stopped agent, doctor passes again" "$(doctor_brief "$LAB_TMP/doctor-healed.out")"
  fi
}

# --------------------------------------------------------- case: live networks
case_live_network() {
  local t0 t_route
  t0=$(now_ms)
  lab_network "$NET_L" "$SUBNET_L"
  emulate_28_2 "$NET_L"   # Engine 28.2 adds its rules with the network
  live_workload "$C_L" "$NET_L" "$IP_L"
  if wait_until 10 mac_has_route "$SUBNET_L"; then
    t_route=$(ms_since "$t0")
    record_time "network create -> route in the Mac (incl. docker run)" "$t_route"
  fi
  if wait_until 15 http_probe_fast "$IP_L" "$C_L"; then
    record_time "network create -> first HTTP reply (incl. docker run)" "$(ms_since "$t0")"
    lab_pass "network created while running: reachable without any command" "HTTP to $C_L ($IP_L) after $(secs_fmt "$(ms_since "$t0")"), route via $(ip -n "$LAB_NS" route show "$SUBNET_L" | awk '{print $3}')"
  else
    lab_fail "network created while running: reachable without any command" "no HTTP from $IP_L within 15 s; route: $(ip -n "$LAB_NS" route show "$SUBNET_L")"
  fi
  docker rm -f "$C_L" >/dev/null
  emulation_remove_net "$NET_L"
  t0=$(now_ms)
  docker network rm "$NET_L" >/dev/null
  if wait_until 5 mac_lacks_route "$SUBNET_L"; then
    record_time "network rm -> route gone" "$(ms_since "$t0")"
    lab_pass "network removed while running: its route is gone from the Mac" "after $(secs_fmt "$(ms_since "$t0")")"
  else
    lab_fail "network removed while running: its route is gone from the Mac" "$(ip -n "$LAB_NS" route show "$SUBNET_L")"
  fi
  if http_probe "$IP_A" "$C_A" 2; then
    lab_pass "network removed: the other networks stay reachable" "HTTP to $C_A"
  else
    lab_fail "network removed: the other networks stay reachable" "HTTP to $C_A fails"
  fi
}
mac_has_route() { ip -n "$LAB_NS" route show "$1" | grep -q "dev $LAB_TUN"; }
mac_lacks_route() { ! ip -n "$LAB_NS" route show "$1" | grep -q .; }

case_burst() {
  local i pids=() t0 errs="$LAB_TMP/burst.err"
  : >"$errs"
  routes_match_docker || lab_warn "before the burst the routes already differ: $(routes_diff)"
  t0=$(now_ms)
  # 20 creates in parallel; every odd one is removed again as soon as it exists.
  for i in $(seq 0 $((BURST_N - 1))); do
    (
      n="${P}-burst$i"
      docker network create --driver bridge --label "$LAB_LABEL" --subnet "10.232.$((64 + i)).0/24" "$n" >/dev/null 2>>"$errs" || exit 0
      if [ $((i % 2)) = 1 ]; then docker network rm "$n" >/dev/null 2>>"$errs"; fi
    ) &
    pids+=($!)
  done
  wait "${pids[@]}"
  local made
  made=$(docker network ls --filter "label=$LAB_LABEL" --format '{{.Name}}' | grep -c -- '-burst' || true)
  lab_log "burst: $BURST_N created, odd ones removed, $(ms_since "$t0") ms; $made left; docker errors: $(grep -c . "$errs")"
  local t1
  t1=$(now_ms)
  if wait_until 15 routes_match_docker; then
    record_time "burst of $BURST_N create/rm -> routes settled" "$(ms_since "$t1")"
    lab_pass "burst of $BURST_N networks created (half removed at once): routes via the tun = Docker's bridge networks" \
      "$(mac_tun_routes | grep -c .) routes, settled $(secs_fmt "$(ms_since "$t1")") after the last docker command"
  else
    lab_fail "burst of $BURST_N networks created (half removed at once): routes via the tun = Docker's bridge networks" "after 15 s: $(routes_diff)"
  fi
  # Remove the rest, all at once.
  pids=()
  for n in $(docker network ls --filter "label=$LAB_LABEL" --format '{{.Name}}' | grep -- '-burst'); do
    docker network rm "$n" >/dev/null 2>>"$errs" &
    pids+=($!)
  done
  [ ${#pids[@]} = 0 ] || wait "${pids[@]}"
  t1=$(now_ms)
  if wait_until 15 routes_match_docker; then
    record_time "burst removal -> routes settled" "$(ms_since "$t1")"
    lab_pass "burst: the remaining networks removed at once: routes via the tun = Docker's bridge networks" "settled $(secs_fmt "$(ms_since "$t1")")"
  else
    lab_fail "burst: the remaining networks removed at once: routes via the tun = Docker's bridge networks" "after 15 s: $(routes_diff)"
  fi
  local stale
  stale=$(mac_tun_routes | grep -E '^10\.232\.(6[4-9]|7[0-9]|8[0-3])\.' || true)
  if [ -z "$stale" ]; then
    lab_pass "burst: no route left for any burst network" "none"
  else
    lab_fail "burst: no route left for any burst network" "$(echo "$stale" | paste -sd, -)"
  fi
  if http_probe "$IP_A" "$C_A" 2; then
    lab_pass "burst: $C_A still answers HTTP" "ok"
  else
    lab_fail "burst: $C_A still answers HTTP" "no answer"
  fi
}

# ------------------------------------------------------------ case: agent healing
one_agent_running() {
  local n
  n=$(docker ps -aq --filter "name=^/${LAB_AGENT_NAME}" | grep -c . || true)
  [ "$n" = 1 ] && agent_running
}

status_names_agent() { # FILE
  status_json "$1" && [ "$(status_field "$1" 's["agent"]["container_id"]')" = "$(agent_id)" ]
}

after_heal_checks() { # WHAT
  if wait_until 10 one_agent_running; then
    lab_pass "$1: exactly one agent container, running" "$(docker ps -a --filter "name=^/${LAB_AGENT_NAME}" --format '{{.Names}} {{.Status}}' | paste -sd, -)"
  else
    lab_fail "$1: exactly one agent container, running" "$(docker ps -a --filter "name=^/${LAB_AGENT_NAME}" --format '{{.Names}} {{.Status}}' | paste -sd, -)"
  fi
  local f="$LAB_TMP/status-after-heal.json" id
  if wait_until 10 status_names_agent "$f"; then
    lab_pass "$1: status names the running agent container" "$(agent_id | cut -c1-12)"
  else
    id=$(status_field "$f" 's["agent"]["container_id"]')
    lab_fail "$1: status names the running agent container" "status: ${id:0:12}, docker: $(agent_id | cut -c1-12)"
  fi
}

case_agent_kill() {
  local t0 pid id_before
  wait_until 30 one_agent_running || lab_warn "agent not running before the kill case"
  wait_until 10 http_probe_fast "$IP_A" "$C_A" || lab_warn "$C_A not answering before the kill case"
  id_before=$(agent_id)
  pid=$(docker inspect -f '{{.State.Pid}}' "$LAB_AGENT_NAME")
  t0=$(now_ms)
  docker kill "$LAB_AGENT_NAME" >/dev/null
  wait_until 5 lab_not_running "$pid" || lab_warn "agent pid $pid still alive 5 s after docker kill"
  if wait_recovery "agent docker kill -> HTTP again" "$t0" "$IP_A" "$C_A" 30; then
    lab_pass "agent killed (docker kill): the tunnel works again within 30 s" \
      "HTTP after $(secs_fmt "$RECOVERY_MS") ($( [ "$(agent_id)" = "$id_before" ] && echo 'same container restarted' || echo 'new container'))"
  else
    lab_fail "agent killed (docker kill): the tunnel works again within 30 s" "no HTTP from $C_A; agent: $(docker ps -a --filter "name=^/${LAB_AGENT_NAME}" --format '{{.Status}}')"
  fi
  after_heal_checks "after docker kill"
}

case_agent_rm() {
  local t0 id_before id_after
  wait_until 30 one_agent_running || lab_warn "agent not running before the rm case"
  wait_until 10 http_probe_fast "$IP_A" "$C_A" || lab_warn "$C_A not answering before the rm case"
  id_before=$(agent_id)
  t0=$(now_ms)
  docker rm -f "$LAB_AGENT_NAME" >/dev/null
  if wait_recovery "agent docker rm -f -> HTTP again" "$t0" "$IP_A" "$C_A" 30; then
    id_after=$(agent_id)
    if [ -n "$id_after" ] && [ "$id_after" != "$id_before" ]; then
      lab_pass "agent removed (docker rm -f): a new agent container, the tunnel works within 30 s" \
        "HTTP after $(secs_fmt "$RECOVERY_MS"), container ${id_before:0:12} -> ${id_after:0:12}"
    else
      lab_fail "agent removed (docker rm -f): a new agent container, the tunnel works within 30 s" "HTTP works but container id ${id_after:0:12} (before ${id_before:0:12})"
    fi
  else
    lab_fail "agent removed (docker rm -f): a new agent container, the tunnel works within 30 s" "no HTTP from $C_A; agent: $(docker ps -a --filter "name=^/${LAB_AGENT_NAME}" --format '{{.Status}}')"
  fi
  after_heal_checks "after docker rm -f"
}

case_vm_tun_deleted() {
  local t0 tun
  wait_until 30 one_agent_running || lab_warn "agent not running before the tun case"
  wait_until 10 http_probe_fast "$IP_A" "$C_A" || lab_warn "$C_A not answering before the tun case"
  tun=$(agent_tun)
  if [ -z "$tun" ] || ! ip link show "$tun" >/dev/null 2>&1; then
    lab_fail "agent's tun deleted in the VM (VM reset): healed within 30 s" "no agent tun '${tun}' in the VM namespace"
    return
  fi
  t0=$(now_ms)
  ip link del "$tun"
  if wait_recovery "agent tun deleted in the VM -> HTTP again" "$t0" "$IP_A" "$C_A" 30; then
    lab_pass "agent's tun deleted in the VM (VM reset): healed within 30 s" "HTTP after $(secs_fmt "$RECOVERY_MS"); $tun $(ip link show "$tun" >/dev/null 2>&1 && echo 'is back' || echo 'still missing')"
  else
    lab_fail "agent's tun deleted in the VM (VM reset): healed within 30 s" "no HTTP from $C_A; $tun $(ip link show "$tun" >/dev/null 2>&1 && echo exists || echo missing); agent: $(docker ps -a --filter "name=^/${LAB_AGENT_NAME}" --format '{{.Status}}')"
  fi
  after_heal_checks "after the VM tun was deleted"
}

# A dead data path with a live Docker socket (the VM suspended by Resource Saver or
# sleep): the agent container is frozen, nothing comes through the tunnel any more, and
# only the daemon's silence check can notice. (Docker resumes a paused container to
# deliver a signal, so here the nudge after 25 s of silence — SIGUSR1 — is what heals.)
case_agent_frozen() {
  local t0 id_before
  wait_until 30 one_agent_running || lab_warn "agent not running before the frozen case"
  wait_until 10 http_probe_fast "$IP_A" "$C_A" || lab_warn "$C_A not answering before the frozen case"
  id_before=$(agent_id)
  t0=$(now_ms)
  docker pause "$LAB_AGENT_NAME" >/dev/null
  if http_probe "$IP_A" "$C_A" 2; then
    lab_warn "HTTP still answers with the agent paused"
  fi
  if wait_recovery "agent frozen (docker pause) -> HTTP again" "$t0" "$IP_A" "$C_A" 90; then
    lab_pass "agent frozen (docker pause: dead data path, live socket): detected, the tunnel works within 90 s" \
      "HTTP after $(secs_fmt "$RECOVERY_MS"), container ${id_before:0:12} -> $(agent_id | cut -c1-12); daemon: $(live_log_since "$t0" | grep -oE 'agent silent; asking it to handshake again|no datagram from the agent; replacing it' | head -n 1)"
  else
    lab_fail "agent frozen (docker pause: dead data path, live socket): detected, the tunnel works within 90 s" \
      "no HTTP; agent: $(docker ps -a --filter "name=^/${LAB_AGENT_NAME}" --format '{{.ID}} {{.Status}}' | paste -sd, -)"
  fi
  docker unpause "$LAB_AGENT_NAME" >/dev/null 2>&1 || true
  after_heal_checks "after the frozen agent"
  local f="$LAB_TMP/status-after-frozen.json" rx
  status_json "$f"
  rx=$(status_field "$f" 's["tunnel"]["last_received_secs"]')
  if [ -n "$rx" ] && [ "$rx" != None ] && [ "$rx" -le 45 ]; then
    lab_pass "after the frozen agent: status shows a recent datagram" "last_received_secs $rx"
  else
    lab_fail "after the frozen agent: status shows a recent datagram" "last_received_secs $rx"
  fi
}

# The UDP mapping is lost (Docker Desktop forgets idle mappings): the agent lives, but its
# datagrams no longer arrive. A new handshake from the same socket does not help; the
# daemon must replace the agent (45 s of silence), whose new socket gets through.
case_udp_mapping_lost() {
  local t0 id_before f="$LAB_TMP/status-before-udp-loss.json" ep port
  wait_until 30 one_agent_running || lab_warn "agent not running before the UDP case"
  wait_until 10 http_probe_fast "$IP_A" "$C_A" || lab_warn "$C_A not answering before the UDP case"
  status_json "$f"
  ep=$(status_field "$f" 's["tunnel"]["endpoint"]')
  port=${ep##*:}
  if ! [[ "$port" =~ ^[0-9]+$ ]]; then
    lab_fail "UDP mapping lost (agent's datagrams dropped): agent replaced, the tunnel works within 90 s" "no endpoint in status: $ep"
    return
  fi
  id_before=$(agent_id)
  t0=$(now_ms)
  mac iptables -w -I INPUT -p udp -s "$LAB_VM_IP" --sport "$port" -j DROP
  if wait_recovery "UDP mapping lost -> agent replaced -> HTTP again" "$t0" "$IP_A" "$C_A" 90; then
    local id_after
    id_after=$(agent_id)
    if [ "$id_after" != "$id_before" ]; then
      lab_pass "UDP mapping lost (agent's datagrams dropped): agent replaced, the tunnel works within 90 s" \
        "HTTP after $(secs_fmt "$RECOVERY_MS"), container ${id_before:0:12} -> ${id_after:0:12}"
    else
      lab_fail "UDP mapping lost (agent's datagrams dropped): agent replaced, the tunnel works within 90 s" \
        "HTTP after $(secs_fmt "$RECOVERY_MS") but the same container ${id_after:0:12}: the drop rule is not effective"
    fi
  else
    lab_fail "UDP mapping lost (agent's datagrams dropped): agent replaced, the tunnel works within 90 s" \
      "no HTTP; agent: $(docker ps -a --filter "name=^/${LAB_AGENT_NAME}" --format '{{.ID}} {{.Status}}' | paste -sd, -)"
  fi
  mac iptables -w -D INPUT -p udp -s "$LAB_VM_IP" --sport "$port" -j DROP 2>/dev/null || true
  local why
  why=$(live_log_since "$t0" | grep -E 'agent silent|no datagram from the agent|replacing agent container' | sed -E 's/^[^ ]+ +[A-Z]+ +//' | paste -sd';' -)
  if [ "$(live_log_since "$t0" | grep -c 'no datagram from the agent; replacing it')" -gt 0 ]; then
    lab_pass "UDP mapping lost: the daemon replaced the agent because it was silent (log)" "$why"
  else
    lab_fail "UDP mapping lost: the daemon replaced the agent because it was silent (log)" "no 'no datagram from the agent; replacing it' in the log since the drop; ${why:-nothing}"
  fi
  after_heal_checks "after the lost UDP mapping"
}

# ------------------------------------------------------------ case: dockerd restart
case_dockerd_restart() {
  local name="dockerd restarted: the tunnel works again" left t_stop t_start t_up pid
  if [ "${LIVE_SKIP_DOCKERD:-0}" = 1 ]; then lab_log "LIVE_SKIP_DOCKERD=1: skipped"; return; fi
  left=$(foreign_activity)
  if [ -n "$left" ]; then
    lab_log "waiting (up to ${LIVE_QUIET_WAIT:-600} s) for a quiet engine before restarting dockerd:"
    echo "$left" | sed 's/^/    /'
    if ! wait_until "${LIVE_QUIET_WAIT:-600}" engine_quiet; then
      lab_fail "$name" "not run: other tests keep using the engine: $(foreign_activity | paste -sd, -)"
      return
    fi
  fi
  wait_until 10 http_probe_fast "$IP_A" "$C_A" || lab_warn "$C_A not answering before the dockerd restart"
  pid=$(dockerd_pid)
  lab_log "stopping dockerd (pid $pid)"
  t_stop=$(now_ms)
  if ! dockerd_stop; then
    lab_fail "$name" "dockerd (pid $pid) did not stop within 60 s"
    return
  fi
  record_time "dockerd stop (SIGTERM -> exited)" "$(ms_since "$t_stop")"
  # While Docker is away the daemon stays up, says so, and keeps its routes.
  local f="$LAB_TMP/status-docker-down.json"
  if wait_until 10 status_says_reachable "$f" False; then
    lab_pass "while dockerd is down: status answers, docker_reachable false" "ok"
  else
    lab_fail "while dockerd is down: status answers, docker_reachable false" "$(head -c 300 "$f") $(head -c 200 "$f.err" 2>/dev/null)"
  fi
  if mac_has_route "$SUBNET_A"; then
    lab_pass "while dockerd is down: the routes stay" "$SUBNET_A via $LAB_TUN"
  else
    lab_fail "while dockerd is down: the routes stay" "no route for $SUBNET_A"
  fi
  t_start=$(now_ms)
  dockerd_start
  if ! wait_until 60 docker_answers; then
    lab_fail "$name" "dockerd does not answer within 60 s of its start (log $LIVE_DOCKERD_LOG)"
    return
  fi
  t_up=$(now_ms)
  LIVE_DOCKERD_STOPPED=0
  record_time "dockerd start -> engine answers" "$((t_up - t_start))"
  # Engine 28.2 re-creates its rules at start; 20.10 flushes the DOCKER chain.
  emulate_28_2 "$NET_A"
  if wait_recovery "dockerd start -> HTTP through the tunnel" "$t_start" "$IP_A" "$C_A" 60; then
    local from_up=$(( $(now_ms) - t_up ))
    record_time "engine answers -> HTTP through the tunnel" "$from_up"
    record_time "dockerd stop -> HTTP through the tunnel (whole outage)" "$(ms_since "$t_stop")"
    if [ "$from_up" -le 30000 ]; then
      lab_pass "$name (HTTP to $C_A) within 30 s of the engine answering" "$(secs_fmt "$from_up") after the engine answered, $(secs_fmt "$RECOVERY_MS") after dockerd started"
    else
      lab_fail "$name (HTTP to $C_A) within 30 s of the engine answering" "took $(secs_fmt "$from_up")"
    fi
  else
    lab_fail "$name (HTTP to $C_A) within 30 s of the engine answering" "no HTTP within 60 s; agent: $(docker ps -a --filter "name=^/${LAB_AGENT_NAME}" --format '{{.Status}}'); $C_A: $(docker ps -a --filter "name=^/$C_A\$" --format '{{.Status}}')"
  fi
  if wait_until 10 status_says_reachable "$f" True; then
    lab_pass "after the dockerd restart: status says docker_reachable true" "ok"
  else
    lab_fail "after the dockerd restart: status says docker_reachable true" "$(head -c 300 "$f")"
  fi
  after_heal_checks "after the dockerd restart"
  if grep -q "Docker is unreachable" "$LAB_DAEMON_LOG" && grep -q "Docker is reachable again" "$LAB_DAEMON_LOG"; then
    local downs
    downs=$(grep -c "Docker is unreachable; retrying" "$LAB_DAEMON_LOG")
    if [ "$downs" -le 1 ]; then
      lab_pass "daemon log: Docker's absence logged once per state change" "1 'unreachable', $(grep -c 'Docker is reachable again' "$LAB_DAEMON_LOG") 'reachable again'"
    else
      lab_fail "daemon log: Docker's absence logged once per state change" "$downs 'unreachable' lines for one outage"
    fi
  else
    lab_fail "daemon log: Docker's absence logged once per state change" "no 'Docker is unreachable' / 'reachable again' pair in $LAB_DAEMON_LOG"
  fi
}
status_says_reachable() { # FILE True|False
  status_json "$1" && [ "$(status_field "$1" 's["docker_reachable"]')" = "$2" ]
}

# ---------------------------------------------------------------- final checks
case_final() {
  local out="$LAB_TMP/doctor-final.out"
  if wait_until 30 doctor "$out"; then
    lab_pass "at the end: doctor passes" "$(doctor_brief "$out")"
  else
    lab_fail "at the end: doctor passes" "$(tr '\n' '|' <"$out" | head -c 600)"
  fi
  if wait_until 15 routes_match_docker; then
    lab_pass "at the end: routes via the tun = Docker's bridge networks" "$(mac_tun_routes | paste -sd, -)"
  else
    lab_fail "at the end: routes via the tun = Docker's bridge networks" "$(routes_diff)"
  fi
  local n
  n=$(grep -c "agent container started" "$LAB_DAEMON_LOG" || true)
  lab_log "the daemon started $n agent container(s) during the run"
  if lab_daemon_stop TERM 30 && [ "$LAB_DAEMON_RC" = 0 ]; then
    lab_pass "SIGTERM at the end: the daemon exits 0" "ok"
  else
    lab_fail "SIGTERM at the end: the daemon exits 0" "exit ${LAB_DAEMON_RC:-?}"
  fi
  if [ "$(agent_count)" = 0 ] && [ -z "$(lab_rules_tagged "$LAB_AGENT_TAG")" ]; then
    lab_pass "after SIGTERM: no agent container and no rule tagged $LAB_AGENT_TAG" "none"
  else
    lab_fail "after SIGTERM: no agent container and no rule tagged $LAB_AGENT_TAG" "$(agent_count) containers; $(lab_rules_tagged "$LAB_AGENT_TAG" | paste -sd';' -)"
  fi
}


# --------------------------------------------------------------------------- main
ALL_CASES=(case_before case_start case_status_json case_status_nonroot case_doctor_healthy
           case_doctor_vm_rule case_doctor_agent_stopped case_live_network case_burst
           case_agent_kill case_agent_rm case_vm_tun_deleted case_agent_frozen case_udp_mapping_lost case_dockerd_restart
           case_final)
# Every case needs the daemon that case_start starts.
if [ $# -gt 0 ] && [[ " $* " != *" case_start "* ]]; then set -- case_start "$@"; fi
lab_select_cases e2e-live "$@"
live_init
setup
lab_cases_loop

echo
echo "==== recovery and convergence times (measured, not asserted beyond the deadlines) ===="
for t in "${TIMES[@]}"; do
  printf '  %-62s %s\n' "${t%%|*}" "$(secs_fmt "${t##*|}")"
done
lab_summary
if [ -n "${LAB_RESULTS_FILE:-}" ]; then echo "$LAB_PASSED $LAB_FAILED" >"$LAB_RESULTS_FILE"; fi
[ "$LAB_FAILED" = 0 ]
