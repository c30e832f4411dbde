//! Records the git commit the binary is built from (`chorus --version`, the `build_info`
//! metric): `CHORUS_COMMIT` from the environment if set (a build outside a clone), else
//! `git rev-parse`, else "unknown".
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=CHORUS_COMMIT");
    // A new commit or checkout changes these; cargo reruns this script then.
    for p in [
        "../../.git/HEAD",
        "../../.git/refs/heads",
        "../../.git/packed-refs",
    ] {
        println!("cargo:rerun-if-changed={p}");
    }
    let commit = std::env::var("CHORUS_COMMIT").ok().or_else(|| {
        let out = Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    println!(
        "cargo:rustc-env=CHORUS_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".into())
    );
}
