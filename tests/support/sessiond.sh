# Helpers for the scripts that test a live sessiond (sourced, not run): where cargo puts
# things, building the binary, and starting and stopping a server on a free port.
#
# Nothing here assumes the default target directory: cargo is asked (CARGO_TARGET_DIR, a
# .cargo/config.toml or the default all give the right answer).

CARGO=${CARGO:-cargo}

# Prints cargo's target directory.
cargo_target_dir() {
    "$CARGO" metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p'
}

# sessiond_build [CARGO-FLAG…]: builds the binary (debug, or e.g. --release); sets
# SESSIOND_BIN to the executable cargo reports.
sessiond_build() {
    SESSIOND_BIN=$("$CARGO" build --quiet --bin sessiond --message-format=json "$@" |
        sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
    if [[ ! -x $SESSIOND_BIN ]]; then
        echo "cargo did not report the sessiond executable" >&2
        return 1
    fi
}

# sessiond_start DIR [FLAG…]: starts `sessiond serve` on a free loopback port with its data
# in DIR/data and its log in DIR/server.log, plus the flags given; waits until it listens.
# Sets SESSIOND_PID and SESSIOND_ADDR (host:port). Call sessiond_stop however the script ends.
sessiond_start() {
    local dir=$1
    shift
    # Made before the server starts, so that reading it never races the server's opening it.
    : >"$dir/server.log"
    RUST_LOG=${RUST_LOG:-warn,sessiond::app=info} "$SESSIOND_BIN" serve \
        --addr 127.0.0.1:0 \
        --data-dir "$dir/data" \
        "$@" \
        2>"$dir/server.log" &
    SESSIOND_PID=$!
    SESSIOND_ADDR=
    for _ in $(seq 1 100); do
        SESSIOND_ADDR=$(sed -n 's/.*listening addr=\([0-9.:]*\).*/\1/p' "$dir/server.log" | head -n 1)
        [[ -n $SESSIOND_ADDR ]] && return 0
        if ! kill -0 "$SESSIOND_PID" 2>/dev/null; then
            echo "sessiond did not start:" >&2
            cat "$dir/server.log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "sessiond did not report its address:" >&2
    cat "$dir/server.log" >&2
    return 1
}

# Stops the server started by sessiond_start (SIGTERM, then waits for it).
sessiond_stop() {
    if [[ -n ${SESSIOND_PID:-} ]] && kill -0 "$SESSIOND_PID" 2>/dev/null; then
        kill -TERM "$SESSIOND_PID"
        wait "$SESSIOND_PID" || true
    fi
}

# sessiond_stop_checked DIR LABEL: stops the server, then fails (saying so, for LABEL) when
# its log in DIR has errors or warnings.
sessiond_stop_checked() {
    sessiond_stop
    if ! sessiond_log_problems "$1"; then
        echo "$2: the server logged the errors or warnings above" >&2
        return 1
    fi
}

# sessiond_log_problems DIR: prints the server's errors and warnings; fails when there are any.
sessiond_log_problems() {
    if grep -E ' (ERROR|WARN) ' "$1/server.log" >/dev/null; then
        grep -E ' (ERROR|WARN) ' "$1/server.log" | head -n 50 >&2
        return 1
    fi
}

# debian_install COMMAND [PACKAGE]: installs the Debian package (named like the command
# unless given) when the command is missing; as root, or through sudo.
debian_install() {
    local command=$1 package=${2:-$1}
    command -v "$command" >/dev/null && return 0
    echo "installing $package (Debian package)"
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "$package" >/dev/null
    else sudo apt-get update -qq && sudo apt-get install -y -qq "$package" >/dev/null; fi
}

# wrk_append_script FILE SESSION_ID…: writes a wrk script that appends an ordinary message to
# the given sessions in turn: the benchmarks' durable-append load.
wrk_append_script() {
    local file=$1
    shift
    cat >"$file" <<LUA
local ids = { $(printf '"%s",' "$@") }
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/api/messaging/sessions/" .. ids[(n % #ids) + 1] .. "/messages",
    { ["Content-Type"] = "application/json" }, '{"content":"a benchmark message of ordinary length"}')
end
LUA
}
