# bindsto post-uninstall ($1 = 0 on erase, 1 on upgrade). Mirrors %systemd_postun_with_restart.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -ge 1 ]; then
    systemctl try-restart bindsto.service >/dev/null 2>&1 || :
fi
