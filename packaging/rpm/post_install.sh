# bindsto post-install ($1 = 1 on install, 2 on upgrade). Mirrors %systemd_post: enable on
# first install (presets would leave it disabled on Amazon Linux), never fail the transaction.
# The state directory holds the ladder's incident records (one run per incident).
install -d -m 0700 -o root -g root /var/lib/bindsto
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ]; then
    systemctl enable bindsto.service >/dev/null 2>&1 || :
fi
