//! `deploy/install.sh --prefix` lays out a box, keeps an operator's configs on a second run,
//! and the installed units pass `systemd-analyze verify` (where systemd-analyze exists).

use edgewise_tests::harness as common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn install(prefix: &Path) -> String {
    let bins = common::agent_bin().parent().unwrap().to_path_buf();
    let out = Command::new("bash")
        .arg(common::repo_root().join("deploy/install.sh"))
        .arg("--prefix")
        .arg(prefix)
        .arg("--bin-dir")
        .arg(&bins)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn install_lays_out_the_box_and_keeps_edited_configs() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let first = install(r);
    assert!(
        first.contains("created /etc/edgewise/gateway.toml"),
        "{first}"
    );
    for b in ["edgewise-agent", "edgewise-gateway", "edgewise"] {
        assert_eq!(mode(&r.join("usr/bin").join(b)), 0o755, "{b}");
    }
    assert!(
        r.join("usr/lib/edgewise/libonnxruntime.so.1.31.1")
            .is_file()
    );
    assert_eq!(mode(&r.join("etc/edgewise/credentials")), 0o700);
    assert!(r.join("etc/edgewise/policies/default.yaml").is_file());
    assert!(r.join("var/lib/edgewise/models").is_dir());
    let unit =
        std::fs::read_to_string(r.join("usr/lib/systemd/system/edgewise-gateway.service")).unwrap();
    assert!(unit.contains("LoadCredential=edgewise:/etc/edgewise/credentials"));
    assert!(!unit.contains("key ="), "no secret in the unit");

    // an operator's edit survives a second install
    std::fs::write(r.join("etc/edgewise/gateway.toml"), "# edited\n").unwrap();
    let second = install(r);
    assert!(
        second.contains("kept    /etc/edgewise/gateway.toml (exists)"),
        "{second}"
    );
    assert_eq!(
        std::fs::read_to_string(r.join("etc/edgewise/gateway.toml")).unwrap(),
        "# edited\n"
    );

    // the installed units, checked by systemd itself against the installed tree
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze is not installed here: the units were not verified");
        return;
    }
    // verify resolves the units' dependencies (sysinit.target, ...) inside the root
    let system = r.join("usr/lib/systemd/system");
    for e in std::fs::read_dir("/usr/lib/systemd/system")
        .unwrap()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if (name.ends_with(".target") || name.ends_with(".slice")) && e.path().is_file() {
            std::fs::copy(e.path(), system.join(&name)).unwrap();
        }
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", r.display()))
        .args(["edgewise-agent.service", "edgewise-gateway.service"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze verify:\n{err}"
    );
}
