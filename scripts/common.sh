# Shared by scripts/run and scripts/test: the virtual environment, and the
# local PostgreSQL and RabbitMQ, started when they are installed but down.
# Source it from the repository root with `set -euo pipefail` in effect.

VENV=${VENV:-.venv}
PYTHON="$VENV/bin/python"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

ensure_venv() {
    if [ ! -x "$PYTHON" ]; then
        say "Creating the virtual environment in $VENV"
        python3 -m venv "$VENV" || die "python3 -m venv failed; install Python 3.11+ with the venv module."
    fi
    # Reinstall only when pyproject.toml changed since the last install.
    local stamp="$VENV/.installed"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        say "Installing nas-snapshots and its pinned dependencies"
        "$PYTHON" -m pip install --quiet --disable-pip-version-check -e '.[dev]' \
            || die "pip install failed; see the output above."
        touch "$stamp"
    fi
}

postgres_up() { pg_isready -q -h 127.0.0.1 -p 5432 -t 2 >/dev/null 2>&1; }

ensure_postgres() {
    if postgres_up; then return; fi
    command -v pg_ctlcluster >/dev/null \
        || die "PostgreSQL is not running on 127.0.0.1:5432 and is not installed. Install it (apt-get install postgresql) or set NAS_DATABASE_URL."
    say "Starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start \
        || die "PostgreSQL did not start; see /var/log/postgresql/."
    for _ in $(seq 1 30); do postgres_up && return; sleep 1; done
    die "PostgreSQL started but does not accept connections on 127.0.0.1:5432."
}

rabbitmq_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) >/dev/null 2>&1; }

ensure_rabbitmq() {
    if rabbitmq_up; then return; fi
    command -v rabbitmq-server >/dev/null \
        || die "RabbitMQ is not running on 127.0.0.1:5672 and is not installed. Install it (apt-get install rabbitmq-server) or set NAS_AMQP_URL."
    say "Starting RabbitMQ"
    rabbitmq-server -detached || die "RabbitMQ did not start; see /var/log/rabbitmq/."
    for _ in $(seq 1 60); do
        rabbitmq_up && rabbitmq-diagnostics -q check_running >/dev/null 2>&1 && return
        sleep 1
    done
    die "RabbitMQ started but does not accept connections on 127.0.0.1:5672."
}

# The btrfs driver tests need mkfs.btrfs and the btrfs command (btrfs-progs),
# and root for loop devices and mounts. They skip themselves without these,
# so a failed install is only reported.
ensure_btrfs_tools() {
    if command -v mkfs.btrfs >/dev/null; then return; fi
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        say "Installing btrfs-progs for the btrfs driver tests"
        if DEBIAN_FRONTEND=noninteractive apt-get update -qq \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq btrfs-progs >/dev/null; then
            return
        fi
        say "Installing btrfs-progs failed; the btrfs driver tests will be skipped."
        return
    fi
    say "mkfs.btrfs is not installed, and installing btrfs-progs needs root and apt-get; the btrfs driver tests will be skipped."
}
