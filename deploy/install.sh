#!/usr/bin/env bash
# Installs and starts the lcfs agent on this host from this checkout:
#   sudo ./deploy/install.sh
# Debian/Ubuntu (apt) or CentOS/RHEL/Fedora (dnf/yum). Safe to re-run: it rebuilds, keeps an
# existing /etc/lcfs/config.json, and restarts the agent.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "$0")/.." && pwd)
CONFIG_DIR=/etc/lcfs
CONFIG_FILE=$CONFIG_DIR/config.json
DEFAULT_DATA_DIR=/var/lib/lcfs
BIN_LINK=/usr/local/bin/lcfs
UNIT_FILE=/etc/systemd/system/lcfs.service
LOG_DIR=/var/log/lcfs
LOG_FILE=$LOG_DIR/agent.log
PID_FILE=/run/lcfs/agent.pid
NODE_MIN=20.19
START_TIMEOUT_S=60
STOP_TIMEOUT_S=60

say() { printf '==> %s\n' "$*"; }
die() {
  printf 'install.sh: %s\n' "$*" >&2
  exit 1
}

[[ $EUID -eq 0 ]] || die "run as root: sudo $0"

# True if the version $1 ("X.Y.Z" or "vX.Y.Z") is at least NODE_MIN.
version_ok() {
  local version=${1#v} major minor
  IFS=. read -r major minor _ <<<"$version"
  local need_major=${NODE_MIN%%.*} need_minor=${NODE_MIN#*.}
  [[ $major =~ ^[0-9]+$ && $minor =~ ^[0-9]+$ ]] || return 1
  ((major > need_major || (major == need_major && minor >= need_minor)))
}

node_ok() { command -v node >/dev/null && command -v npm >/dev/null && version_ok "$(node --version)"; }

node_help() {
  die "lcfs needs Node.js >= $NODE_MIN with npm, and this system's package repositories do not offer it.
Install it from your distribution's newer release or backports, or from the Node.js project's
package repository for your distribution, then re-run: sudo $0"
}

install_packages() {
  if command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    # fuse3 for fusermount3; the rest builds the agent's FUSE binding during npm ci.
    say "installing fuse3 and the FUSE binding's build tools (apt)"
    apt-get update -q </dev/null
    apt-get install -y -q fuse3 libfuse3-dev pkg-config g++ make python3 </dev/null
    if ! node_ok; then
      local candidate
      candidate=$(apt-cache policy nodejs | awk '/Candidate:/ {print $2}')
      # Debian versions look like 20.19.2+dfsg-1; strip an epoch and the Debian suffix.
      candidate=${candidate#*:}
      version_ok "${candidate%%[+~-]*}" || node_help
      say "installing nodejs $candidate and npm (apt)"
      apt-get install -y -q nodejs npm </dev/null
    fi
  elif command -v dnf >/dev/null || command -v yum >/dev/null; then
    local pm
    pm=$(command -v dnf || command -v yum)
    say "installing fuse3 and the FUSE binding's build tools ($(basename "$pm"))"
    "$pm" install -y fuse3 fuse3-devel pkgconf-pkg-config gcc-c++ make python3 </dev/null
    if ! node_ok; then
      # RHEL-family releases ship newer Node.js as module streams; Fedora has no modules.
      "$pm" module enable -y nodejs:22 </dev/null >/dev/null 2>&1 ||
        "$pm" module enable -y nodejs:20 </dev/null >/dev/null 2>&1 || true
      "$pm" install -y nodejs npm </dev/null || true
    fi
  else
    die "no apt-get, dnf or yum found: install fuse3, libfuse3 headers, a C compiler and Node.js >= $NODE_MIN by hand, then re-run"
  fi
  node_ok || node_help
}

# npm runs as the owner of the checkout, so a user's clone does not fill up with root-owned files.
as_repo_owner() {
  local owner home
  owner=$(stat -c %U "$REPO_DIR")
  if [[ $owner == root ]]; then
    "$@"
  else
    home=$(getent passwd "$owner" | cut -d: -f6)
    runuser -u "$owner" -- env HOME="$home" PATH="$PATH" "$@"
  fi
}

build() {
  say "npm ci and build in $REPO_DIR"
  cd "$REPO_DIR"
  as_repo_owner npm ci --no-audit --no-fund --no-update-notifier </dev/null
  as_repo_owner npm run build </dev/null
  ln -sfn "$REPO_DIR/bin/run.js" "$BIN_LINK"
  say "linked $BIN_LINK -> $REPO_DIR/bin/run.js"
}

write_config() {
  mkdir -p "$CONFIG_DIR"
  if [[ -e $CONFIG_FILE ]]; then
    say "keeping existing $CONFIG_FILE"
  else
    printf '{\n  "dataDir": "%s",\n  "logLevel": "info"\n}\n' "$DEFAULT_DATA_DIR" >"$CONFIG_FILE"
    say "wrote $CONFIG_FILE"
  fi
}

# Stops an agent this script started earlier without systemd, if it still runs.
stop_nohup_agent() {
  [[ -f $PID_FILE ]] || return 0
  local pid
  pid=$(<"$PID_FILE")
  if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'lcfs.* agent'; then
    say "stopping the running agent (pid $pid)"
    kill -TERM "$pid"
    local waited=0
    while kill -0 "$pid" 2>/dev/null; do
      ((waited++ < STOP_TIMEOUT_S * 10)) || die "agent pid $pid did not stop within ${STOP_TIMEOUT_S}s"
      sleep 0.1
    done
  fi
  rm -f "$PID_FILE"
}

# Waits until the log line source ($1: a command printing log lines) shows "agent started"
# from pid $2; prints that line.
wait_for_start() {
  local source=$1 pid_of=$2 deadline=$((SECONDS + START_TIMEOUT_S)) pid line
  while ((SECONDS < deadline)); do
    pid=$($pid_of)
    if [[ $pid =~ ^[1-9][0-9]*$ ]]; then
      line=$($source | grep -F '"msg":"agent started"' | grep -F "\"pid\":$pid," | tail -n 1 || true)
      if [[ -n $line ]]; then
        printf '%s\n' "$line"
        return 0
      fi
    fi
    sleep 0.2
  done
  return 1
}

start_with_systemd() {
  say "installing $UNIT_FILE"
  install -m 0644 "$REPO_DIR/deploy/lcfs.service" "$UNIT_FILE"
  systemctl daemon-reload
  systemctl enable lcfs.service
  local since
  since=$(date '+%Y-%m-%d %H:%M:%S')
  systemctl restart lcfs.service
  journal_lines() { journalctl -u lcfs.service --since "$since" -o cat --no-pager; }
  main_pid() { systemctl show -p MainPID --value lcfs.service; }
  STARTED_LINE=$(wait_for_start journal_lines main_pid) || {
    journal_lines | tail -n 20 >&2
    die "the agent did not log that it started within ${START_TIMEOUT_S}s; see journalctl -u lcfs"
  }
  HOW_TO="logs: journalctl -u lcfs -o cat | stop: systemctl stop lcfs"
}

start_with_nohup() {
  say "systemd is not PID 1: starting the agent with nohup"
  stop_nohup_agent
  mkdir -p "$LOG_DIR" "$(dirname "$PID_FILE")"
  local offset
  offset=$(stat -c %s "$LOG_FILE" 2>/dev/null || echo 0)
  nohup "$BIN_LINK" agent --config "$CONFIG_FILE" >>"$LOG_FILE" 2>&1 </dev/null &
  echo $! >"$PID_FILE"
  new_log_lines() { tail -c +$((offset + 1)) "$LOG_FILE"; }
  pid_file_pid() { cat "$PID_FILE"; }
  STARTED_LINE=$(wait_for_start new_log_lines pid_file_pid) || {
    new_log_lines | tail -n 20 >&2
    die "the agent did not log that it started within ${START_TIMEOUT_S}s; see $LOG_FILE"
  }
  HOW_TO="logs: $LOG_FILE | pid file: $PID_FILE | stop: kill \$(cat $PID_FILE)"
}

install_packages
build
write_config
if [[ -d /run/systemd/system ]]; then
  start_with_systemd
else
  start_with_nohup
fi

# shellcheck disable=SC2016 # the single quotes hold JavaScript, not shell
summary=$(node -e '
  const line = JSON.parse(process.argv[1]);
  console.log(`lcfs agent running: pid ${line.pid}, data dir ${line.dataDir}, mountpoint ${line.mountpoint}, ${line.layers} layers`);
' "$STARTED_LINE")
say "$summary"
say "config: $CONFIG_FILE | $HOW_TO"
