# bindsto pre-uninstall ($1 = 0 on erase, 1 on upgrade). Mirrors %systemd_preun.
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable --now bindsto.service >/dev/null 2>&1 || :
fi
