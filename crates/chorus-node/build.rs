//! Records the git commit the binary is built from (`chorus --version`, the `build_info`
//! metric): `CHORUS_COMMIT` from the environment if set (a build outside a clone), else
//! `git rev-parse`, else "unknown".
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=CHORUS_COMMIT");
    // A new commit or checkout moves HEAD or the branch it names: rerun then. Only paths that
    // exist are named (cargo reruns a script on every build while a named path is missing).
    if let Some(head) = git(&["rev-parse", "--path-format=absolute", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={head}");
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        for name in [branch.as_str(), "packed-refs"] {
            if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", name])
                && std::path::Path::new(&path).exists()
            {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    let commit = std::env::var("CHORUS_COMMIT")
        .ok()
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]));
    println!(
        "cargo:rustc-env=CHORUS_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".into())
    );
}
