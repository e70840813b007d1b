# shellcheck shell=bash
# tests/lab.sh — the connector lab, sourced by tests/e2e.sh.
#
# A network namespace plays the Mac, the root namespace plays the Docker VM, and
# the local Docker engine (Debian's 20.10) runs real containers. A veth pair joins
# the two: VM side 10.231.0.1/30, Mac side 10.231.0.2/30, and the Mac's default
# route points at the VM. Engine 28.2's bridge firewall is emulated on top of the
# 20.10 engine so that, without connector, the Mac's packets reach the VM and are
# dropped there — exactly what a Docker Desktop user sees.
#
# Everything the lab creates is named with a per-run prefix (cnt<pid>) or labelled
# io.connector.test=1, and lab_cleanup removes all of it, including what a crashed
# earlier run left. One lab runs at a time (flock on /run/connector-lab.lock).

LAB_REPO=${LAB_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
LAB_PREFIX=${LAB_PREFIX:-cnt$$}
# The prefix without its pid: what lab_cleanup_all looks for, left by any run.
LAB_STEM=${LAB_STEM:-${LAB_PREFIX%%[0-9]*}}
LAB_NS="${LAB_PREFIX}-mac"
LAB_VETH_VM="${LAB_PREFIX}v"
LAB_VETH_MAC="${LAB_PREFIX}m"
LAB_VM_IP=10.231.0.1
LAB_MAC_IP=10.231.0.2
LAB_LABEL_KEY=io.connector.test
LAB_LABEL="${LAB_LABEL_KEY}=1"
LAB_EMU_TAG=connector-lab-emulation
LAB_PROBE_TAG=connector-lab-probe
# The comment on the agent's firewall rules and the agent's tun in the VM are
# learned from the agent container's command line (--tag, --tun-name) whenever it
# exists; before that the tag defaults to the agent's name (what the daemon uses).
LAB_AGENT_TAG=${LAB_AGENT_TAG:-}
LAB_AGENT_TUN=${LAB_AGENT_TUN:-}
LAB_AGENT_NAME=${LAB_AGENT_NAME:-connector-agent-lab}
LAB_AGENT_IMAGE=${LAB_AGENT_IMAGE:-connector-agent:dev}
LAB_WORKLOAD_IMAGE=${LAB_WORKLOAD_IMAGE:-connector-workload:dev}
LAB_TUN=${LAB_TUN:-connector0}
LAB_LISTEN_PORT=${LAB_LISTEN_PORT:-51871}
LAB_TUNNEL_CIDR=${LAB_TUNNEL_CIDR:-10.254.253.0/30}
LAB_CONNECTOR=${LAB_CONNECTOR:-$LAB_REPO/target/debug/connector}
LAB_LOCK=${LAB_LOCK:-/run/connector-lab.lock}
LAB_TMP=""
LAB_DAEMON_PID=""
LAB_DAEMON_LOG=""
LAB_DAEMON_N=0

# ---------------------------------------------------------------------------- output
lab_log()  { printf '[lab %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
lab_warn() { printf '[lab %s] WARNING: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
lab_die()  { printf '[lab] FATAL: %s\n' "$*" >&2; exit 1; }

# ----------------------------------------------------------------------- case results
LAB_PASSED=0
LAB_FAILED=0
LAB_RESULTS=()

lab_pass() { # NAME MESSAGE
  LAB_PASSED=$((LAB_PASSED + 1))
  LAB_RESULTS+=("PASS  $1")
  printf 'PASS  %s — %s\n' "$1" "$2"
}

lab_fail() { # NAME MESSAGE
  LAB_FAILED=$((LAB_FAILED + 1))
  LAB_RESULTS+=("FAIL  $1 — $2")
  printf 'FAIL  %s — %s\n' "$1" "$2"
  if [ -n "$LAB_DAEMON_LOG" ] && [ -s "$LAB_DAEMON_LOG" ]; then
    echo "      --- last lines of $LAB_DAEMON_LOG ---"
    tail -n 15 "$LAB_DAEMON_LOG" | sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^/      | /'
  fi
}

lab_check() { # NAME MESSAGE-IF-FAILED COMMAND...
  local name=$1 msg=$2; shift 2
  if "$@"; then lab_pass "$name" "ok"; else lab_fail "$name" "$msg"; fi
}

lab_summary() {
  echo
  echo "==== lab results ===="
  local r
  for r in "${LAB_RESULTS[@]}"; do echo "$r"; done
  echo "$LAB_PASSED passed, $LAB_FAILED failed"
}

# --------------------------------------------------------------------------- helpers
# wait_until SECONDS COMMAND... — poll (every 0.2 s) until COMMAND succeeds.
wait_until() {
  local secs=$1; shift
  local deadline=$(( $(date +%s%N) + secs * 1000000000 ))
  while :; do
    if "$@"; then return 0; fi
    [ "$(date +%s%N)" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

mac() { ip netns exec "$LAB_NS" "$@"; }

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

lab_lock() {
  exec 9>"$LAB_LOCK"
  if ! flock -n 9; then
    lab_log "another lab run holds $LAB_LOCK; waiting up to 15 min"
    flock -w 900 9 || lab_die "could not take $LAB_LOCK"
  fi
}

# ------------------------------------------------------------------------- iptables
# The variants present on this machine (nft first: Debian 12's default and the one
# Docker 20.10 uses here), each for IPv4 (nft, legacy) and IPv6 (nft6, legacy6).
lab_ipt_variants() {
  local v
  for v in nft legacy; do
    command -v "iptables-$v-save" >/dev/null 2>&1 && echo "$v"
    command -v "ip6tables-$v-save" >/dev/null 2>&1 && echo "${v}6"
  done
}

# The command of a variant: nft → iptables-nft, nft6 → ip6tables-nft.
lab_ipt_cmd() { case $1 in *6) echo "ip6tables-${1%6}" ;; *) echo "iptables-$1" ;; esac; }

# The IPv6 twin of the variant that holds Docker's chains.
lab_docker_ip6t() { local v; v=$(lab_docker_ipt); echo "ip6tables${v#iptables}"; }

# The variant that holds Docker's chains.
lab_docker_ipt() {
  local v
  for v in nft legacy; do
    if command -v "iptables-$v" >/dev/null 2>&1 && "iptables-$v" -w -t filter -S DOCKER >/dev/null 2>&1; then
      echo "iptables-$v"; return 0
    fi
  done
  echo iptables
}

# Rules carrying the comment TAG exactly, or (if IFACE is given) naming IFACE as
# -i/-o; one line per rule, duplicates kept: "<variant> <table> <rule>".
lab_rules_tagged() { # TAG [IFACE]
  local tag=$1 iface=${2:-} v
  for v in $(lab_ipt_variants); do
    "$(lab_ipt_cmd "$v")-save" 2>/dev/null | awk -v v="$v" -v tag="$tag" -v iface="$iface" '
      /^\*/ { table = substr($0, 2); next }
      /^-A / {
        hit = 0
        for (i = 1; i < NF; i++) {
          if ($i == "--comment") {
            c = $(i + 1); gsub(/"/, "", c)
            if (c == tag) hit = 1
          }
          if (iface != "" && ($i == "-i" || $i == "-o") && $(i + 1) == iface) hit = 1
        }
        if (hit) print v, table, $0
      }'
  done
}

lab_learn_agent() {
  local args tag tun
  args=$(docker inspect -f '{{join .Args " "}}' "$LAB_AGENT_NAME" 2>/dev/null) || return 0
  tag=$(sed -n 's/.*--tag[= ]\([^ ]*\).*/\1/p' <<<"$args")
  tun=$(sed -n 's/.*--tun-name[= ]\([^ ]*\).*/\1/p' <<<"$args")
  if [ -n "$tag" ]; then LAB_AGENT_TAG=$tag; fi
  if [ -n "$tun" ]; then LAB_AGENT_TUN=$tun; fi
}

# The agent's rules: tagged with its tag, or naming its tun.
lab_agent_rules() { lab_rules_tagged "${LAB_AGENT_TAG:-$LAB_AGENT_NAME}" "$LAB_AGENT_TUN"; }
lab_agent_rules_desc() { echo "tagged '${LAB_AGENT_TAG:-$LAB_AGENT_NAME}'${LAB_AGENT_TUN:+ or naming $LAB_AGENT_TUN}"; }

lab_count_tagged() { lab_rules_tagged "$1" | grep -c . || true; }

# Delete every rule carrying the comment TAG (and, if given, containing WORD), in
# every table of both variants.
lab_delete_tagged() { # TAG [WORD]
  lab_delete_rules "$1" "" "${2:-}"
}

# lab_delete_rules TAG IFACE [WORD] — delete what lab_rules_tagged TAG IFACE lists.
lab_delete_rules() {
  local v table rule n=0
  while read -r v table rule; do
    [ -n "$rule" ] || continue
    [ -z "${3:-}" ] || [[ " $rule " == *" $3 "* ]] || continue
    # iptables-save quotes arguments with spaces; eval re-splits them the same way.
    if eval "$(lab_ipt_cmd "$v") -w -t $table ${rule/#-A /-D }" 2>/dev/null; then n=$((n + 1)); fi
  done < <(lab_rules_tagged "$1" "$2")
  [ "$n" = 0 ] || lab_log "removed $n iptables rule(s) tagged '$1'${2:+ or naming $2}"
}

# ------------------------------------------------------------------ docker networks
net_subnets() { # NET — its IPv4 subnets
  docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' "$1" 2>/dev/null \
    | tr ' ' '\n' | grep '\.' || true
}

net_subnets6() { # NET — its IPv6 subnets
  docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' "$1" 2>/dev/null \
    | tr ' ' '\n' | grep ':' || true
}

net_bridge() { # NET — the Linux bridge behind a bridge network
  local name
  name=$(docker network inspect -f '{{index .Options "com.docker.network.bridge.name"}}' "$1" 2>/dev/null || true)
  if [ -n "$name" ] && [ "$name" != "<no value>" ]; then echo "$name"; return; fi
  echo "br-$(docker network inspect -f '{{.Id}}' "$1" | cut -c1-12)"
}

net_internal() { [ "$(docker network inspect -f '{{.Internal}}' "$1" 2>/dev/null)" = "true" ]; }

container_ip() { # CONTAINER NET
  docker inspect -f "{{with index .NetworkSettings.Networks \"$2\"}}{{.IPAddress}}{{end}}" "$1"
}

container_ip6() { # CONTAINER NET
  docker inspect -f "{{with index .NetworkSettings.Networks \"$2\"}}{{.GlobalIPv6Address}}{{end}}" "$1"
}

# ---------------------------------------------------------- engine 28.2 emulation
# emulate_28_2 NET — what Engine 28.2 adds for a bridge network:
#   raw PREROUTING -d <subnet> ! -i <bridge> -j DROP   (not for --internal networks)
#   filter DOCKER  ! -i <bridge> -o <bridge> -j DROP   (last rule of DOCKER)
# and their ip6tables twins for its IPv6 subnets. The lab's engine (20.10) writes no
# ip6tables rules at all, so the IPv6 forward drop goes at the end of FORWARD.
emulate_28_2() {
  local net=$1 br ipt ip6t subnet c=(-m comment --comment "$LAB_EMU_TAG")
  [ "$(docker network inspect -f '{{.Driver}}' "$net" 2>/dev/null)" = bridge ] || return 0
  br=$(net_bridge "$net")
  ipt=$(lab_docker_ipt)
  ip6t=$(lab_docker_ip6t)
  if ! net_internal "$net"; then
    for subnet in $(net_subnets "$net"); do
      "$ipt" -w -t raw -C PREROUTING -d "$subnet" ! -i "$br" "${c[@]}" -j DROP 2>/dev/null \
        || "$ipt" -w -t raw -A PREROUTING -d "$subnet" ! -i "$br" "${c[@]}" -j DROP
    done
    for subnet in $(net_subnets6 "$net"); do
      "$ip6t" -w -t raw -C PREROUTING -d "$subnet" ! -i "$br" "${c[@]}" -j DROP 2>/dev/null \
        || "$ip6t" -w -t raw -A PREROUTING -d "$subnet" ! -i "$br" "${c[@]}" -j DROP
    done
  fi
  "$ipt" -w -t filter -C DOCKER ! -i "$br" -o "$br" "${c[@]}" -j DROP 2>/dev/null \
    || "$ipt" -w -t filter -A DOCKER ! -i "$br" -o "$br" "${c[@]}" -j DROP
  if [ -n "$(net_subnets6 "$net")" ]; then
    "$ip6t" -w -t filter -C FORWARD ! -i "$br" -o "$br" "${c[@]}" -j DROP 2>/dev/null \
      || "$ip6t" -w -t filter -A FORWARD ! -i "$br" -o "$br" "${c[@]}" -j DROP
  fi
}

# Emulate 28.2 on every bridge network of the engine (default bridge included).
emulate_28_2_all() {
  local net
  for net in $(docker network ls -q --filter driver=bridge); do emulate_28_2 "$net"; done
}

emulation_remove() { lab_delete_tagged "$LAB_EMU_TAG"; }

# What Docker does when a network goes away: its rules go too. Call before `docker network rm`.
emulation_remove_net() { # NET
  local br
  br=$(net_bridge "$1")
  lab_delete_tagged "$LAB_EMU_TAG" "$br"
}

# ------------------------------------------------------------------------ topology
lab_topology_up() {
  ip netns add "$LAB_NS"
  ip link add "$LAB_VETH_VM" type veth peer name "$LAB_VETH_MAC"
  ip link set "$LAB_VETH_MAC" netns "$LAB_NS"
  ip addr add "$LAB_VM_IP/30" dev "$LAB_VETH_VM"
  ip link set "$LAB_VETH_VM" up
  ip -n "$LAB_NS" link set lo up
  ip -n "$LAB_NS" addr add "$LAB_MAC_IP/30" dev "$LAB_VETH_MAC"
  ip -n "$LAB_NS" link set "$LAB_VETH_MAC" up
  ip -n "$LAB_NS" route add default via "$LAB_VM_IP"
  # A suite that tests IPv6 gives the veth IPv6 addresses too (LAB_VM_IP6, LAB_MAC_IP6
  # in a /126), and the Mac an IPv6 default route via the VM.
  if [ -n "${LAB_VM_IP6:-}" ]; then
    ip addr add "$LAB_VM_IP6/126" dev "$LAB_VETH_VM" nodad
    ip -n "$LAB_NS" addr add "$LAB_MAC_IP6/126" dev "$LAB_VETH_MAC" nodad
    ip -n "$LAB_NS" -6 route add default via "$LAB_VM_IP6"
  fi
  wait_until 5 ping_probe "$LAB_VM_IP" || lab_die "the Mac namespace cannot ping the VM side of the veth"
  [ "$(sysctl -n net.ipv4.ip_forward)" = 1 ] || lab_die "net.ipv4.ip_forward is off in the VM (root) namespace"
}

# --------------------------------------------------------------------- workloads
# lab_workload NAME NET [NET2...] — a workload container attached to the networks.
lab_workload() {
  local name=$1 first=$2; shift 2
  docker run -d --name "$name" --hostname "$name" --label "$LAB_LABEL" \
    --network "$first" "$LAB_WORKLOAD_IMAGE" /bin/serve "$name" >/dev/null
  local n
  for n in "$@"; do docker network connect "$n" "$name"; done
}

lab_network() { # NAME SUBNET [docker network create options...]
  local name=$1 subnet=$2; shift 2
  docker network create --driver bridge --label "$LAB_LABEL" --subnet "$subnet" "$@" "$name" >/dev/null
}

# ------------------------------------------------------------------------- probes
# Probes run from the Mac namespace; set PROBE_NS= (empty) to probe from the VM.
probe_in() { if [ -n "${PROBE_NS-$LAB_NS}" ]; then ip netns exec "${PROBE_NS-$LAB_NS}" "$@"; else "$@"; fi; }

# An address as a URL's host: IPv6 in brackets.
url_host() { case $1 in *.*|\[*) echo "$1" ;; *:*) echo "[$1]" ;; *) echo "$1" ;; esac; }

http_probe() { # IP EXPECTED-BODY-SUBSTRING [SECONDS]
  local body
  body=$(probe_in timeout "$(( ${3:-2} + 1 ))" curl -gsS --noproxy '*' -m "${3:-2}" "http://$(url_host "$1")/" 2>/dev/null) || return 1
  [[ "$body" == *"$2"* ]]
}

udp_probe() { # IP TOKEN [SECONDS] — UDP echo on port 7
  local got
  got=$(probe_in timeout "${3:-2}" bash -c 'exec 3<>"/dev/udp/$1/7" && printf %s "$2" >&3 && dd bs=65536 count=1 status=none <&3' _ "$1" "$2" 2>/dev/null) || return 1
  [ "$got" = "$2" ]
}

# Fast variant for timing: gives up on a connection after 0.3 s (a SYN sent before
# the route exists would otherwise wait for the 1 s retransmission).
http_probe_fast() { # IP EXPECTED-BODY-SUBSTRING
  local body
  body=$(probe_in timeout 3 curl -gsS --noproxy '*' --connect-timeout 0.3 -m 2 "http://$(url_host "$1")/" 2>/dev/null) || return 1
  [[ "$body" == *"$2"* ]]
}

ping_probe() { # IP [SECONDS]
  if command -v ping >/dev/null 2>&1 && ping -V >/dev/null 2>&1; then
    probe_in timeout "$(( ${2:-2} + 1 ))" ping -n -c 1 -W "${2:-2}" "$1" >/dev/null 2>&1
  else
    probe_in timeout "$(( ${2:-2} + 1 ))" busybox ping -c 1 -W "${2:-2}" "$1" >/dev/null 2>&1
  fi
}

# probe_all_parallel FN SECONDS — one probe per entry of the suite's TARGETS array
# ("label|ip|expected body"), in parallel; echo the labels of the targets that answered.
probe_all_parallel() { # PROBE-FUNCTION SECONDS
  local fn=$1 secs=$2 t label ip name i=0 pids=() labels=()
  for t in "${TARGETS[@]}"; do
    IFS='|' read -r label ip name <<<"$t"
    case "$fn" in
      http_probe) http_probe "$ip" "$name" "$secs" & ;;
      udp_probe) udp_probe "$ip" "tok-$i" "$secs" & ;;
      ping_probe) ping_probe "$ip" "$secs" & ;;
    esac
    pids+=($!); labels+=("$label ($ip)"); i=$((i + 1))
  done
  for i in "${!pids[@]}"; do
    if wait "${pids[$i]}"; then echo "${labels[$i]}"; fi
  done
}

# lab_all_unreachable PING-NAME [WHAT] — the "before connector" case: HTTP, UDP and ping (named
# PING-NAME in the case's name) from the Mac to the suite's TARGETS all fail.
lab_all_unreachable() {
  local ping_name=$1 what=${2:+ $2} proto fn reached
  for proto in HTTP UDP "$ping_name"; do
    case $proto in HTTP) fn=http_probe ;; UDP) fn=udp_probe ;; *) fn=ping_probe ;; esac
    reached=$(probe_all_parallel "$fn" 1)
    if [ -z "$reached" ]; then
      lab_pass "before connector: $proto$what from the Mac to the containers fails" "no container answered"
    else
      lab_fail "before connector: $proto$what from the Mac to the containers fails" "answered: $(echo "$reached" | paste -sd, -)"
    fi
  done
}

# -------------------------------------------------------------------------- daemon
lab_write_config() { # PATH [EXTRA-TOML-LINE...]
  local path=$1; shift
  {
    echo "docker_host = \"unix:///var/run/docker.sock\""
    echo "agent_image = \"$LAB_AGENT_IMAGE\""
    echo "agent_name = \"$LAB_AGENT_NAME\""
    echo "host_address = \"$LAB_MAC_IP\""
    echo "listen_address = \"$LAB_MAC_IP\""
    echo "listen_port = $LAB_LISTEN_PORT"
    echo "tunnel = \"$LAB_TUNNEL_CIDR\""
    echo "mtu = 1420"
    echo "nat = \"masquerade\""
    echo "state_dir = \"$LAB_TMP/state\""
    echo "control_socket = \"$LAB_TMP/connector.sock\""
    local l
    for l in "$@"; do echo "$l"; done
  } >"$path"
}

# lab_daemon_start CONFIG — `connector run` in the Mac namespace, in the background
# (behind LAB_DAEMON_WRAP, a command prefix such as `prlimit --nofile=256`, if set).
lab_daemon_start() {
  LAB_DAEMON_N=$((LAB_DAEMON_N + 1))
  LAB_DAEMON_LOG="$LAB_TMP/daemon-$LAB_DAEMON_N.log"
  LAB_DAEMON_STARTED_MS=$(now_ms)
  # 9>&-: the daemon must not inherit the lab lock (an orphan would hold it).
  # shellcheck disable=SC2086 # LAB_DAEMON_WRAP is a command prefix (e.g. prlimit ...).
  ip netns exec "$LAB_NS" ${LAB_DAEMON_WRAP:-} "$LAB_CONNECTOR" run --config "$1" --log-level debug \
    >"$LAB_DAEMON_LOG" 2>&1 </dev/null 9>&- &
  LAB_DAEMON_PID=$!
  lab_log "connector run started (pid $LAB_DAEMON_PID, log $LAB_DAEMON_LOG)"
}

lab_daemon_alive() { [ -n "$LAB_DAEMON_PID" ] && kill -0 "$LAB_DAEMON_PID" 2>/dev/null; }

# lab_daemon_stop SIGNAL [SECONDS] — signal the daemon, wait for it, set LAB_DAEMON_RC.
# Returns 1 if it did not exit within SECONDS (it is then killed with SIGKILL).
lab_daemon_stop() {
  local sig=$1 secs=${2:-15}
  LAB_DAEMON_RC=""
  [ -n "$LAB_DAEMON_PID" ] || return 0
  kill "-$sig" "$LAB_DAEMON_PID" 2>/dev/null || true
  local rc=0
  if wait_until "$secs" lab_not_running "$LAB_DAEMON_PID"; then
    wait "$LAB_DAEMON_PID" 2>/dev/null; LAB_DAEMON_RC=$?
  else
    kill -KILL "$LAB_DAEMON_PID" 2>/dev/null || true
    wait "$LAB_DAEMON_PID" 2>/dev/null; LAB_DAEMON_RC=$?
    rc=1
  fi
  LAB_DAEMON_PID=""
  return "$rc"
}

lab_not_running() { # PID — gone or a zombie
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 0
  [ "$st" = Z ]
}

# ------------------------------------------------------------------ status --json
# lab_status_json CONFIG OUTFILE — `connector status --json` from the Mac (stderr to OUTFILE.err).
lab_status_json() {
  ip netns exec "$LAB_NS" timeout 20 "$LAB_CONNECTOR" status --json --config "$1" >"$2" 2>"$2.err"
}

# lab_status_eval FILE PYTHON-EXPR — EXPR evaluated with s = the status JSON; helpers:
# c(name) = that kind cluster's entry or None; st(name, 'pods'|'services') = its state
# ('absent' if there is no such cluster); net(name) = that network's entries.
lab_status_eval() {
  python3 - "$1" "$2" <<'PY' 2>/dev/null
import json, sys
s = json.load(open(sys.argv[1]))
clusters = s.get("kind", {}).get("clusters", [])
def c(name):
    return next((x for x in clusters if x["name"] == name), None)
def st(name, what):
    x = c(name)
    return x[what]["state"] if x else "absent"
def net(name):
    return [n for n in s.get("networks", []) if n["name"] == name]
print(eval(sys.argv[2]))
PY
}

# ---------------------------------------------------------------- system snapshot
# What connector may change on the system; compared before/after to prove "nothing changed".
lab_snapshot() {
  echo "## agent containers"
  docker ps -a --filter "name=^/${LAB_AGENT_NAME}" --format '{{.Names}}'
  echo "## mac links"
  ip -n "$LAB_NS" -o link show | awk -F': ' '{print $2}' | sed 's/@.*//'
  echo "## mac routes"
  ip -n "$LAB_NS" route show table all | grep -v -e '^local ' -e '^broadcast ' -e '^multicast ' || true
  echo "## VM links"
  ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | grep connector || true
  echo "## agent rules"
  lab_agent_rules
  echo "## state dir and control socket"
  find "$LAB_TMP/state" "$LAB_TMP/connector.sock" 2>/dev/null || true
}

# ------------------------------------------------------------------------- cleanup
# Each suite names its topologies <stem><pid>-mac (netns) and <stem><pid>v|m (veth).
# lab_topologies_remove STEM — every such namespace of any run (this one or a
# crashed one), the processes still in it (a daemon), and the veth ends.
lab_topologies_remove() {
  local stem=$1 ns pid link
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${stem}[0-9]+-mac\$"); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
      wait_until 5 lab_not_running "$pid" || kill -KILL "$pid" 2>/dev/null || true
    done
    ip netns del "$ns" 2>/dev/null || true
  done
  # Root-namespace ends of lab veths (normally gone with the namespace).
  for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E "^${stem}[0-9]+[vm]\$"); do
    ip link del "$link" 2>/dev/null || true
  done
}

# lab_topologies_left STEM — lines naming what lab_topologies_remove would remove.
lab_topologies_left() {
  ip netns list 2>/dev/null | awk '{print "netns " $1}' | grep -E " ${1}[0-9]+-mac\$" || true
  ip -o link show 2>/dev/null | awk -F': ' '{print "link " $2}' | sed 's/@.*//' | grep -E " ${1}[0-9]+[vm]\$" || true
}

# lab_agent_remove — stop the agent container with SIGTERM (it removes its own
# rules and routes), then remove it.
lab_agent_remove() {
  if [ -n "$(docker ps -aq --filter "name=^/${LAB_AGENT_NAME}\$")" ]; then
    docker stop -t 10 "$LAB_AGENT_NAME" >/dev/null 2>&1 || true
    docker rm -f "$LAB_AGENT_NAME" >/dev/null 2>&1 || true
  fi
}

# Remove everything any lab run made. Safe to call repeatedly, and at start.
lab_cleanup_all() {
  local c
  # Daemon of this run first (it should clean up after itself on SIGTERM).
  if lab_daemon_alive; then lab_daemon_stop TERM 10 >/dev/null 2>&1 || true; fi
  lab_topologies_remove "$LAB_STEM"
  # Containers and networks.
  if docker info >/dev/null 2>&1; then
    lab_learn_agent
    for c in $(docker ps -aq --filter "label=$LAB_LABEL"); do docker rm -f "$c" >/dev/null 2>&1 || true; done
    for c in $(docker ps -aq --filter "name=^/${LAB_AGENT_NAME}"); do docker rm -f "$c" >/dev/null 2>&1 || true; done
    for c in $(docker network ls -q --filter "label=$LAB_LABEL"); do docker network rm "$c" >/dev/null 2>&1 || true; done
  fi
  # Firewall: the emulation, the lab's probe rules, and whatever the agent left.
  lab_delete_tagged "$LAB_EMU_TAG"
  lab_delete_tagged "$LAB_PROBE_TAG"
  lab_delete_rules "${LAB_AGENT_TAG:-$LAB_AGENT_NAME}" "$LAB_AGENT_TUN"
}

# Lines describing anything the lab would have left behind (empty = clean).
lab_leftovers() {
  lab_topologies_left "$LAB_STEM"
  if docker info >/dev/null 2>&1; then
    docker ps -a --filter "label=$LAB_LABEL" --format 'container {{.Names}}'
    docker ps -a --filter "name=^/${LAB_AGENT_NAME}" --format 'container {{.Names}}'
    docker network ls --filter "label=$LAB_LABEL" --format 'network {{.Name}}'
  fi
  lab_rules_tagged "$LAB_EMU_TAG" | sed 's/^/rule /'
  lab_rules_tagged "$LAB_PROBE_TAG" | sed 's/^/rule /'
  lab_agent_rules | sed 's/^/rule /'
}

# A suite with more to remove sets LAB_CLEANUP_FN to its own cleanup function
# (which calls lab_cleanup_all); LAB_CLEANED=1 once it has cleaned up itself.
LAB_CLEANED=0
LAB_CLEANUP_FN=${LAB_CLEANUP_FN:-lab_cleanup_all}
LAB_LEFTOVERS_FN=${LAB_LEFTOVERS_FN:-lab_leftovers}
lab_on_exit() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$LAB_CLEANED" = 0 ]; then
    lab_log "cleaning up"
    "$LAB_CLEANUP_FN" || true
  fi
  if [ -n "$LAB_TMP" ] && [ -d "$LAB_TMP" ]; then
    if [ "${LAB_KEEP:-0}" = 1 ] || [ "$LAB_FAILED" != 0 ] || [ "$rc" != 0 ]; then
      lab_log "logs kept in $LAB_TMP"
    else
      rm -rf "$LAB_TMP"
    fi
  fi
  exit "$rc"
}

# lab_select_cases SUITE [CASE...] — picks the cases lab_cases_loop runs (default: ALL_CASES) between
# the suite's `setup` and `case_cleanup`; an unknown case name stops before anything runs.
lab_select_cases() {
  local suite=$1 c; shift
  if [ $# -gt 0 ]; then CASES=("$@"); else CASES=("${ALL_CASES[@]}"); fi
  for c in "${CASES[@]}"; do
    declare -F "$c" >/dev/null || { echo "$suite: unknown case $c (known: ${ALL_CASES[*]})" >&2; exit 2; }
  done
}

# The last case of every suite: everything the suite made is gone (LAB_CLEANUP_FN
# removes it, LAB_LEFTOVERS_FN lists what is left).
case_cleanup() {
  "$LAB_CLEANUP_FN"
  LAB_CLEANED=1
  local left
  left=$("$LAB_LEFTOVERS_FN")
  if [ -z "$left" ]; then
    lab_pass "lab cleanup leaves nothing behind" "no netns, veth, container, network, image, VM route or tagged rule"
  else
    lab_fail "lab cleanup leaves nothing behind" "$(echo "$left" | paste -sd';' -)"
  fi
}

lab_cases_loop() {
  local c
  for c in "${CASES[@]}"; do
    echo
    lab_log "=== $c"
    "$c"
  done
  echo
  case_cleanup
}

# lab_init [TOOL...] — what every suite does first: root, the lab's tools (and these), a
# running Docker, the lab lock, the exit traps, LAB_TMP (readable by other users: cases run
# clients as nobody), and the leftovers of an earlier run (listed by LAB_LEFTOVERS_FN,
# removed by LAB_CLEANUP_FN).
lab_init() {
  [ "$(id -u)" = 0 ] || lab_die "the lab needs root (network namespaces, iptables, docker)"
  local t
  for t in ip docker curl timeout flock dd awk "$@"; do
    command -v "$t" >/dev/null 2>&1 || lab_die "missing tool: $t (run scripts/test, which installs it)"
  done
  docker info >/dev/null 2>&1 || lab_die "docker does not answer (run scripts/test, which starts dockerd)"
  lab_lock
  trap lab_on_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  LAB_TMP=$(mktemp -d "/tmp/${LAB_PREFIX%%[0-9]*}-lab.XXXXXX")
  chmod 755 "$LAB_TMP"
  local left
  left=$("$LAB_LEFTOVERS_FN")
  if [ -n "$left" ]; then
    lab_log "removing leftovers of an earlier run:"
    echo "$left" | sed 's/^/    /'
    "$LAB_CLEANUP_FN"
  fi
}

# lab_need_images IMAGE... — stop (before anything is made) if an image is missing.
lab_need_images() {
  local image
  [ -x "$LAB_CONNECTOR" ] || lab_die "$LAB_CONNECTOR is missing (cargo build --workspace)"
  for image in "$@"; do
    docker image inspect "$image" >/dev/null 2>&1 || lab_die "image $image is missing (scripts/setup builds it)"
  done
}
