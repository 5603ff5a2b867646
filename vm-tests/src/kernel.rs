//! Debian kernel packages for the fleet's kernel lines: found in the suites' Packages indexes
//! with a private apt state (the machine's own apt configuration is never touched), downloaded
//! once into the cache and unpacked there.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{run_cmd, scenario::KernelLine};

/// An unpacked kernel: its image and module tree.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub line: &'static str,
    /// `uname -r` of the kernel, e.g. `5.10.0-32-cloud-amd64`.
    pub release: String,
    /// The Debian package it came from (name_version), for the table.
    pub package: String,
    pub vmlinuz: PathBuf,
    pub modules: PathBuf,
}

/// The Debian archive URL, taken from the machine's apt sources (only the suite changes): the
/// project must not hard-code a mirror.
pub fn archive_url() -> Result<String> {
    let mut candidates = Vec::new();
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        for e in dir.flatten() {
            if e.path().extension().is_some_and(|x| x == "sources") {
                let text = fs::read_to_string(e.path()).unwrap_or_default();
                for l in text.lines() {
                    if let Some(u) = l.strip_prefix("URIs:") {
                        candidates.extend(u.split_whitespace().map(str::to_string));
                    }
                }
            }
        }
    }
    if let Ok(text) = fs::read_to_string("/etc/apt/sources.list") {
        for l in text.lines() {
            let mut w = l.split_whitespace();
            if w.next() == Some("deb")
                && let Some(u) = w.find(|x| x.starts_with("http"))
            {
                candidates.push(u.to_string());
            }
        }
    }
    candidates
        .into_iter()
        .find(|u| !u.contains("security"))
        .context("no Debian archive URL in /etc/apt/sources.list{,.d}")
}

/// Private apt state under the cache: its own sources.list and lists, shared by all lines.
struct Apt {
    dir: PathBuf,
}

impl Apt {
    fn new(cache: &Path) -> Result<Self> {
        let dir = cache.join("apt");
        fs::create_dir_all(dir.join("lists/partial"))?;
        fs::create_dir_all(dir.join("cache/archives/partial"))?;
        let url = archive_url()?;
        let sources: String = ["bullseye", "bookworm", "bookworm-backports"]
            .iter()
            .map(|s| format!("deb {url} {s} main\n"))
            .collect();
        let path = dir.join("sources.list");
        if fs::read_to_string(&path).ok().as_deref() != Some(sources.as_str()) {
            fs::write(&path, sources)?;
            // New sources: the old lists do not describe them.
            let _ = fs::remove_file(dir.join("lists/.updated"));
        }
        Ok(Self { dir })
    }

    fn opts(&self) -> Vec<String> {
        let d = self.dir.display();
        vec![
            format!("-oDir::Etc::SourceList={d}/sources.list"),
            "-oDir::Etc::SourceParts=/dev/null".into(),
            format!("-oDir::State::Lists={d}/lists"),
            format!("-oDir::Cache={d}/cache"),
            "-oDebug::NoLocking=1".into(),
            "-oAPT::Sandbox::User=root".into(),
        ]
    }

    fn update(&self) -> Result<()> {
        let stamp = self.dir.join("lists/.updated");
        if stamp.exists() {
            return Ok(());
        }
        run_cmd(
            Command::new("apt-get")
                .args(self.opts())
                .args(["-q", "update"]),
        )?;
        fs::write(stamp, "")?;
        Ok(())
    }

    fn output(&self, tool: &str, args: &[&str]) -> Result<String> {
        let out = Command::new(tool)
            .args(self.opts())
            .args(args)
            .output()
            .with_context(|| format!("running {tool}"))?;
        if !out.status.success() {
            bail!(
                "{tool} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The versioned image package that `linux-image-cloud-amd64` of `suite` depends on.
    fn image_package(&self, suite: &str) -> Result<(String, String)> {
        let madison = self.output("apt-cache", &["madison", "linux-image-cloud-amd64"])?;
        let version = madison
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('|').map(str::trim).collect();
                (f.len() >= 3 && f[2].contains(&format!(" {suite}/"))).then(|| f[1].to_string())
            })
            .next()
            .with_context(|| format!("linux-image-cloud-amd64 not in {suite}'s Packages index"))?;
        let deps = self.output(
            "apt-cache",
            &["depends", &format!("linux-image-cloud-amd64={version}")],
        )?;
        let image = deps
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-"))
            .with_context(|| format!("no linux-image dependency in {deps}"))?;
        let show = self.output("apt-cache", &["show", image])?;
        // Several suites may carry the package; take the one meant for this line.
        let v = show
            .lines()
            .filter_map(|l| l.strip_prefix("Version: "))
            .next()
            .context("no Version in apt-cache show")?;
        Ok((image.to_string(), v.to_string()))
    }

    fn download(&self, package: &str, version: &str, into: &Path) -> Result<PathBuf> {
        fs::create_dir_all(into)?;
        let file = into.join(format!(
            "{package}_{}_amd64.deb",
            version.replace(':', "%3a")
        ));
        if file.exists() {
            return Ok(file);
        }
        run_cmd(
            Command::new("apt-get")
                .current_dir(into)
                .args(self.opts())
                .args(["-q", "download", &format!("{package}={version}")]),
        )?;
        fs::read_dir(into)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
            .with_context(|| format!("apt-get download left no {package}_*.deb"))
    }
}

/// Returns the unpacked kernel of `line`, downloading and unpacking it on first use.
pub fn fetch(cache: &Path, line: &KernelLine) -> Result<Kernel> {
    let dir = cache.join("kernels").join(line.name);
    let done = dir.join("unpacked");
    if let Ok(meta) = fs::read_to_string(&done)
        && dir.join("root/lib/modules").exists()
    {
        let mut it = meta.lines();
        if let (Some(release), Some(package)) = (it.next(), it.next()) {
            return Ok(Kernel {
                line: line.name,
                release: release.into(),
                package: package.into(),
                vmlinuz: dir.join(format!("root/boot/vmlinuz-{release}")),
                modules: dir.join(format!("root/lib/modules/{release}")),
            });
        }
    }
    let apt = Apt::new(cache)?;
    apt.update()?;
    let (package, version) = apt
        .image_package(line.suite)
        .with_context(|| format!("kernel line {} ({})", line.name, line.suite))?;
    let deb = apt.download(&package, &version, &dir.join("deb"))?;
    let root = dir.join("root");
    let _ = fs::remove_dir_all(&root);
    run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let release = package
        .strip_prefix("linux-image-")
        .unwrap_or(&package)
        .to_string();
    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.exists() {
        bail!("{} has no boot/vmlinuz-{release}", deb.display());
    }
    // The package's postinst writes modules.dep; we unpacked without running it.
    run_cmd(Command::new("depmod").arg("-b").arg(&root).arg(&release))?;
    let package = format!("{package}_{version}");
    fs::write(&done, format!("{release}\n{package}\n"))?;
    Ok(Kernel {
        line: line.name,
        release: release.clone(),
        package,
        vmlinuz,
        modules: root.join(format!("lib/modules/{release}")),
    })
}

/// Unpacks the Debian userspace `packages` of `suite` (the candidate versions there) into one
/// tree under the cache, downloading each once, and returns the tree. Programs are copied from
/// it into the initramfs; their libraries are looked up there before the host's.
pub fn userspace(cache: &Path, suite: &str, packages: &[&str]) -> Result<PathBuf> {
    let dir = cache.join("userspace").join(suite);
    let root = dir.join("root");
    let stamp = dir.join("unpacked");
    let want = packages.join("\n") + "\n";
    if fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) && root.exists() {
        return Ok(root);
    }
    let apt = Apt::new(cache)?;
    apt.update()?;
    let _ = fs::remove_dir_all(&root);
    for p in packages {
        let policy = apt.output("apt-cache", &["madison", p])?;
        let version = policy
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('|').map(str::trim).collect();
                (f.len() >= 3 && f[2].contains(&format!(" {suite}/"))).then(|| f[1].to_string())
            })
            .next()
            .with_context(|| format!("{p} not in {suite}'s Packages index"))?;
        let deb = apt.download(p, &version, &dir.join("deb"))?;
        run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    }
    fs::write(&stamp, want)?;
    Ok(root)
}

impl Kernel {
    /// Module files needed to load `names` (with their dependencies, in load order), as paths
    /// relative to the module tree. Built-in modules are skipped.
    pub fn module_closure(&self, names: &[&str]) -> Result<Vec<String>> {
        let dep = fs::read_to_string(self.modules.join("modules.dep"))
            .context("modules.dep of the kernel package")?;
        let builtin = fs::read_to_string(self.modules.join("modules.builtin")).unwrap_or_default();
        let norm = |s: &str| s.replace('-', "_");
        let base = |p: &str| {
            let f = p.rsplit('/').next().unwrap_or(p);
            norm(f.split(".ko").next().unwrap_or(f))
        };
        let mut deps = std::collections::HashMap::new();
        for l in dep.lines() {
            if let Some((m, rest)) = l.split_once(':') {
                deps.insert(
                    base(m),
                    (
                        m.to_string(),
                        rest.split_whitespace()
                            .map(str::to_string)
                            .collect::<Vec<_>>(),
                    ),
                );
            }
        }
        let mut out: Vec<String> = Vec::new();
        for n in names {
            let n = norm(n);
            if builtin.lines().any(|l| base(l) == n) {
                continue;
            }
            let (path, d) = deps
                .get(&n)
                .with_context(|| format!("module {n} not in {}", self.release))?;
            // modules.dep lists dependencies deepest last: load them in reverse.
            for p in d.iter().rev().chain(std::iter::once(path)) {
                if !out.contains(p) {
                    out.push(p.clone());
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_closure_loads_dependencies_first_and_skips_builtins() {
        let dir = std::env::temp_dir().join(format!("vmtest-kmods-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("modules.dep"),
            "kernel/fs/xfs/xfs.ko.xz: kernel/lib/libcrc32c.ko.xz\n\
             kernel/lib/libcrc32c.ko.xz:\n\
             kernel/fs/nfs/nfsv4.ko: kernel/fs/nfs/nfs.ko kernel/net/sunrpc/sunrpc.ko\n\
             kernel/fs/nfs/nfs.ko: kernel/net/sunrpc/sunrpc.ko\n\
             kernel/net/sunrpc/sunrpc.ko:\n",
        )
        .unwrap();
        fs::write(
            dir.join("modules.builtin"),
            "kernel/drivers/virtio/virtio_pci.ko\n",
        )
        .unwrap();
        let k = Kernel {
            line: "6.12",
            release: "test".into(),
            package: "test".into(),
            vmlinuz: dir.join("vmlinuz"),
            modules: dir.clone(),
        };
        let c = k.module_closure(&["virtio_pci", "xfs", "nfsv4"]).unwrap();
        assert_eq!(
            c,
            [
                "kernel/lib/libcrc32c.ko.xz",
                "kernel/fs/xfs/xfs.ko.xz",
                "kernel/net/sunrpc/sunrpc.ko",
                "kernel/fs/nfs/nfs.ko",
                "kernel/fs/nfs/nfsv4.ko",
            ]
        );
        assert!(k.module_closure(&["no_such_module"]).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
