//! `spe-policy decode`, run as the built binary: perf text, summaries, recovery, bad input, and
//! golden outputs (regenerate with `UPDATE_GOLDEN=1 cargo test -p spe-policy-cli`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../spe-policy/tests/data")
        .join(name)
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spe-policy"))
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden");
    }
    let want = std::fs::read_to_string(&path).expect("golden file (UPDATE_GOLDEN=1 to create)");
    assert_eq!(
        actual, want,
        "{name} is stale: UPDATE_GOLDEN=1 cargo test -p spe-policy-cli"
    );
}

#[test]
fn perf_text_of_a_real_trace_matches_the_expected_column_line_by_line() {
    let bin = data("kunpeng_branch_2021_b.bin");
    let (code, out, _) = run(&["decode", bin.to_str().expect("utf8")]);
    assert_eq!(code, 0);
    let tsv = std::fs::read_to_string(data("kunpeng_branch_2021_b.expected.tsv")).expect("tsv");
    let want: Vec<&str> = tsv
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.rsplit('\t').next().expect("text"))
        .collect();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], ". ... ARM SPE data: size 0x108 bytes");
    for (line, text) in lines[1..].iter().zip(&want) {
        assert_eq!(&line[62..], *text);
    }
    assert!(out.contains("# 6 records, 264 bytes"), "{out}");
}

#[test]
fn recovery_reports_where_it_rewinds_and_why() {
    let (code, out, _) = run(&[
        "decode",
        data("quipper_arm_spe_decoder_test.bin")
            .to_str()
            .expect("utf8"),
        "--recover",
        "--order",
        "sequential",
    ]);
    assert_eq!(code, 0);
    golden("quipper_recover_sequential.txt", &out);
    let (_, json, _) = run(&[
        "decode",
        data("spe_parser_unit_vectors.bin").to_str().expect("utf8"),
        "--format",
        "json",
        "--recover",
    ]);
    golden("spe_parser_unit_vectors.json", &json);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["packets"][0]["text"], "PC 0xffc0c2868c8b5c el2 ns=1");
    assert_eq!(v["recovery"]["data_loss"], true);
}

#[test]
fn garbage_still_decodes_as_far_as_the_rules_allow() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = dir.path().join("garbage.bin");
    std::fs::write(
        &f,
        [0xff, 0x4a, 0x01, 0, 0, 0, 0, 0, 0, 0xee, 0x01, 0x71, 0x01],
    )
    .expect("write");
    let (code, out, err) = run(&["decode", f.to_str().expect("utf8")]);
    assert_eq!(code, 0);
    assert!(err.contains("do not decode"), "{err}");
    assert!(
        out.contains("Bad packet!") && out.contains("B COND") && out.contains("END"),
        "{out}"
    );
    let (_, arch, _) = run(&["decode", f.to_str().expect("utf8"), "--mode", "arch"]);
    // Architecture mode skips 0xff by its size (8-byte payload): no B COND line.
    assert!(!arch.contains("B COND"), "{arch}");
}

#[test]
fn unreadable_and_empty_files_get_a_clear_error_and_distinct_exit_codes() {
    let (code, _, err) = run(&["decode", "/nonexistent/spe.bin"]);
    assert_eq!(code, 3, "unreadable is exit 3 (README's table)");
    assert!(
        err.contains("/nonexistent/spe.bin") && err.contains("cannot read"),
        "{err}"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let f = dir.path().join("empty.bin");
    std::fs::write(&f, []).expect("write");
    let (code, _, err) = run(&["decode", f.to_str().expect("utf8")]);
    assert_eq!(code, 1);
    assert!(err.contains("empty"), "{err}");
    let (code, _, err) = run(&[
        "decode",
        f.to_str().expect("utf8"),
        "--recover",
        "--max-record",
        "100",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("power of two"), "{err}");
}

#[test]
fn decode_through_a_pipe_closed_early_exits_0_without_an_error_message() {
    use std::io::Read;
    use std::process::Stdio;
    // A big input: many pipe buffers of text, so the writer meets the closed pipe.
    let dir = tempfile::tempdir().expect("tmp");
    let f = dir.path().join("big.bin");
    let one = std::fs::read(data("quipper_arm_spe_decoder_test.bin")).expect("data");
    std::fs::write(&f, one.repeat(4000)).expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_spe-policy"))
        .args(["decode", f.to_str().expect("utf8")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 100];
    stdout.read_exact(&mut first).expect("some output");
    drop(stdout); // `| head -c 100`
    let out = child.wait_with_output().expect("exits");
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn decode_reads_standard_input_and_refuses_more_than_max_input() {
    use std::io::Write;
    use std::process::Stdio;
    let bytes = std::fs::read(data("quipper_arm_spe_decoder_test.bin")).expect("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_spe-policy"))
        .args(["decode", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&bytes)
        .expect("feed");
    let out = child.wait_with_output().expect("exits");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("# 2 records"));
    let f = data("quipper_arm_spe_decoder_test.bin");
    let (code, _, err) = run(&["decode", f.to_str().expect("utf8"), "--max-input", "64"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("larger than the") && err.contains("--max-input"),
        "{err}"
    );
    // An endless input stops at the limit.
    let (code, _, err) = run(&["decode", "/dev/zero", "--max-input", "1MiB"]);
    assert_eq!(code, 1, "{err}");
}

#[test]
fn recovery_options_without_recover_are_refused_by_the_parser() {
    let f = data("quipper_arm_spe_decoder_test.bin");
    let (code, _, err) = run(&["decode", f.to_str().expect("utf8"), "--order", "sequential"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--recover"), "{err}");
}
