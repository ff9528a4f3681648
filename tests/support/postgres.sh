# Helpers for scripts that need a throwaway PostgreSQL cluster (sourced, not run): initdb in a
# temp dir, a free loopback port, trust authentication and a database named sessiond; Debian's
# postgresql package is installed when it is missing. The same as tests/support/postgres.rs.

# Prints the newest /usr/lib/postgresql/<major>/bin that has an initdb (nothing when none has).
postgres_bin_dir() {
    local initdb
    initdb=$(printf '%s\n' /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)
    [[ -x $initdb ]] && dirname "$initdb"
}

# Installs Debian's postgresql package when no initdb is there; as root, or through sudo.
postgres_install() {
    [[ -n $(postgres_bin_dir) ]] && return 0
    echo "installing postgresql (Debian package)"
    local sudo=
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq &&
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
}

# postgres_tool TOOL [ARG…]: runs a server tool, as the postgres user when we are root (initdb
# refuses root), from the cluster's dir (that user may not be allowed into ours).
postgres_tool() {
    local tool=$POSTGRES_BIN/$1
    shift
    if [ "$(id -u)" = 0 ]; then
        (cd "$POSTGRES_DIR" && runuser -u postgres -- "$tool" "$@")
    else
        (cd "$POSTGRES_DIR" && "$tool" "$@")
    fi
}

# postgres_start: creates and starts a cluster in a new temp dir (data in data/, the log in
# postgres.log, the unix socket beside them) with a database named sessiond. Exports
# POSTGRES_URL (postgres://postgres@127.0.0.1:PORT/sessiond), POSTGRES_DIR, POSTGRES_PORT and
# POSTGRES_BIN (psql and the rest). Call postgres_stop however the script ends.
postgres_start() {
    postgres_install || return 1
    export POSTGRES_BIN POSTGRES_DIR POSTGRES_PORT POSTGRES_URL
    POSTGRES_BIN=$(postgres_bin_dir)
    POSTGRES_DIR=$(mktemp -d -t sessiond-pg-XXXXXX) || return 1
    if [ "$(id -u)" = 0 ]; then chown postgres: "$POSTGRES_DIR" || return 1; fi
    POSTGRES_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    POSTGRES_URL=postgres://postgres@127.0.0.1:$POSTGRES_PORT/sessiond
    postgres_tool initdb -D "$POSTGRES_DIR/data" --auth=trust -U postgres --encoding=UTF8 \
        --locale=C >"$POSTGRES_DIR/initdb.log" 2>&1 || {
        echo "initdb failed:" >&2
        cat "$POSTGRES_DIR/initdb.log" >&2
        return 1
    }
    # In postgresql.conf rather than on pg_ctl's command line, so that a restart keeps them.
    cat >>"$POSTGRES_DIR/data/postgresql.conf" <<CONF
port = $POSTGRES_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$POSTGRES_DIR'
fsync = on
synchronous_commit = on
max_connections = 200
CONF
    if ! postgres_tool pg_ctl -D "$POSTGRES_DIR/data" -l "$POSTGRES_DIR/postgres.log" -w -t 60 \
        start >/dev/null; then
        echo "PostgreSQL did not start:" >&2
        cat "$POSTGRES_DIR/postgres.log" >&2
        return 1
    fi
    "$POSTGRES_BIN/psql" -X -q "postgres://postgres@127.0.0.1:$POSTGRES_PORT/postgres" \
        -c 'create database sessiond'
}

# Stops the cluster started by postgres_start (immediate: nothing in it is kept) and removes
# its dir.
postgres_stop() {
    [[ -n ${POSTGRES_DIR:-} && -d $POSTGRES_DIR ]] || return 0
    postgres_tool pg_ctl -D "$POSTGRES_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$POSTGRES_DIR"
    POSTGRES_DIR=
}
