#!/usr/bin/env bash
# shellcheck disable=SC2016 # single-quoted `bash -c` scripts expand their own "$1"
# The packages, end to end, on this machine: builds the .deb and .rpm
# (packaging/build.sh), checks their contents, then installs the .deb with dpkg, checks
# the binary, configs, user, directories, man pages and units (`systemd-analyze verify`),
# secures a one-node cluster the way packaging/SECURING.md says, runs the coordinator as
# the corral user and the agent from the shipped configs until the node is ready,
# reinstalls (edited configs are kept), removes (state is kept) and purges (nothing is
# left).
#
# It installs and purges a system package, so it runs only where that is harmless: under
# CI=true (a disposable machine) or when asked with CORRAL_TEST_PACKAGES=1; otherwise it
# prints SKIPPED. It needs root, Debian's dpkg and apt-get (to add rpm and systemd when
# missing), and UDP 7440 / TCP 7441 free (the shipped configs' ports).
# Extra arguments go to packaging/build.sh (for example --no-plugins). To test packages
# built elsewhere instead, set CORRAL_TEST_DEB and CORRAL_TEST_RPM to their paths (pass
# --no-plugins too if they were built without plugins).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

if [ "${CI:-}" != "true" ] && [ "${CORRAL_TEST_PACKAGES:-}" != "1" ]; then
    echo "SKIPPED: tests/packaging.sh installs and purges the corral package; it runs under CI=true or with CORRAL_TEST_PACKAGES=1"
    exit 0
fi

passed=0
failed=0
ok() {
    echo "ok: $*"
    passed=$((passed + 1))
}
fail() {
    echo "FAIL: $*" >&2
    failed=$((failed + 1))
}
# check DESCRIPTION COMMAND...: runs the command, counts the result.
check() {
    local what=$1
    shift
    local output
    if output=$("$@" 2>&1); then
        ok "$what"
    else
        fail "$what"
        printf '%s\n' "$output" | sed 's/^/    /' >&2
    fi
}
finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" = 0 ]
    exit $?
}
die() {
    echo "tests/packaging.sh: error: $*" >&2
    fail "$*"
    finish
}

[ "$(id -u)" = 0 ] || die "must run as root (it installs a package)"
if ! command -v dpkg >/dev/null || ! command -v apt-get >/dev/null; then
    die "needs a Debian system (dpkg, apt-get)"
fi
if dpkg -s corral >/dev/null 2>&1 && [ "${CI:-}" != "true" ]; then
    die "the corral package is already installed here; this test would purge it (run it on a scratch machine, or purge it first)"
fi
if [ -e /etc/corral ] && ! dpkg -s corral >/dev/null 2>&1; then
    die "/etc/corral exists but no corral package is installed: it is someone's configuration; this test would delete it"
fi

apt_updated=0
need() { # need COMMAND PACKAGE
    command -v "$1" >/dev/null && return
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq || die "apt-get update failed"
        apt_updated=1
    fi
    echo "== installing $2 (for $1)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null ||
        die "cannot install $2"
}
need rpm rpm
need systemd-analyze systemd
need systemd-sysusers systemd
need curl curl

if [ -n "${CORRAL_TEST_DEB:-}" ] && [ -n "${CORRAL_TEST_RPM:-}" ]; then
    echo "== testing the given packages (CORRAL_TEST_DEB, CORRAL_TEST_RPM)"
    deb=$CORRAL_TEST_DEB
    rpm_file=$CORRAL_TEST_RPM
else
    echo "== building the packages"
    if [ "${CI:-}" = "true" ]; then
        # CI checks what the packages hold and how they install and run, not the
        # optimizer: a lightly optimized build without link-time optimization there
        # (several minutes less on two cores). Release packages are built by
        # packaging/build.sh with the release profile as it is.
        export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
            CARGO_PROFILE_RELEASE_OPT_LEVEL=1
    fi
    build_log=$(mktemp)
    if ! packaging/build.sh "$@" 2>&1 | tee "$build_log"; then
        die "packaging/build.sh failed"
    fi
    deb=$(grep '\.deb$' "$build_log" | tail -n1)
    rpm_file=$(grep '\.rpm$' "$build_log" | tail -n1)
    rm -f "$build_log"
fi
[ -f "$deb" ] || die "no .deb built"
[ -f "$rpm_file" ] || die "no .rpm built"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
# Every plugin folder ships (packaging/build.sh derives the list from plugins/*/NAME.toml);
# the test-only ones (tests/plugins/*) never do.
mapfile -t plugins < <(packaging/build.sh --list-plugins)
[ "${#plugins[@]}" -gt 0 ] || die "packaging/build.sh --list-plugins named no plugin"
test_only=$(for d in tests/plugins/*/; do basename "$d"; done | paste -sd '|' -)
with_plugins=1
for a in "$@"; do [ "$a" = --no-plugins ] && with_plugins=0; done

# Files both packages must carry (the .deb compresses man pages itself; both ship .gz).
expected=(
    /usr/bin/corral
    /etc/corral/agent.toml
    /etc/corral/coordinator.toml
    /usr/lib/systemd/system/corral-agent.service
    /usr/lib/systemd/system/corral-coordinator.service
    /usr/lib/sysusers.d/corral.conf
    /usr/lib/tmpfiles.d/corral.conf
    /usr/lib/corral/plugins/README
    /usr/share/man/man1/corral.1.gz
    /usr/share/man/man1/corral-agent.1.gz
    /usr/share/man/man1/corral-coordinator.1.gz
    /usr/share/man/man1/corral-certs-issue.1.gz
    /usr/share/bash-completion/completions/corral
    /usr/share/fish/vendor_completions.d/corral.fish
    /usr/share/corral/prometheus/corral-alerts.yml
    /usr/share/corral/grafana/corral-dashboard.json
    /usr/share/doc/corral/SECURING.md
)
if [ "$with_plugins" = 1 ]; then
    for p in "${plugins[@]}"; do
        expected+=("/usr/lib/corral/plugins/$p.wasm" "/usr/lib/corral/plugins/$p.toml")
    done
fi

echo "== .deb contents ($deb)"
deb_files=$(dpkg-deb -c "$deb" | awk '{print $NF}' | sed 's#^\./#/#')
for f in "${expected[@]}" /usr/share/zsh/vendor-completions/_corral; do
    check "deb carries $f" grep -qxF "$f" <<<"$deb_files"
done
check "deb carries no test-only plugin ($test_only)" bash -c '! grep -E "/plugins/($2)\." <<<"$1"' _ "$deb_files" "$test_only"
check "deb is version $version" test "$(dpkg-deb -f "$deb" Version)" = "$version-1"
check "deb depends on systemd (sysusers, tmpfiles)" grep -q systemd <<<"$(dpkg-deb -f "$deb" Depends)"
control=$(mktemp -d)
dpkg-deb -e "$deb" "$control"
check "deb lists both configs as conffiles" diff <(sort "$control/conffiles") <(printf '%s\n' /etc/corral/agent.toml /etc/corral/coordinator.toml)
check "deb postinst creates the user and directories" grep -q "systemd-sysusers" "$control/postinst"
check "deb postinst never starts a unit on a first install" bash -c '! grep -q "deb-systemd-invoke start" "$1"' _ "$control/postinst"
check "deb postrm purges state and the user" grep -q "userdel corral" "$control/postrm"
check "deb prerm stops the units on removal" grep -q "deb-systemd-invoke stop" "$control/prerm"
rm -rf "$control"

echo "== .rpm contents ($rpm_file)"
rpm_files=$(rpm -qlp "$rpm_file" 2>/dev/null)
for f in "${expected[@]}" /usr/share/zsh/site-functions/_corral; do
    check "rpm carries $f" grep -qxF "$f" <<<"$rpm_files"
done
check "rpm carries no test-only plugin ($test_only)" bash -c '! grep -E "/plugins/($2)\." <<<"$1"' _ "$rpm_files" "$test_only"
check "rpm keeps edited configs (noreplace)" diff <(rpm -qp --configfiles "$rpm_file" 2>/dev/null | sort) <(printf '%s\n' /etc/corral/agent.toml /etc/corral/coordinator.toml)
check "rpm %post creates the user and directories" grep -q "systemd-sysusers corral.conf" <<<"$(rpm -qp --scripts "$rpm_file" 2>/dev/null)"
check "rpm requires systemd" grep -q "^systemd" <<<"$(rpm -qp --requires "$rpm_file" 2>/dev/null)"

echo "== dpkg -i"
check "dpkg -i installs the package" dpkg -i "$deb"
check "corral --version is $version" bash -c 'test "$(corral --version)" = "corral $1"' _ "$version"
for f in /etc/corral/agent.toml /etc/corral/coordinator.toml; do
    check "$f installed" test -s "$f"
done
check "user corral exists, no login shell" bash -c 'getent passwd corral | grep -q ":/var/lib/corral:/usr/sbin/nologin$"'
check "group corral exists" getent group corral
check "/var/lib/corral is corral's, 0750" test "$(stat -c %U:%G:%a /var/lib/corral)" = corral:corral:750
check "/var/cache/corral exists" test -d /var/cache/corral
check "/var/lib/corral-agent exists, searchable (Ray's user reaches its temp dir)" test "$(stat -c %U:%a /var/lib/corral-agent)" = root:755
check "/run/corral is corral's, for the API socket" test "$(stat -c %U /run/corral)" = corral
check "/etc/corral/tls is root:corral 0750" test "$(stat -c %U:%G:%a /etc/corral/tls)" = root:corral:750
check "man corral-agent resolves" bash -c 'command -v man >/dev/null || exit 0; man -w corral-agent'
check "bash completion names the subcommands" grep -q "nodes" /usr/share/bash-completion/completions/corral
# shellcheck disable=SC2317 # called through check
# verify exits 0 on unknown keys (it only warns), so any output is a failure. It looks
# up Documentation=man: pages with man(1) where that is installed.
verify_quietly() {
    local out man=--man=yes
    command -v man >/dev/null || man=--man=no
    if ! out=$(systemd-analyze verify "$man" "$1" 2>&1) || [ -n "$out" ]; then
        printf '%s\n' "$out"
        return 1
    fi
}
for u in corral-agent corral-coordinator; do
    check "systemd-analyze verify $u.service (no warnings)" verify_quietly "/usr/lib/systemd/system/$u.service"
done
# The hardening stays where packaging/README.md says it is.
check "corral-coordinator.service exposure at most 2.0" systemd-analyze security --offline=yes --threshold=20 /usr/lib/systemd/system/corral-coordinator.service
check "corral-agent.service exposure at most 8.0" systemd-analyze security --offline=yes --threshold=80 /usr/lib/systemd/system/corral-agent.service
check "units are not enabled by the install" bash -c '! ls /etc/systemd/system/multi-user.target.wants/ 2>/dev/null | grep -q corral'
if [ "$with_plugins" = 1 ]; then
    # What an operator enabling a shipped plugin gets: the installed host loads it with
    # its installed manifest (the same check the agent makes at start).
    for p in "${plugins[@]}"; do
        check "plugin $p installed and loads (corral plugin check)" corral plugin check "/usr/lib/corral/plugins/$p.wasm"
    done
fi

echo "== securing a one-node cluster as SECURING.md says, then the shipped configs"
node=$(hostname -s)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
}
trap cleanup EXIT
check "certs init" corral certs init --out /etc/corral/ca
check "coordinator certificate" corral certs issue --ca /etc/corral/ca --name coordinator --role coordinator \
    --san localhost --san 127.0.0.1 --out /etc/corral/tls
chgrp corral /etc/corral/tls/coordinator.key && chmod 0640 /etc/corral/tls/coordinator.key
certs=$(mktemp -d)
check "agent certificate for $node" corral certs issue --ca /etc/corral/ca --name "$node" --role agent --out "$certs"
install -m 0644 "$certs/$node.pem" /etc/corral/tls/agent.pem
install -m 0600 "$certs/$node.key" /etc/corral/tls/agent.key
rm -rf "$certs"
sed -i 's/^coordinator = .*/coordinator = "localhost:7440"/' /etc/corral/agent.toml
check "corral config check coordinator.toml (shipped)" corral config check /etc/corral/coordinator.toml
check "corral config check agent.toml (shipped, coordinator set)" corral config check /etc/corral/agent.toml

logs=$(mktemp -d)
# As the unit runs it: user corral, state in /var/lib/corral, keys read through the group.
runuser -u corral -- /usr/bin/corral coordinator --config /etc/corral/coordinator.toml >"$logs/coordinator.log" 2>&1 &
pids+=($!)
/usr/bin/corral agent --config /etc/corral/agent.toml >"$logs/agent.log" 2>&1 &
pids+=($!)
ready=0
for _ in $(seq 1 150); do
    if corral nodes --json 2>/dev/null | grep -q '"liveness": "ready"'; then
        ready=1
        break
    fi
    sleep 0.2
done
if [ "$ready" = 1 ]; then
    ok "agent $node is ready at the coordinator, both from the shipped configs"
else
    fail "node $node never became ready"
    sed 's/^/    coordinator: /' "$logs/coordinator.log" >&2
    sed 's/^/    agent: /' "$logs/agent.log" >&2
fi
check "/metrics is served from the shipped config, through the socket" bash -c 'curl -fsS --unix-socket /run/corral/api.sock http://localhost/metrics | grep -Eq "^corral_node_up\\{node=\"$1\"\\} 1(\\.0)?$"' _ "$node"
check "the TCP API refuses a caller without credentials" test "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:7441/api/v1/nodes)" = 401
check "root on the socket is admin" bash -c 'corral whoami | grep -q "^root (admin)"'
check "the coordinator's database is in /var/lib/corral, owned by corral" test "$(stat -c %U /var/lib/corral/coordinator.db)" = corral
cleanup
pids=()
rm -rf "$logs"

echo "== reinstall keeps the edited config"
check "dpkg -i again (same version)" dpkg -i "$deb" </dev/null
check "agent.toml keeps its edit" grep -qx 'coordinator = "localhost:7440"' /etc/corral/agent.toml

echo "== dpkg -r keeps configs, certificates, state and the user"
check "dpkg -r" dpkg -r corral
check "binary removed" test ! -e /usr/bin/corral
check "units removed" test ! -e /usr/lib/systemd/system/corral-agent.service
check "configs kept" test -s /etc/corral/agent.toml
check "certificates kept" test -s /etc/corral/tls/agent.key
check "database kept" test -s /var/lib/corral/coordinator.db
check "user kept" getent passwd corral

echo "== dpkg --purge leaves nothing"
check "dpkg --purge" dpkg --purge corral
for p in /usr/bin/corral /usr/lib/systemd/system/corral-agent.service \
    /usr/lib/systemd/system/corral-coordinator.service /usr/lib/sysusers.d/corral.conf \
    /usr/lib/tmpfiles.d/corral.conf /usr/lib/corral /usr/share/corral /usr/share/doc/corral \
    /usr/share/man/man1/corral.1.gz /usr/share/bash-completion/completions/corral \
    /etc/corral /var/lib/corral /var/lib/corral-agent /var/cache/corral /run/corral; do
    check "$p is gone" test ! -e "$p"
done
check "user corral is gone" bash -c '! getent passwd corral'
check "group corral is gone" bash -c '! getent group corral'
check "dpkg forgot the package" bash -c '! dpkg -s corral 2>/dev/null | grep -q "^Status: install"'

finish
