//! The example as a user runs it: every query answer equals the count of
//! the views it produced (the binary fails otherwise).

#[test]
fn answers_equal_the_produced_views() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_page-view-counters"))
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("folded 30000 views"), "{stdout}");
    assert!(stdout.contains("OK: every answer equals"), "{stdout}");
}
