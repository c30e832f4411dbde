//! The layout keeps its promise: within every crate of the workspace, no two source files
//! import each other (ARCHITECTURE.md: who calls whom is a tree of layers, so each module can
//! be read, tested and replaced from the bottom up). A module's references are the
//! `crate::…` and `super::…` paths outside comments and outside its `mod tests`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Every `.rs` file under `dir`, recursively.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/http/mod.rs` → `http`, `src/http/swarm.rs` → `http::swarm`, `src/lib.rs` → ``.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?.with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "bin") {
        return None; // each binary is a crate of its own
    }
    if parts
        .last()
        .is_some_and(|p| p == "mod" || p == "lib" || p == "main")
    {
        parts.pop();
    }
    Some(parts.join("::"))
}

/// The code of a file without comment lines and without its unit tests.
fn code(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("//") {
            continue;
        }
        if t.starts_with("mod tests") && out.trim_end().ends_with("#[cfg(test)]") {
            break;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first path segment of every item of a `{…}` group starting at `s` (after the `{`).
fn group_heads(s: &str) -> Vec<String> {
    let mut heads = vec![];
    let mut depth = 1;
    let mut item = String::new();
    for c in s.chars() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => {
                heads.push(std::mem::take(&mut item));
                continue;
            }
            _ => {}
        }
        if depth == 1 {
            item.push(c);
        }
    }
    heads.push(item);
    heads
        .iter()
        .map(|h| ident(h.trim()).to_string())
        .filter(|h| !h.is_empty())
        .collect()
}

/// The modules of its crate a module's code names.
fn references(module: &str, code: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => refs.extend(group_heads(group)),
            None => {
                refs.insert(ident(rest).to_string());
            }
        }
    }
    let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
    let within = |name: &str| {
        if parent.is_empty() {
            name.to_string()
        } else {
            format!("{parent}::{name}")
        }
    };
    for (at, _) in code.match_indices("super::") {
        let rest = &code[at + "super::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => refs.extend(group_heads(group).iter().map(|h| within(h))),
            None => {
                refs.insert(within(ident(rest)));
            }
        }
    }
    refs
}

/// Pairs of modules of the crate rooted at `src` that import each other.
fn mutual_imports(src: &Path) -> Vec<(String, String)> {
    let mut files = vec![];
    sources(src, &mut files);
    let mut modules: BTreeMap<String, String> = BTreeMap::new();
    for f in &files {
        if let Some(m) = module_of(src, f) {
            let text = std::fs::read_to_string(f).expect("readable source");
            modules.insert(m, code(&text));
        }
    }
    let deps: BTreeMap<&String, BTreeSet<String>> = modules
        .iter()
        .map(|(m, code)| {
            let refs = references(m, code)
                .into_iter()
                .filter(|r| r != m && modules.contains_key(r))
                .collect();
            (m, refs)
        })
        .collect();
    let mut pairs = vec![];
    for (a, refs) in &deps {
        for b in refs {
            if a.as_str() < b.as_str() && deps.get(b).is_some_and(|r| r.contains(*a)) {
                pairs.push((a.to_string(), b.clone()));
            }
        }
    }
    pairs
}

#[test]
fn no_two_source_files_import_each_other() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = vec![];
    let mut checked = 0;
    for entry in std::fs::read_dir(&crates).expect("the workspace's crates") {
        let src = entry.expect("entry").path().join("src");
        if src.is_dir() {
            checked += 1;
            for (a, b) in mutual_imports(&src) {
                found.push(format!("{}: {a} <-> {b}", src.display()));
            }
        }
    }
    assert!(checked >= 8, "only {checked} crates found under {crates:?}");
    assert!(
        found.is_empty(),
        "modules that import each other:\n{}",
        found.join("\n")
    );
}

/// The check can fail: two files written to import each other are caught, one-way imports
/// (and imports only in comments or unit tests) are not.
#[test]
fn the_check_catches_a_pair_that_imports_each_other() {
    let dir = std::env::temp_dir().join(format!("chorus-layout-{}", std::process::id()));
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("http")).unwrap();
    let write = |p: &str, t: &str| std::fs::write(src.join(p), t).unwrap();
    write("lib.rs", "mod a;\nmod b;\nmod c;\nmod http;\n");
    write("a.rs", "use crate::{b::Thing, c};\n");
    write("b.rs", "use crate::a::Other;\n");
    write(
        "c.rs",
        "// uses crate::a in a comment only\n#[cfg(test)]\nmod tests {\n    use crate::a;\n}\n",
    );
    write("http/mod.rs", "mod shared;\nmod swarm;\n");
    write("http/shared.rs", "use super::swarm::elect;\n");
    write("http/swarm.rs", "use super::{shared::Api, other};\n");
    let found = mutual_imports(&src);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(
        found,
        vec![
            ("a".to_string(), "b".to_string()),
            ("http::shared".to_string(), "http::swarm".to_string()),
        ]
    );
}
