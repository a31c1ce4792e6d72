# Shared by scripts/run and scripts/test: make sure a local service is up, starting it (or
# installing it from Debian's packages) when it is not. Every function is idempotent and says what
# it does. Services this script started are remembered in STARTED_SERVICES so the caller can stop
# them again.

STARTED_SERVICES=()

say() { printf '==> %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() {
  local port=$1 what=$2 seconds=${3:-60}
  for _ in $(seq "$seconds"); do
    port_open "$port" && return 0
    sleep 1
  done
  say "$what did not come up on 127.0.0.1:$port within ${seconds}s" && return 1
}

# apt-get as root: directly when this script is root, else through sudo (a CI runner's user).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  say "installing $* from Debian's packages"
  if [ -z "${APT_UPDATED:-}" ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

ensure_postgres() {
  if port_open 5432; then
    say "PostgreSQL is up on 127.0.0.1:5432"
    return 0
  fi
  local fresh=""
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql postgresql-contrib
    fresh=1
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  if [ -n "$fresh" ]; then
    # Local development trusts local connections, as the rest of the project assumes.
    say "configuring a fresh PostgreSQL $version for trusted local connections"
    sed -i -E 's/^(local|host)(\s+all\s+all\s+\S*\s*)(peer|scram-sha-256|md5)$/\1\2trust/' \
      "/etc/postgresql/$version/main/pg_hba.conf"
  fi
  say "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_for_port 5432 PostgreSQL
  STARTED_SERVICES+=(postgres)
}

ensure_redis() {
  if port_open 6379; then
    say "Redis is up on 127.0.0.1:6379"
    return 0
  fi
  command -v redis-server >/dev/null || apt_install redis-server
  say "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >&2
  wait_for_port 6379 Redis
  STARTED_SERVICES+=(redis)
}

ensure_rabbitmq() {
  if port_open 5672; then
    say "RabbitMQ is up on 127.0.0.1:5672"
    return 0
  fi
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  say "starting RabbitMQ"
  rabbitmq-server -detached >&2
  wait_for_port 5672 RabbitMQ 120
  STARTED_SERVICES+=(rabbitmq)
}

# Test-only tools are built once into a cache outside the clone, shared by every checkout.
SHOP_TOOLS_DIR=${SHOP_TOOLS_DIR:-$HOME/.cache/shop-test-tools}
S3S_FS_VERSION=0.14.1
S3_SERVER_PIDS=()
S3_SERVER_DIR=""

# The first port from $1 up that nothing listens on.
free_port() {
  local port=$1
  while port_open "$port"; do port=$((port + 1)); done
  echo "$port"
}

# Waits for process $1 to listen on port $2; fails at once if the process dies.
wait_for_server() {
  local pid=$1 port=$2 what=$3
  for _ in $(seq 100); do
    port_open "$port" && return 0
    kill -0 "$pid" 2>/dev/null || { say "$what exited before listening on 127.0.0.1:$port"; return 1; }
    sleep 0.1
  done
  say "$what did not come up on 127.0.0.1:$port within 10s" && return 1
}

# An S3-compatible server for the media tests, exported as SHOP_TEST_S3_ENDPOINT,
# SHOP_TEST_S3_ACCESS_KEY_ID, SHOP_TEST_S3_SECRET_ACCESS_KEY and SHOP_TEST_S3_PUBLIC_URL. It is
# s3s-fs over a temporary folder, run twice on that folder: one instance checks SigV4 signatures
# (the SDK talks to it), the other serves objects without them, standing in for the public
# URL (a CDN or a public-read bucket in production). A server given in SHOP_TEST_S3_* is used as is.
ensure_s3_server() {
  if [ -n "${SHOP_TEST_S3_ENDPOINT:-}" ]; then
    say "using the S3 server at $SHOP_TEST_S3_ENDPOINT (from SHOP_TEST_S3_ENDPOINT)"
    return 0
  fi
  local bin="$SHOP_TOOLS_DIR/bin/s3s-fs"
  if ! { [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -F " $S3S_FS_VERSION" >/dev/null; }; then
    say "installing s3s-fs $S3S_FS_VERSION into $SHOP_TOOLS_DIR (once; a few minutes)"
    mkdir -p "$SHOP_TOOLS_DIR"
    # From the cache folder and with cargo's own temporary target dir, so the project's
    # configuration and build cache play no part.
    (cd "$SHOP_TOOLS_DIR" && env -u CARGO_TARGET_DIR cargo install --locked \
      "s3s-fs@$S3S_FS_VERSION" --features binary --root "$SHOP_TOOLS_DIR" >&2)
  fi
  S3_SERVER_DIR=$(mktemp -d "${TMPDIR:-/tmp}/shop-s3.XXXXXX")
  mkdir "$S3_SERVER_DIR/data"
  local port public_port access_key=shop-test secret_key
  secret_key=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  port=$(free_port 9123)
  public_port=$(free_port $((port + 1)))
  # Recorded first, so a failed start is cleaned up too.
  STARTED_SERVICES+=(s3s-fs)
  say "starting s3s-fs on 127.0.0.1:$port (signed requests) and 127.0.0.1:$public_port (public reads), data in $S3_SERVER_DIR/data"
  "$bin" --host 127.0.0.1 --port "$port" --access-key "$access_key" --secret-key "$secret_key" \
    "$S3_SERVER_DIR/data" >"$S3_SERVER_DIR/signed.log" 2>&1 &
  S3_SERVER_PIDS+=($!)
  wait_for_server "$!" "$port" s3s-fs || { tail -n 20 "$S3_SERVER_DIR/signed.log" >&2; return 1; }
  "$bin" --host 127.0.0.1 --port "$public_port" "$S3_SERVER_DIR/data" >"$S3_SERVER_DIR/public.log" 2>&1 &
  S3_SERVER_PIDS+=($!)
  wait_for_server "$!" "$public_port" "s3s-fs (public)" || { tail -n 20 "$S3_SERVER_DIR/public.log" >&2; return 1; }
  export SHOP_TEST_S3_ENDPOINT="http://127.0.0.1:$port"
  export SHOP_TEST_S3_ACCESS_KEY_ID=$access_key
  export SHOP_TEST_S3_SECRET_ACCESS_KEY=$secret_key
  export SHOP_TEST_S3_PUBLIC_URL="http://127.0.0.1:$public_port"
}

stop_s3_server() {
  local pid
  for pid in "${S3_SERVER_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  S3_SERVER_PIDS=()
  [ -n "$S3_SERVER_DIR" ] && rm -rf "$S3_SERVER_DIR"
  S3_SERVER_DIR=""
}

# An SMTP sink for the email tests, exported as SHOP_TEST_SMTP_URL (the SMTP server) and
# SHOP_TEST_SMTP_API (JSON over HTTP: the messages it received, the refusals it answered). It is
# scripts/smtp_sink.py on aiosmtpd from PyPI, installed once into a venv in $SHOP_TOOLS_DIR.
# Recipients named refuse-* are answered 451, reject-* 550. A sink given in SHOP_TEST_SMTP_URL and
# SHOP_TEST_SMTP_API is used as is.
AIOSMTPD_VERSION=1.4.6
SMTP_SINK_PID=""
SMTP_SINK_LOG=""

ensure_smtp_sink() {
  if [ -n "${SHOP_TEST_SMTP_URL:-}" ] && [ -n "${SHOP_TEST_SMTP_API:-}" ]; then
    say "using the SMTP sink at $SHOP_TEST_SMTP_URL (from SHOP_TEST_SMTP_URL)"
    return 0
  fi
  local venv="$SHOP_TOOLS_DIR/smtp-sink-venv"
  if ! "$venv/bin/python" -c "import sys, aiosmtpd; sys.exit(aiosmtpd.__version__ != '$AIOSMTPD_VERSION')" 2>/dev/null; then
    say "installing aiosmtpd $AIOSMTPD_VERSION from PyPI into $venv (once)"
    mkdir -p "$SHOP_TOOLS_DIR"
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "aiosmtpd==$AIOSMTPD_VERSION" >&2
  fi
  local port api_port
  port=$(free_port 2525)
  api_port=$(free_port $((port + 1)))
  SMTP_SINK_LOG=$(mktemp "${TMPDIR:-/tmp}/shop-smtp-sink.XXXXXX")
  # Recorded first, so a failed start is cleaned up too.
  STARTED_SERVICES+=(smtp-sink)
  say "starting the SMTP sink on 127.0.0.1:$port (messages as JSON on 127.0.0.1:$api_port)"
  "$venv/bin/python" scripts/smtp_sink.py --smtp-port "$port" --http-port "$api_port" \
    >"$SMTP_SINK_LOG" 2>&1 &
  SMTP_SINK_PID=$!
  wait_for_server "$SMTP_SINK_PID" "$port" "SMTP sink" || { tail -n 20 "$SMTP_SINK_LOG" >&2; return 1; }
  wait_for_server "$SMTP_SINK_PID" "$api_port" "SMTP sink (api)" || { tail -n 20 "$SMTP_SINK_LOG" >&2; return 1; }
  export SHOP_TEST_SMTP_URL="smtp://127.0.0.1:$port"
  export SHOP_TEST_SMTP_API="http://127.0.0.1:$api_port"
}

stop_smtp_sink() {
  if [ -n "$SMTP_SINK_PID" ]; then
    kill "$SMTP_SINK_PID" 2>/dev/null || true
    wait "$SMTP_SINK_PID" 2>/dev/null || true
  fi
  SMTP_SINK_PID=""
  [ -n "$SMTP_SINK_LOG" ] && rm -f "$SMTP_SINK_LOG"
  SMTP_SINK_LOG=""
}

# True when Debian's package lists have a candidate for package $1. grep reads the whole answer
# (no -q): with pipefail, a grep that quits at the first match can leave apt-cache to die of
# SIGPIPE, and the pipeline then fails although the package is there.
apt_candidate() {
  apt-cache policy "$1" 2>/dev/null | grep 'Candidate: [0-9]' >/dev/null
}

# True when Debian's package lists know package $1 (updating them once if they do not yet; an
# update that fails, say on a lock another apt holds or a dropped connection, is tried 3 times).
apt_has() {
  apt_candidate "$1" && return 0
  if [ -z "${APT_UPDATED:-}" ]; then
    local attempt
    for attempt in 1 2 3; do
      as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 && { APT_UPDATED=1; break; }
      say "apt-get update failed (attempt $attempt of 3)"
      sleep 5
    done
  fi
  apt_candidate "$1"
}

# promtool, which checks and unit-tests the alert rules, from Debian's prometheus package. Only
# the tool is wanted: a Prometheus server the package's install started is stopped and disabled.
ensure_promtool() {
  command -v promtool >/dev/null && return 0
  apt_has prometheus || { say "no prometheus package in Debian's lists: cannot get promtool"; return 1; }
  apt_install --no-install-recommends prometheus
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
  elif command -v service >/dev/null && service prometheus status >/dev/null 2>&1; then
    say "stopping the prometheus server the package started"
    as_root service prometheus stop >/dev/null 2>&1 || true
    as_root update-rc.d prometheus disable >/dev/null 2>&1 || true
  fi
}

# Node.js and npm (Debian's packages), for the generated TypeScript client (tests/typescript-client).
ensure_node() {
  command -v node >/dev/null && command -v npm >/dev/null && return 0
  apt_has nodejs || { say "no nodejs package in Debian's lists"; return 1; }
  apt_install --no-install-recommends nodejs npm
}

# docker-compose (Debian's package), which validates the compose file without a Docker engine.
ensure_docker_compose() {
  command -v docker-compose >/dev/null && return 0
  apt_has docker-compose || { say "no docker-compose package in Debian's lists"; return 1; }
  apt_install --no-install-recommends docker-compose
}

stop_started_services() {
  local service
  for service in "${STARTED_SERVICES[@]}"; do
    say "stopping $service (started by this script)"
    case $service in
      postgres) pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main stop || true ;;
      redis) redis-cli -h 127.0.0.1 -p 6379 shutdown nosave >/dev/null 2>&1 || true ;;
      rabbitmq) rabbitmqctl stop >/dev/null 2>&1 || true ;;
      s3s-fs) stop_s3_server ;;
      smtp-sink) stop_smtp_sink ;;
      *) ;;
    esac
  done
}
