#!/usr/bin/env bash
# Install Debian's docker.io and start dockerd as root in the background, idempotently (issue 10).
#
#   k8s/local/dockerd.sh          install if needed, start if not running, wait until `docker info` answers
#   k8s/local/dockerd.sh status   say whether it runs (pid, runtimes); exit 1 if not
#   k8s/local/dockerd.sh stop     stop the dockerd that this script started (by its pid file)
#
# dockerd runs with the OCI runtime wrapper k8s/local/runc-no-sys-resource registered as the
# default runtime: this machine's capability bounding set lacks CAP_SYS_RESOURCE, so runc cannot
# start a `--privileged` container (kind's nodes) unless that capability is removed from the
# request first (docs/cluster.md). The wrapper is copied to a fixed path so that dockerd does not
# depend on the checkout it was started from. No systemd here: dockerd is a plain background
# process, its log in /var/log/orderstream-dockerd.log, its pid in /run/orderstream-dockerd.pid.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RUNTIME_NAME=orderstream-runc
WRAPPER_DIR=/usr/local/lib/orderstream
WRAPPER="$WRAPPER_DIR/runc-no-sys-resource"
LOG=/var/log/orderstream-dockerd.log
PIDFILE=/run/orderstream-dockerd.pid
SOCK=/var/run/docker.sock
# Seconds to wait for a fresh dockerd to answer `docker info`.
START_TIMEOUT="${DOCKERD_START_TIMEOUT:-60}"

say() { echo "dockerd.sh: $*" >&2; }

# The docker client on PATH may be newer than the engine (28.x vs 20.10); API versions are
# negotiated, so either client works.
docker_ok() { docker -H "unix://$SOCK" info >/dev/null 2>&1; }

running_pid() {
    local pid
    [ -f "$PIDFILE" ] || return 1
    pid="$(cat "$PIDFILE")"
    [ -n "$pid" ] && [ -d "/proc/$pid" ] && grep -q dockerd "/proc/$pid/comm" 2>/dev/null || return 1
    echo "$pid"
}

install_packages() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    [ -x /usr/sbin/runc ] || missing+=(runc)
    [ -x /usr/bin/python3 ] || missing+=(python3)
    if [ "${#missing[@]}" -gt 0 ]; then
        [ "$(id -u)" = 0 ] || { say "need root to install ${missing[*]}"; exit 1; }
        say "installing ${missing[*]} from Debian"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

install_wrapper() {
    mkdir -p "$WRAPPER_DIR"
    if ! cmp -s "$HERE/runc-no-sys-resource" "$WRAPPER"; then
        install -m 0755 "$HERE/runc-no-sys-resource" "$WRAPPER.new"
        mv "$WRAPPER.new" "$WRAPPER"
    fi
}

start() {
    local pid
    install_packages
    install_wrapper
    if pid="$(running_pid)" && docker_ok; then
        say "already running (pid $pid)"
        return 0
    fi
    if docker_ok; then
        # Someone else's engine: use it, but say whether it has our runtime.
        if docker -H "unix://$SOCK" info --format '{{json .Runtimes}}' | grep -q "$RUNTIME_NAME"; then
            say "a dockerd not started by this script answers on $SOCK and has $RUNTIME_NAME"
            return 0
        fi
        say "a dockerd not started by this script answers on $SOCK without the $RUNTIME_NAME runtime;"
        say "privileged containers (kind nodes) will fail there. Stop it and run this script again."
        return 1
    fi
    [ "$(id -u)" = 0 ] || { say "need root to start dockerd"; exit 1; }
    # A pid file of a dead dockerd, or a stale socket, would confuse the start.
    rm -f "$PIDFILE"
    [ -S "$SOCK" ] && rm -f "$SOCK"
    say "starting dockerd (log: $LOG)"
    # setsid: dockerd must not get the terminal's signals (a Ctrl-C in the caller's shell).
    setsid dockerd \
        --host "unix://$SOCK" \
        --add-runtime "$RUNTIME_NAME=$WRAPPER" \
        --default-runtime "$RUNTIME_NAME" \
        --pidfile "$PIDFILE" \
        </dev/null >>"$LOG" 2>&1 &
    local deadline=$(( $(date +%s) + START_TIMEOUT ))
    until docker_ok; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            say "dockerd did not answer within ${START_TIMEOUT}s; last lines of $LOG:"
            tail -n 20 "$LOG" >&2
            return 1
        fi
        sleep 0.5
    done
    say "running (pid $(cat "$PIDFILE")), default runtime $RUNTIME_NAME"
}

status() {
    local pid
    if pid="$(running_pid)" && docker_ok; then
        echo "dockerd running, pid $pid, started by k8s/local/dockerd.sh"
    elif docker_ok; then
        echo "dockerd answers on $SOCK (not started by k8s/local/dockerd.sh)"
    else
        echo "dockerd not running"
        return 1
    fi
    docker -H "unix://$SOCK" info --format 'engine {{.ServerVersion}}, default runtime {{.DefaultRuntime}}, storage {{.Driver}}, cgroup v{{.CgroupVersion}} ({{.CgroupDriver}})'
}

stop() {
    local pid deadline
    pid="$(running_pid)" || { say "no dockerd started by this script is running"; return 0; }
    kill "$pid"
    deadline=$(( $(date +%s) + 30 ))
    while [ -d "/proc/$pid" ]; do
        [ "$(date +%s)" -lt "$deadline" ] || { say "dockerd $pid still running after 30s"; return 1; }
        sleep 0.5
    done
    say "stopped dockerd $pid"
}

case "${1:-start}" in
    start) start ;;
    status) status ;;
    stop) stop ;;
    *) echo "usage: $0 [start|status|stop]" >&2; exit 2 ;;
esac
