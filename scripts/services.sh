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

apt_install() {
  say "installing $* from Debian's packages"
  if [ -z "${APT_UPDATED:-}" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
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

stop_started_services() {
  local service
  for service in "${STARTED_SERVICES[@]}"; do
    say "stopping $service (started by this script)"
    case $service in
      postgres) pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main stop || true ;;
      redis) redis-cli -h 127.0.0.1 -p 6379 shutdown nosave >/dev/null 2>&1 || true ;;
      rabbitmq) rabbitmqctl stop >/dev/null 2>&1 || true ;;
      *) ;;
    esac
  done
}
