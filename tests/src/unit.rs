//! The shipped systemd unit's confinement, for agents started by hand: its bounding set, and a
//! wrapper that runs the agent under it (as systemd would, minus the rest of the sandbox).

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};

/// `CapabilityBoundingSet=` of `packaging/systemd/bindsto.service`, as setpriv names them
/// (`sys_admin`).
pub fn bounding_names() -> anyhow::Result<Vec<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd/bindsto.service");
    let unit = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let Some(line) = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
    else {
        bail!("no CapabilityBoundingSet= in {}", path.display());
    };
    Ok(line
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect())
}

/// A script in `dir` that execs `agent` with the unit's bounding set, no inheritable
/// capabilities and no new privileges.
pub fn confined_wrapper(dir: &Path, agent: &Path) -> anyhow::Result<PathBuf> {
    let caps: Vec<String> = bounding_names()?.iter().map(|n| format!("+{n}")).collect();
    let wrapper = dir.join("confined-bindsto");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec setpriv --bounding-set=-all,{} --inh-caps=-all --no-new-privs {} \"$@\"\n",
            caps.join(","),
            agent.display()
        ),
    )?;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    Ok(wrapper)
}
