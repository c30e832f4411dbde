//! The core stays sans-IO: no async runtime, network, database or HTTP crate may appear under
//! chorus-core or chorus-kairos (normal dependencies, transitively). This test fails the build
//! if one does.

use std::process::Command;

const FORBIDDEN: &[&str] = &[
    "tokio",
    "async-std",
    "smol",
    "libp2p",
    "redb",
    "axum",
    "reqwest",
    "hyper",
    "mio",
];

#[test]
fn core_and_kairos_have_no_io_dependencies() {
    for krate in ["chorus-core", "chorus-kairos"] {
        let out = Command::new(env!("CARGO"))
            .args([
                "tree", "-p", krate, "-e", "normal", "--prefix", "none", "--color", "never",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo tree runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tree = String::from_utf8(out.stdout).unwrap();
        let names: Vec<&str> = tree
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(names.len() > 3, "cargo tree printed a tree: {tree}");
        let bad: Vec<&&str> = FORBIDDEN.iter().filter(|f| names.contains(f)).collect();
        assert!(bad.is_empty(), "{krate} depends on {bad:?}:\n{tree}");
    }
}
