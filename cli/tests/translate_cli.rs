//! `spe-policy translate`, run as the built binary: output format, exit codes, error lines.

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_spe-policy"))
}

fn example_image() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/images/linux-4k-vmap-buffer.json")
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = bin().args(args).output().expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_mapped_va_prints_the_architecture_json_shape() {
    let img = example_image();
    let (code, out, err) = run(&[
        "translate",
        "--image",
        img.to_str().expect("utf8"),
        "--va",
        "0xffff800082000123",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["va"], "0xffff800082000123");
    assert_eq!(v["ipa"], "0x48000123");
    assert_eq!(v["level"], 3);
    assert_eq!(v["block_size"], 4096);
    let tables = v["tables_touched"].as_array().expect("array");
    assert_eq!(tables.len(), 4);
    assert_eq!(tables[0], "0x41200000");
    // Key order as ARCHITECTURE.md §8 writes it.
    let keys: Vec<&str> = [
        "\"va\"",
        "\"ipa\"",
        "\"level\"",
        "\"block_size\"",
        "\"tables_touched\"",
    ]
    .into_iter()
    .collect();
    let pos: Vec<usize> = keys.iter().map(|k| out.find(k).expect("key")).collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{out}");
}

#[test]
fn a_range_prints_one_line_per_page_and_faults_are_results_not_errors() {
    let img = example_image();
    let (code, out, _) = run(&[
        "translate",
        "--image",
        img.to_str().expect("utf8"),
        "--va",
        "0xffff800082000800",
        "--len",
        "0x10800",
    ]);
    assert_eq!(code, 0);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 17);
    assert_eq!(lines[0]["va"], "0xffff800082000800");
    assert_eq!(lines[1]["va"], "0xffff800082001000");
    assert_eq!(lines[16]["fault"], "permission");
    assert_eq!(lines[16]["level"], 3);
    // Exactly the documented keys unless --explain asks for the rule.
    let keys: Vec<&String> = lines[16].as_object().expect("object").keys().collect();
    assert_eq!(keys, ["fault", "level", "tables_touched", "va"]);
    let (_, out, _) = run(&[
        "translate",
        "--image",
        img.to_str().expect("utf8"),
        "--va",
        "0xffff800082010000",
        "--explain",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert!(
        v["reason"]
            .as_str()
            .is_some_and(|r| r.contains("read-only")),
        "{v}"
    );
}

#[test]
fn a_va_outside_every_range_is_a_level_0_fault_with_an_error_line_and_exit_1() {
    let img = example_image();
    let (code, out, err) = run(&[
        "translate",
        "--image",
        img.to_str().expect("utf8"),
        "--va",
        "0x0001000000000000",
    ]);
    assert_eq!(code, 1, "invalid input (README's exit-code table)");
    assert!(
        err.contains("--va 0x1000000000000") && err.contains("outside"),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(
        (v["fault"].as_str(), v["level"].as_i64()),
        (Some("translation"), Some(0))
    );
}

#[test]
fn bad_inputs_get_one_line_errors_naming_the_input() {
    let (code, _, err) = run(&["translate", "--image", "/nonexistent.json", "--va", "0x0"]);
    assert_eq!(code, 3, "unreadable is exit 3");
    assert!(
        err.contains("/nonexistent.json") && err.lines().count() == 1,
        "{err}"
    );

    let img = example_image();
    let (code, _, err) = run(&[
        "translate",
        "--image",
        img.to_str().expect("utf8"),
        "--va",
        "0xzz",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("0xzz"), "{err}");

    let dir = tempfile::tempdir().expect("tmp");
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, r#"{"regs": {"tcr_el1": 5}, "memory": []}"#).expect("write");
    let (code, _, err) = run(&[
        "translate",
        "--image",
        broken.to_str().expect("utf8"),
        "--va",
        "0x0",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("regs") && err.contains("ttbr0_el1"), "{err}");

    // A table outside the image's memory is an error, not zeros.
    let (code, _, err) = run(&[
        "translate",
        "--image",
        img.to_str().expect("utf8"),
        "--va",
        "0x1000",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("not readable guest memory"), "{err}");
}

#[test]
fn the_committed_example_image_is_what_the_generator_prints() {
    let committed = std::fs::read_to_string(example_image()).expect("image");
    let out = Command::new(env!("CARGO"))
        .args(["run", "-q", "-p", "spe-policy", "--example", "vmap_image"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        committed,
        "regenerate: cargo run -p spe-policy --example vmap_image > configs/images/linux-4k-vmap-buffer.json"
    );
}

#[test]
fn len_is_decimal_unless_0x_and_images_are_loaded_in_any_order_and_capped() {
    let img = example_image();
    let count = |len: &str| {
        let (code, out, err) = run(&[
            "translate",
            "--image",
            img.to_str().expect("utf8"),
            "--va",
            "0xffff800082000000",
            "--len",
            len,
        ]);
        assert_eq!(code, 0, "{err}");
        out.lines().count()
    };
    assert_eq!(count("4096"), 1, "4096 is one page, not 0x4096");
    assert_eq!(count("0x4096"), 5);
    // The image's pages listed in reverse order load the same (and fast).
    let text = std::fs::read_to_string(&img).expect("image");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["memory"].as_array_mut().expect("memory").reverse();
    let dir = tempfile::tempdir().expect("tmp");
    let rev = dir.path().join("rev.json");
    std::fs::write(&rev, v.to_string()).expect("write");
    let (code, out, err) = run(&[
        "translate",
        "--image",
        rev.to_str().expect("utf8"),
        "--va",
        "0xffff800082000000",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"ipa\""), "{out}");
    let (code, _, err) = run(&[
        "translate",
        "--image",
        img.to_str().expect("utf8"),
        "--va",
        "0xffff800082000000",
        "--max-input",
        "1KiB",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("--max-input"), "{err}");
    let trailing = dir.path().join("trailing.json");
    std::fs::write(&trailing, format!("{text} garbage")).expect("write");
    let (code, _, err) = run(&[
        "translate",
        "--image",
        trailing.to_str().expect("utf8"),
        "--va",
        "0xffff800082000000",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("remove what follows"), "{err}");
}

#[test]
fn the_images_id_aa64mmfr0_el1_sets_pamax_for_the_walk() {
    // Stage 1 off: the IPA is the VA, which must fit PAMax (AArch64.S1DisabledOutput).
    let dir = tempfile::tempdir().expect("tmp");
    let image = |mmfr0: Option<&str>| {
        let f = dir
            .path()
            .join(format!("img-{}.json", mmfr0.unwrap_or("none")));
        let extra = mmfr0.map_or(String::new(), |v| format!(r#","id_aa64mmfr0_el1":"{v}""#));
        std::fs::write(
            &f,
            format!(
                r#"{{"regs":{{"tcr_el1":"0x0","ttbr0_el1":"0x0","ttbr1_el1":"0x0","sctlr_el1":"0x0"{extra}}},"memory":[]}}"#
            ),
        )
        .expect("write");
        f
    };
    let walk = |f: &std::path::Path| {
        let (code, out, err) = run(&[
            "translate",
            "--image",
            f.to_str().expect("utf8"),
            "--va",
            "0x10000000000",
        ]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
        v
    };
    // PARange 0b0010: 40 bits, and 2^40 does not fit.
    let v = walk(&image(Some("0x2")));
    assert_eq!(
        (v["fault"].as_str(), v["level"].as_i64()),
        (Some("address_size"), Some(0))
    );
    // Absent: 48 bits, as most deployed cores.
    let v = walk(&image(None));
    assert_eq!(v["ipa"], "0x10000000000");
    let (code, _, err) = run(&[
        "translate",
        "--image",
        image(Some("0x7")).to_str().expect("utf8"),
        "--va",
        "0x0",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("PARange") && err.contains("reserved"), "{err}");
}
