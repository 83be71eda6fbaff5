# corral %preun: on erase ($1 = 0) stop and disable the units; on upgrade ($1 = 1) leave
# them (post_uninstall restarts running ones).
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now corral-agent.service corral-coordinator.service >/dev/null 2>&1 || :
fi
