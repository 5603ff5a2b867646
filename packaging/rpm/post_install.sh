# bindsto post-install ($1 = 1 on install, 2 on upgrade). Mirrors %systemd_post: enable on
# first install (presets would leave it disabled on Amazon Linux), never fail the transaction.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ]; then
    systemctl enable bindsto.service >/dev/null 2>&1 || :
fi
