#!/usr/bin/env bash
# Load benchmark: the same fast backend behind nginx (as a reverse proxy) and behind prescale
# (inline profiling on, then off), driven by wrk in one run on this machine.
#
# Usage: benches/load-vs-nginx.sh            (DURATION=10s CONNECTIONS=50 ROUNDS=3 to change)
#        ACCESS_LOG=1 benches/load-vs-nginx.sh  both proxies write an access log (nginx's
#                                               `combined`, prescale's `combined`) to a file
#        BODIES="1024 65536" (the default) also measures POST with a body of each size (bytes),
#        nginx against prescale (profiling on); BODIES="" skips them. One line per size:
#        post_SIZE: ... ratio_rps=X ratio_p99=Y cpu_per_request_ratio=Z
#        MODES="tls h2 h2c" (the default) also measures, nginx against prescale (profiling on):
#          tls  GET over HTTPS (TLS 1.3, keep-alive, HTTP/1.1), wrk
#          h2   GET over HTTP/2 with TLS (h2 by ALPN), h2load, CONNECTIONS/5 connections × 10
#               streams (10 × 10 at the default)
#          h2c  GET over cleartext HTTP/2 (prior knowledge), h2load, as h2
#        one line per mode: MODE: ... ratio_rps=X ratio_p99=Y cpu_per_request_ratio=Z (h2load
#        reports no percentiles: its modes print ratio_mean_latency instead of ratio_p99);
#        MODES="" skips them
# The last line is exactly: ratio_rps=X ratio_p99=Y profiling_cost=Z (plain GET)
#   ratio_rps      = prescale (profiling on) req/s ÷ nginx req/s
#   ratio_p99      = prescale (profiling on) p99   ÷ nginx p99
#   profiling_cost = 1 − (req/s with profiling ÷ req/s without)
# Each proxy gets one worker thread pinned to CPU 1; wrk and the backend share CPU 0. Each round
# runs nginx, then prescale on and off back to back; the ratios are medians over the rounds of
# each round's own ratios. Before the last line, CPU 1's time per request (the proxy and the
# kernel's work on its behalf) and how busy CPU 1 was: a proxy that is not saturated has
# throughput set by CPU 0, and then CPU per request is what tells the proxies apart
# (`cpu_per_request_ratio` = prescale ÷ nginx, `profiling_cpu_share` = 1 − off ÷ on).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
ROUNDS=${ROUNDS:-3}
ACCESS_LOG=${ACCESS_LOG:-0}
BODIES=${BODIES-1024 65536}
MODES=${MODES-tls h2 h2c}

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v cmake >/dev/null 2>&1 || need+=(cmake)
case " $MODES " in *" h2"*) command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client) ;; esac
case " $MODES " in *" tls "*|*" h2 "*) command -v openssl >/dev/null 2>&1 || need+=(openssl) ;; esac
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# PRESCALE_BIN=path skips the build (e.g. to compare two builds).
if [ -n "${PRESCALE_BIN:-}" ]; then
  PRESCALE=$PRESCALE_BIN
else
  cargo build --release --quiet --bin prescale
  PRESCALE=target/release/prescale
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pin() { if command -v taskset >/dev/null 2>&1; then taskset -c "$1" "${@:2}"; else "${@:2}"; fi; }
# Starts a pinned server in the background; its pid is remembered for cleanup.
spawn_pinned() { # $1 = cpu, $2 = log file, rest = command
  local cpu=$1 log=$2; shift 2
  if command -v taskset >/dev/null 2>&1; then
    taskset -c "$cpu" "$@" >/dev/null 2>"$log" &
  else
    "$@" >/dev/null 2>"$log" &
  fi
  pids+=($!)
}
wait_port() {
  for _ in $(seq 1 200); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "port $1 did not open" >&2; return 1
}

BACKEND_PORT=$(free_port)
spawn_pinned 0 "$work/backend.log" "$PRESCALE" backend --listen "127.0.0.1:$BACKEND_PORT" --fixed-body --threads 1
wait_port "$BACKEND_PORT"

# A self-signed certificate for the TLS modes (both proxies serve the same one).
if [ -n "$MODES" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
fi

NGINX_PORT=$(free_port)
NGINX_TLS_PORT=$(free_port)
NGINX_H2C_PORT=$(free_port)
mkdir -p "$work/nginx/logs"
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
error_log $work/nginx/logs/error.log warn;
pid $work/nginx/nginx.pid;
events { worker_connections 4096; }
http {
  # Bodies up to 128 KiB stay in memory (the default 16 KiB buffer writes larger ones to disk).
  client_body_buffer_size 128k;
  $(if [ "$ACCESS_LOG" = 1 ]; then echo "access_log $work/nginx/logs/access.log combined;"; else echo "access_log off;"; fi)
  upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
$(if [ -n "$MODES" ]; then cat <<TLS
  server {
    listen 127.0.0.1:$NGINX_TLS_PORT ssl http2;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.3;
    # nginx's keepalive_requests (1000) also caps an HTTP/2 connection, after which h2load stops
    # using it; prescale caps HTTP/1.1 only. Both get 1,000,000 on the TLS and h2c listeners.
    keepalive_requests 1000000;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
  server {
    listen 127.0.0.1:$NGINX_H2C_PORT http2;
    keepalive_requests 1000000;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
TLS
fi)
}
EOF
spawn_pinned 1 "$work/nginx.log" "$NGINX" -p "$work/nginx" -c "$work/nginx/nginx.conf"
wait_port "$NGINX_PORT"

start_prescale() { # $1 = profiling true|false, $2 = name, $3 = more [proxy] lines; sets STARTED_PORT
  local port admin name=${2:-$1}
  port=$(free_port); admin=$(free_port)
  cat >"$work/prescale-$name.toml" <<EOF
[proxy]
listen = "127.0.0.1:$port"
threads = 1
${3:-}
[admin]
listen = "127.0.0.1:$admin"
[identity]
secret = "bench-secret-0123456789"
[[regions]]
name = "local"
[[fleets]]
name = "web"
region = "local"
backends = ["127.0.0.1:$BACKEND_PORT"]
[profiling]
enabled = $1
EOF
  if [ "$ACCESS_LOG" = 1 ]; then
    printf '[proxy.access_log]\npath = "%s"\n' "$work/prescale-$name.access.log" >>"$work/prescale-$name.toml"
  fi
  PRESCALE_LOG=warn spawn_pinned 1 "$work/prescale-$name.log" "$PRESCALE" proxy --config "$work/prescale-$name.toml"
  wait_port "$port"
  STARTED_PORT=$port
}
start_prescale true; PRESCALE_ON_PORT=$STARTED_PORT
start_prescale false; PRESCALE_OFF_PORT=$STARTED_PORT
if [ -n "$MODES" ]; then
  start_prescale true tls "tls = { cert = \"$work/cert.pem\", key = \"$work/key.pem\" }
keepalive_requests = 1000000"; PRESCALE_TLS_PORT=$STARTED_PORT
  start_prescale true h2c "h2c = true
keepalive_requests = 1000000"; PRESCALE_H2C_PORT=$STARTED_PORT
fi

# 100,000 distinct users, so the per-user table does real work.
cat >"$work/users.lua" <<'EOF'
math.randomseed(42)
request = function()
  return wrk.format("GET", "/", { ["X-User-Id"] = "user-" .. math.random(1, 100000) })
end
EOF

# Busy and total jiffies of CPU 1, where only the proxy under test runs.
cpu1_jiffies() { awk '/^cpu1 /{ print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8 }' /proc/stat; }

# The head of both load tools' parsers: argv is the tool's output, CPU 1's jiffies before and
# after, and the clock tick; cpu(requests) gives CPU microseconds per request and CPU 1's busy
# share. (Expanded into an unquoted here-document: it holds no $ or backquote.)
CPU_PY='import re, sys
text = sys.argv[1]
busy0, total0 = map(int, sys.argv[2].split())
busy1, total1 = map(int, sys.argv[3].split())
ticks = int(sys.argv[4])
def cpu(requests):
    return ((busy1 - busy0) / ticks * 1e6 / max(requests, 1), (busy1 - busy0) / max(total1 - total0, 1))'

# wrk prints e.g. "Requests/sec:  12345.67" and, with --latency, "99%    1.23ms".
run_wrk() { # $1 = port, $2 = wrk script (default users.lua), $3 = scheme (default http) → "rps p99_ms cpu_us_per_request cpu_busy_share"
  local out before after
  before=$(cpu1_jiffies)
  out=$(pin 0 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s "${2:-$work/users.lua}" "${3:-http}://127.0.0.1:$1/" 2>&1)
  after=$(cpu1_jiffies)
  python3 - "$out" "$before" "$after" "$(getconf CLK_TCK)" <<PY
$CPU_PY
requests = int(re.search(r"(\d+) requests in", text).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
m = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
if errors:
    sys.stderr.write(f"warning: {errors.group(1)} non-2xx responses\n")
print(rps, float(m.group(1)) * scale, *cpu(requests))
PY
}

# h2load prints e.g. "finished in 10.00s, 12345.67 req/s, ..." and a "time for request:" row of
# min, max, mean, sd; it has no percentiles, so the mean stands in for the p99 of wrk's modes. It
# sends one set of headers: every request is the same user (wrk's modes spread 100,000 users).
run_h2load() { # $1 = port, $2 = scheme (https: h2 by ALPN; http: h2c) → "rps mean_ms cpu_us_per_request cpu_busy_share"
  local out before after connections=$(( CONNECTIONS / 5 > 0 ? CONNECTIONS / 5 : 1 ))
  before=$(cpu1_jiffies)
  out=$(pin 0 h2load -t1 -c"$connections" -m10 -D"${DURATION%s}" --warm-up-time=1 \
    -H "X-User-Id: user-42" "$2://127.0.0.1:$1/" 2>&1)
  after=$(cpu1_jiffies)
  python3 - "$out" "$before" "$after" "$(getconf CLK_TCK)" <<PY
$CPU_PY
m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", text)
if not m:
    sys.exit("h2load printed no result:\n" + text)
requests, failed = int(m.group(1)), int(m.group(2))
if failed:
    sys.stderr.write(f"warning: {failed} failed requests\n")
if requests == 0:
    sys.exit("h2load completed no request:\n" + text)
rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", text).group(1))
t = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)\s", text)
scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[t.group(2)]
print(rps, float(t.group(1)) * scale, *cpu(requests))
PY
}

# Warm-up so connection pools and caches are filled.
for port in "$NGINX_PORT" "$PRESCALE_ON_PORT" "$PRESCALE_OFF_PORT"; do
  pin 0 wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$port/" >/dev/null 2>&1
done

declare -a n_rps n_p99 n_cpu n_busy on_rps on_p99 on_cpu on_busy off_rps off_p99 off_cpu off_busy
for round in $(seq 1 "$ROUNDS"); do
  read -r r p c b < <(run_wrk "$NGINX_PORT"); n_rps+=("$r"); n_p99+=("$p"); n_cpu+=("$c"); n_busy+=("$b")
  # On and off run back to back, in alternating order, so that each round's pair sees the same
  # machine (the ratios below are medians of these per-round pairs).
  if (( round % 2 )); then
    read -r r p c b < <(run_wrk "$PRESCALE_ON_PORT"); on_rps+=("$r"); on_p99+=("$p"); on_cpu+=("$c"); on_busy+=("$b")
    read -r r p c b < <(run_wrk "$PRESCALE_OFF_PORT"); off_rps+=("$r"); off_p99+=("$p"); off_cpu+=("$c"); off_busy+=("$b")
  else
    read -r r p c b < <(run_wrk "$PRESCALE_OFF_PORT"); off_rps+=("$r"); off_p99+=("$p"); off_cpu+=("$c"); off_busy+=("$b")
    read -r r p c b < <(run_wrk "$PRESCALE_ON_PORT"); on_rps+=("$r"); on_p99+=("$p"); on_cpu+=("$c"); on_busy+=("$b")
  fi
  echo "round $round: nginx ${n_rps[-1]} req/s p99 ${n_p99[-1]} ms | prescale ${on_rps[-1]} req/s p99 ${on_p99[-1]} ms | prescale (profiling off) ${off_rps[-1]} req/s p99 ${off_p99[-1]} ms" >&2
done

# One mode's line: $1 = name, $2 = latency's name (p99, mean_latency), then nginx's req/s,
# latencies and CPU per request, and prescale's, each a space-separated list over the rounds.
summarize() {
  python3 - "$@" <<'PY'
import statistics, sys
name, latency = sys.argv[1:3]
n_rps, n_lat, n_cpu, p_rps, p_lat, p_cpu = [list(map(float, a.split())) for a in sys.argv[3:]]
med = statistics.median
ratio = lambda a, b: med(x / y for x, y in zip(a, b))
print(f"{name}: nginx {med(n_rps):.0f} req/s {med(n_cpu):.1f} us/request | prescale "
      f"{med(p_rps):.0f} req/s {med(p_cpu):.1f} us/request | ratio_rps={ratio(p_rps, n_rps):.3f} "
      f"ratio_{latency}={ratio(p_lat, n_lat):.3f} cpu_per_request_ratio={ratio(p_cpu, n_cpu):.3f}")
PY
}

# POST with a body of each size: nginx, then prescale (profiling on), in each round.
for size in $BODIES; do
  cat >"$work/post-$size.lua" <<EOF
math.randomseed(42)
local body = string.rep("x", $size)
request = function()
  return wrk.format("POST", "/", { ["X-User-Id"] = "user-" .. math.random(1, 100000),
    ["Content-Type"] = "application/octet-stream" }, body)
end
EOF
  pn_rps=(); pn_p99=(); pn_cpu=(); pp_rps=(); pp_p99=(); pp_cpu=()
  for round in $(seq 1 "$ROUNDS"); do
    read -r r p c _ < <(run_wrk "$NGINX_PORT" "$work/post-$size.lua"); pn_rps+=("$r"); pn_p99+=("$p"); pn_cpu+=("$c")
    read -r r p c _ < <(run_wrk "$PRESCALE_ON_PORT" "$work/post-$size.lua"); pp_rps+=("$r"); pp_p99+=("$p"); pp_cpu+=("$c")
    echo "post $size B round $round: nginx ${pn_rps[-1]} req/s | prescale ${pp_rps[-1]} req/s" >&2
  done
  summarize "post_$size" p99 "${pn_rps[*]}" "${pn_p99[*]}" "${pn_cpu[*]}" "${pp_rps[*]}" "${pp_p99[*]}" "${pp_cpu[*]}"
done

# TLS and HTTP/2 from the client: nginx, then prescale (profiling on), in each round.
for mode in $MODES; do
  case $mode in
    tls) n_port=$NGINX_TLS_PORT; p_port=$PRESCALE_TLS_PORT; run() { run_wrk "$1" "$work/users.lua" https; }; latency=p99 ;;
    h2) n_port=$NGINX_TLS_PORT; p_port=$PRESCALE_TLS_PORT; run() { run_h2load "$1" https; }; latency=mean_latency ;;
    h2c) n_port=$NGINX_H2C_PORT; p_port=$PRESCALE_H2C_PORT; run() { run_h2load "$1" http; }; latency=mean_latency ;;
    *) echo "unknown mode '$mode' in MODES (tls, h2, h2c)" >&2; exit 2 ;;
  esac
  # (A failed run stops the script: each result is taken in an assignment, under set -e.)
  result=$(run "$n_port"); result=$(run "$p_port") # warm-up (handshakes, pools)
  mn_rps=(); mn_lat=(); mn_cpu=(); mp_rps=(); mp_lat=(); mp_cpu=()
  for round in $(seq 1 "$ROUNDS"); do
    result=$(run "$n_port"); read -r r l c _ <<<"$result"; mn_rps+=("$r"); mn_lat+=("$l"); mn_cpu+=("$c")
    result=$(run "$p_port"); read -r r l c _ <<<"$result"; mp_rps+=("$r"); mp_lat+=("$l"); mp_cpu+=("$c")
    echo "$mode round $round: nginx ${mn_rps[-1]} req/s $latency ${mn_lat[-1]} ms | prescale ${mp_rps[-1]} req/s $latency ${mp_lat[-1]} ms" >&2
  done
  summarize "$mode" "$latency" "${mn_rps[*]}" "${mn_lat[*]}" "${mn_cpu[*]}" "${mp_rps[*]}" "${mp_lat[*]}" "${mp_cpu[*]}"
done

python3 - "${n_rps[*]}" "${n_p99[*]}" "${on_rps[*]}" "${on_p99[*]}" "${off_rps[*]}" "${off_p99[*]}" \
  "${n_cpu[*]}" "${n_busy[*]}" "${on_cpu[*]}" "${on_busy[*]}" "${off_cpu[*]}" "${off_busy[*]}" <<'PY'
import statistics, sys
vals = [list(map(float, a.split())) for a in sys.argv[1:]]
n_rps_v, n_p99_v, on_rps_v, on_p99_v, off_rps_v, off_p99_v = vals[:6]
n_cpu_v, n_busy_v, on_cpu_v, on_busy_v, off_cpu_v, off_busy_v = vals[6:]
med = statistics.median
def line(name, rps, p99, cpu, busy):
    print(f"{name:26}{med(rps):10.0f} req/s   p99 {med(p99):7.3f} ms   "
          f"CPU {med(cpu):5.1f} us/request   proxy CPU busy {100 * med(busy):3.0f} %")
line("nginx", n_rps_v, n_p99_v, n_cpu_v, n_busy_v)
line("prescale (profiling on)", on_rps_v, on_p99_v, on_cpu_v, on_busy_v)
line("prescale (profiling off)", off_rps_v, off_p99_v, off_cpu_v, off_busy_v)
# When the proxy's CPU is not saturated, req/s is set by the load generator's CPU; CPU time per
# request (all of CPU 1: the proxy and the kernel's work for it) then tells the costs apart.
cpu_ratio = med(on / n for on, n in zip(on_cpu_v, n_cpu_v))
profiling_cpu = med(1 - off / on for on, off in zip(on_cpu_v, off_cpu_v))
print(f"cpu_per_request_ratio={cpu_ratio:.3f} profiling_cpu_share={profiling_cpu:.3f}")
# Ratios of runs of the same round (seconds apart), then the median over rounds: a shared VM's
# drift between rounds cancels out.
ratio_rps = med(on / n for on, n in zip(on_rps_v, n_rps_v))
ratio_p99 = med(on / n for on, n in zip(on_p99_v, n_p99_v))
profiling_cost = med(1 - on / off for on, off in zip(on_rps_v, off_rps_v))
print(f"ratio_rps={ratio_rps:.3f} ratio_p99={ratio_p99:.3f} profiling_cost={profiling_cost:.3f}")
PY
