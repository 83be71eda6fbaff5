# corral %postun: reload units; after an upgrade ($1 >= 1) restart the units that were
# running. Erase keeps /var/lib/corral, /var/cache/corral, the corral user and edited
# configs (saved as .rpmsave): RPM has no purge; see packaging/README.md.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart corral-agent.service corral-coordinator.service >/dev/null 2>&1 || :
    fi
fi
