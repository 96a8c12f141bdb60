//! Records the git commit the switch is built from (`SWITCH_COMMIT`, "unknown" outside a git
//! checkout), for the start-up log and `switch --version`.
//!
//! Reruns only when HEAD or the branch it points to moves, not on every build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn watch(path: &Path) {
    // A path that does not exist would make cargo rerun this script on every build.
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = git(&dir, &["rev-parse", "--short=12", "HEAD"]);
    println!(
        "cargo:rustc-env=SWITCH_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
    if commit.is_none() {
        return;
    }
    let git_path = |name: &str| git(&dir, &["rev-parse", "--git-path", name]).map(|p| dir.join(p));
    if let Some(head) = git_path("HEAD") {
        watch(&head);
    }
    // On a branch, a commit moves the branch's ref, not HEAD: watch the ref, or, while it is
    // packed, the packed refs and the folder a loose ref would appear in.
    if let Some(branch) = git(&dir, &["symbolic-ref", "-q", "HEAD"]) {
        match git_path(&branch) {
            Some(loose) if loose.exists() => watch(&loose),
            loose => {
                if let Some(packed) = git_path("packed-refs") {
                    watch(&packed);
                }
                if let Some(folder) = loose.as_deref().and_then(Path::parent) {
                    watch(folder);
                }
            }
        }
    }
}
