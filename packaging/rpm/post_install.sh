# corral %post: the corral user and directories (sysusers.d and tmpfiles.d, shared with
# the .deb), then systemd reloads units. Units stay disabled until the operator enables
# them. $1: 1 on first install, 2 on upgrade.
systemd-sysusers corral.conf
systemd-tmpfiles --create corral.conf
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
