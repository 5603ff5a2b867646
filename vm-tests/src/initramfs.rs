//! The guest's initramfs: the scenario runner as `/init`, the agent, busybox (Debian's static
//! build, with a link per applet), the Debian programs a scenario needs with the libraries `ldd`
//! lists, and the kernel modules it loads (decompressed, with a fresh modules.dep).

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::{kernel::Kernel, run_cmd};

pub struct Contents<'a> {
    pub kernel: &'a Kernel,
    pub runner: &'a Path,
    /// Copied to /usr/bin/bindsto; None for the systemd guest, which installs the `.deb`.
    pub agent: Option<&'a Path>,
    pub modules: &'a [&'a str],
    /// In the image, not loaded at boot.
    pub late_modules: &'a [&'a str],
    pub programs: &'a [&'a str],
    /// Unpacked Debian packages and programs (absolute paths inside that tree) to copy.
    pub debs: Option<(&'a Path, &'a [&'a str])>,
    /// Extra files: (host path, path in the image).
    pub files: &'a [(PathBuf, &'a str)],
}

/// Shared libraries (and the loader) a dynamically linked program needs, from `ldd`, looked up
/// in the unpacked packages under `extra` first (libraries the host does not have).
fn libraries(program: &Path, extra: Option<&Path>) -> Result<Vec<PathBuf>> {
    let mut cmd = Command::new("ldd");
    if let Some(root) = extra {
        let dirs: Vec<String> = ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"]
            .iter()
            .map(|d| root.join(d).display().to_string())
            .collect();
        cmd.env("LD_LIBRARY_PATH", dirs.join(":"));
    }
    let out = cmd
        .arg(program)
        .output()
        .with_context(|| format!("ldd {}", program.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // Static programs: "not a dynamic executable".
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for l in text.lines() {
        let path = match l.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => l.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

fn copy_into(root: &Path, src: &Path, dst: &Path) -> Result<()> {
    let to = root.join(dst.strip_prefix("/").unwrap_or(dst));
    if let Some(p) = to.parent() {
        fs::create_dir_all(p)?;
    }
    fs::copy(src, &to).with_context(|| format!("copy {} -> {}", src.display(), to.display()))?;
    Ok(())
}

/// Copies a program and its libraries to the same paths in the image.
fn copy_program(
    root: &Path,
    program: &Path,
    dst: &Path,
    done: &mut BTreeSet<PathBuf>,
) -> Result<()> {
    copy_program_from(root, program, dst, None, done)
}

/// As [`copy_program`]; libraries found under `extra` (unpacked packages) keep their path
/// relative to it.
fn copy_program_from(
    root: &Path,
    program: &Path,
    dst: &Path,
    extra: Option<&Path>,
    done: &mut BTreeSet<PathBuf>,
) -> Result<()> {
    copy_into(root, program, dst)?;
    for lib in libraries(program, extra)? {
        if done.insert(lib.clone()) {
            // Follow the symlink (libfoo.so.1 -> libfoo.so.1.2.3) but keep the name ld.so asks for.
            let real = fs::canonicalize(&lib)?;
            let in_image = match extra.and_then(|e| lib.strip_prefix(e).ok()) {
                Some(rel) => Path::new("/").join(rel),
                None => lib.clone(),
            };
            copy_into(root, &real, &in_image)?;
        }
    }
    Ok(())
}

/// Builds the image at `out` (newc cpio, uncompressed: TCG decompresses slowly).
pub fn build(work: &Path, c: &Contents, out: &Path) -> Result<()> {
    let root = work.join("root");
    let _ = fs::remove_dir_all(&root);
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "run", "mnt",
        "var/lib", "lib64",
    ] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::copy(c.runner, root.join("init"))?;
    let mut libs = BTreeSet::new();
    copy_program(&root, c.runner, Path::new("/init"), &mut libs)?;
    if let Some(src) = c.agent {
        // The agent without debug info: a smaller image boots faster under TCG.
        let agent = root.join("usr/bin/bindsto");
        run_cmd(
            Command::new("objcopy")
                .arg("--strip-debug")
                .arg(src)
                .arg(&agent),
        )?;
        copy_program(
            &root,
            src,
            Path::new("/usr/bin/bindsto.unstripped"),
            &mut libs,
        )?;
        fs::remove_file(root.join("usr/bin/bindsto.unstripped"))?;
    }

    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!("/bin/busybox missing: `cargo xtask setup` installs busybox-static");
    }
    copy_into(&root, busybox, Path::new("/bin/busybox"))?;
    let list = Command::new(busybox).arg("--list-full").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = root.join(applet);
        if applet.is_empty() || link.exists() || applet.ends_with("/busybox") {
            continue;
        }
        if let Some(p) = link.parent() {
            fs::create_dir_all(p)?;
        }
        symlink("/bin/busybox", &link)?;
    }
    for p in c.programs {
        let p = Path::new(p);
        // Replace a busybox applet of the same name with the real program.
        let _ = fs::remove_file(root.join(p.strip_prefix("/").unwrap_or(p)));
        copy_program(&root, p, p, &mut libs)?;
    }

    if let Some((tree, programs)) = c.debs {
        for p in programs {
            let rel = p.strip_prefix('/').unwrap_or(p);
            let _ = fs::remove_file(root.join(rel));
            copy_program_from(&root, &tree.join(rel), Path::new(p), Some(tree), &mut libs)?;
        }
    }

    for (src, dst) in c.files {
        copy_into(&root, src, Path::new(dst))?;
    }

    let kmods = root.join("lib/modules").join(&c.kernel.release);
    fs::create_dir_all(&kmods)?;
    let mut load = Vec::new();
    let all: Vec<&str> = c.modules.iter().chain(c.late_modules).copied().collect();
    for rel in c.kernel.module_closure(&all)? {
        let src = c.kernel.modules.join(&rel);
        let rel_plain = rel.strip_suffix(".xz").unwrap_or(&rel);
        let dst = kmods.join(rel_plain);
        fs::create_dir_all(dst.parent().unwrap_or(&kmods))?;
        if rel.ends_with(".xz") {
            // busybox modprobe cannot decompress; 6.12 ships .ko.xz.
            let out = Command::new("xz")
                .args(["-dc"])
                .arg(&src)
                .stderr(Stdio::inherit())
                .output()?;
            if !out.status.success() {
                bail!("xz -dc {}", src.display());
            }
            fs::write(&dst, out.stdout)?;
        } else {
            fs::copy(&src, &dst)?;
        }
        load.push(rel_plain.to_string());
    }
    for f in [
        "modules.builtin",
        "modules.order",
        "modules.builtin.modinfo",
    ] {
        let src = c.kernel.modules.join(f);
        if src.exists() {
            fs::copy(&src, kmods.join(f))?;
        }
    }
    run_cmd(
        Command::new("depmod")
            .arg("-b")
            .arg(&root)
            .arg(&c.kernel.release),
    )?;
    // The runner loads exactly these, in this order (names as modprobe wants them).
    let names: Vec<String> = c.modules.iter().map(|m| m.to_string()).collect();
    fs::write(root.join("etc/vmtest-modules"), names.join("\n") + "\n")?;
    fs::write(
        root.join("etc/vmtest-kernel"),
        format!("{}\n", c.kernel.line),
    )?;
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
    fs::write(root.join("etc/group"), "root:x:0:\n")?;

    let listing = Command::new("find").arg(".").current_dir(&root).output()?;
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet", "-R", "0:0"])
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(fs::File::create(out)?)
        .spawn()?;
    {
        use std::io::Write;
        let mut stdin = cpio.stdin.take().context("cpio stdin")?;
        stdin.write_all(&listing.stdout)?;
    }
    if !cpio.wait()?.success() {
        bail!("cpio failed");
    }
    Ok(())
}
