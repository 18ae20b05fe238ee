//! `spe-policy check CONFIG` and `spe-policy config --defaults`.

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;
use spe_policies::Policy;
use spe_policy::config::{ConfigError, ConfigWarning, Loaded, SpeConfig, to_toml};
use spe_policy::errata::{Erratum, Profile};
use spe_policy::{BackingStrategy, VmSpec, device_tree};

use crate::exit;

/// Output format of `check` and `config`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Annotated TOML (defaults marked) and `#` comment lines.
    Text,
    /// One JSON document.
    Json,
}

/// Arguments of `check`.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// A VMM config file with an `[spe]` table (TOML), or an `"spe"` object (`.json`).
    pub config: PathBuf,
    /// A VM file whose `[vm]` table describes the VM the policy is for (default: the default
    /// VM: 4 vCPUs, 8 GiB, 4 KiB pages).
    #[arg(long, value_name = "FILE")]
    pub vm: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Print, instead of the report, the guest notice as a device-tree node for the guest
    /// kernel: `dts` (source to paste under the SPE PMU node) or `dtb` (a whole flattened tree
    /// with an SPE PMU node holding it).
    #[arg(long, value_enum, value_name = "FORM")]
    pub device_tree: Option<DeviceTreeForm>,
}

/// Arguments of `notice`.
#[derive(clap::Args, Debug)]
pub struct NoticeArgs {
    /// A VMM config file with an `[spe]` table (TOML), or an `"spe"` object (`.json`).
    pub config: PathBuf,
    /// A VM file whose `[vm]` table describes the VM (default: the default VM).
    #[arg(long, value_name = "FILE")]
    pub vm: Option<PathBuf>,
    /// `dts`: the node to paste under the SPE PMU node; `dtb`: a whole flattened tree with an
    /// SPE PMU node holding it; `json`: the notice's fields, bits and the 16 bytes.
    #[arg(long, value_enum, default_value_t = NoticeForm::Dts)]
    pub format: NoticeForm,
}

/// The forms `notice` prints.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoticeForm {
    /// DTS source of the notice node.
    Dts,
    /// A flattened device tree (binary).
    Dtb,
    /// JSON: version, strategy, errata bits with their meaning, the cap, the 16 bytes.
    Json,
}

/// `spe-policy notice`: what the guest is told, in the form a VMM hands it over (the device
/// tree) or as JSON. Exit codes as `check`.
pub fn notice(args: &NoticeArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let device_tree = match args.format {
        NoticeForm::Dts => Some(DeviceTreeForm::Dts),
        NoticeForm::Dtb => Some(DeviceTreeForm::Dtb),
        NoticeForm::Json => Some(DeviceTreeForm::Json),
    };
    let check_args = CheckArgs {
        config: args.config.clone(),
        vm: args.vm.clone(),
        format: Format::Text,
        device_tree,
    };
    check(&check_args, out, err)
}

/// The notice as JSON: each field, the errata bits by number with what they mean, and the
/// encoded bytes (what the device-tree cells hold).
fn notice_json(n: &spe_policy::guest_notice::GuestNotice) -> serde_json::Value {
    use spe_policy::guest_notice::bit_meaning;
    let bits: Vec<serde_json::Value> = (0..32u8)
        .filter(|b| n.errata & (1 << b) != 0)
        .map(|b| serde_json::json!({"bit": b, "meaning": bit_meaning(b)}))
        .collect();
    let hex: String = n.encode().iter().map(|b| format!("{b:02x}")).collect();
    serde_json::json!({
        "compatible": device_tree::COMPATIBLE,
        "version": n.version,
        "strategy": {"code": n.strategy.code(), "name": format!("{:?}", n.strategy)},
        "errata": format!("{:#010x}", n.errata),
        "errata_bits": bits,
        "buffer_cap_pages": n.buffer_cap_pages,
        "cells": n.cells(),
        "bytes": hex,
    })
}

/// The form `check --device-tree` prints the guest notice in.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceTreeForm {
    /// DTS source of the notice node.
    Dts,
    /// A flattened device tree (binary) with an SPE PMU node holding the notice.
    Dtb,
    /// The notice's fields as JSON (`notice --format json`).
    #[value(skip)]
    Json,
}

/// Prints the notice in the device-tree form asked for.
fn print_device_tree(
    form: DeviceTreeForm,
    notice: &spe_policy::guest_notice::GuestNotice,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let r = match form {
        DeviceTreeForm::Dts => out.write_all(device_tree::dts(notice).as_bytes()),
        DeviceTreeForm::Json => serde_json::to_writer_pretty(&mut *out, &notice_json(notice))
            .map_err(std::io::Error::other)
            .and_then(|()| writeln!(out)),
        DeviceTreeForm::Dtb => match device_tree::dtb_with_notice(notice) {
            Ok(blob) => out.write_all(&blob),
            Err(e) => {
                let _ = writeln!(err, "error: building the device tree: {e}");
                return exit::IO;
            }
        },
    };
    match r {
        Ok(()) => exit::OK,
        Err(e) => {
            let _ = writeln!(err, "error: writing the output: {e}");
            exit::IO
        }
    }
}

/// Arguments of `config`.
#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    /// Print the default `[spe]` table with every key.
    #[arg(long, required = true)]
    pub defaults: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// The resolved config as TOML, each key not written in the file marked `# default`.
fn annotated(config: &SpeConfig, explicit: &[String]) -> String {
    let mut out = String::new();
    let mut table = String::new();
    for line in to_toml(config).lines() {
        let t = line.trim();
        if let Some(h) = t.strip_prefix('[') {
            table = h.trim_end_matches(']').to_string();
            out.push_str(line);
        } else if let Some((k, _)) = t.split_once('=') {
            let key = format!("{table}.{}", k.trim());
            out.push_str(line);
            if !explicit.contains(&key) {
                out.push_str("  # default");
            }
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// `check --format json`.
#[derive(Serialize)]
struct CheckJson<'a> {
    file: String,
    valid: bool,
    errors: Vec<JsonProblem>,
    warnings: Vec<JsonProblem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<&'a SpeConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vm: Option<&'a VmSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strategy: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<Profile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    errata: Option<&'static [Erratum]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    guest_notice: Option<String>,
}

/// One error or warning in JSON.
#[derive(Serialize)]
struct JsonProblem {
    key: String,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    column: Option<usize>,
}

impl From<&ConfigError> for JsonProblem {
    fn from(e: &ConfigError) -> Self {
        JsonProblem {
            key: e.key.clone(),
            message: format!(
                "{}{}: {}; {}",
                e.key,
                if e.value.is_empty() {
                    String::new()
                } else {
                    format!(" = {}", e.value)
                },
                e.reason,
                e.fix
            ),
            line: e.location.map(|l| l.0),
            column: e.location.map(|l| l.1),
        }
    }
}

impl From<&ConfigWarning> for JsonProblem {
    fn from(w: &ConfigWarning) -> Self {
        JsonProblem {
            key: w.key.clone(),
            message: w.message.clone(),
            line: w.location.map(|l| l.0),
            column: w.location.map(|l| l.1),
        }
    }
}

/// Prints the problems (text: one line each on stderr; JSON: the document on stdout) and
/// returns the exit code for invalid input.
fn invalid(
    args: &CheckArgs,
    errors: &[ConfigError],
    warnings: &[ConfigWarning],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let path = args.config.display();
    match args.format {
        Format::Json => {
            let doc = CheckJson {
                file: path.to_string(),
                valid: false,
                errors: errors.iter().map(JsonProblem::from).collect(),
                warnings: warnings.iter().map(JsonProblem::from).collect(),
                config: None,
                vm: None,
                strategy: None,
                profile: None,
                errata: None,
                guest_notice: None,
            };
            let _ = serde_json::to_writer_pretty(&mut *out, &doc);
            let _ = writeln!(out);
        }
        Format::Text => {
            for w in warnings {
                let _ = writeln!(err, "warning: {path}:{w}");
            }
            for e in errors {
                match e.location {
                    Some(_) => {
                        let _ = writeln!(err, "error: {path}:{e}");
                    }
                    None => {
                        let _ = writeln!(err, "error: {path}: {e}");
                    }
                }
            }
        }
    }
    exit::INVALID
}

fn load_vm(args: &CheckArgs) -> Result<VmSpec, (i32, String)> {
    let Some(p) = &args.vm else {
        return Ok(VmSpec::default());
    };
    let src =
        spe_policy_sim::read_bounded(p).map_err(|e| (exit::for_read_error(&e), e.to_string()))?;
    spe_policy_sim::vm_table(&p.display().to_string(), &src)
        .and_then(|t| {
            toml::Value::Table(t)
                .try_into::<VmSpec>()
                .map_err(|e| format!("{}: {}", p.display(), e.message()))
        })
        .map_err(|e| (exit::INVALID, e))
}

/// `check`: 0 valid, 1 invalid, 3 unreadable (README's exit-code table).
pub fn check(args: &CheckArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let path = args.config.display();
    let src = match spe_policy_sim::read_bounded(&args.config) {
        Ok(s) => s,
        Err(e) => {
            let code = exit::for_read_error(&e);
            let _ = writeln!(err, "error: {e}");
            return code;
        }
    };
    let is_json = args.config.extension().is_some_and(|e| e == "json");
    let loaded = if is_json {
        SpeConfig::from_json_str(&src)
    } else {
        SpeConfig::from_toml_str(&src)
    };
    let Loaded {
        config,
        mut warnings,
        has_spe_table,
        explicit,
    } = match loaded {
        Ok(l) => l,
        Err(errs) => return invalid(args, &errs.0, &[], out, err),
    };
    if !has_spe_table {
        // Nothing to check: an empty file, a scenario file, another tool's config.
        let (no_spe, rest): (Vec<ConfigWarning>, Vec<ConfigWarning>) =
            warnings.into_iter().partition(|w| w.key == "spe");
        let errors: Vec<ConfigError> = no_spe
            .into_iter()
            .map(|w| ConfigError {
                key: "spe".into(),
                value: String::new(),
                reason: "the file has no [spe] table, so there is nothing to check".into(),
                fix: "add an [spe] table (`spe-policy config --defaults` prints one); a scenario file runs with `spe-policy simulate`".into(),
                location: w.location,
            })
            .collect();
        return invalid(args, &errors, &rest, out, err);
    }
    let vm = match load_vm(args) {
        Ok(vm) => vm,
        Err((code, e)) => {
            let _ = writeln!(err, "error: {e}");
            return code;
        }
    };
    warnings.extend(config.warnings_for(&vm));
    let policy = match Policy::from_config(&config, &vm) {
        Ok(p) => p,
        Err(errs) => return invalid(args, &errs.0, &warnings, out, err),
    };
    let prof = policy.profile();
    if let Some(form) = args.device_tree {
        for w in &warnings {
            let _ = writeln!(err, "warning: {path}:{w}");
        }
        return print_device_tree(form, &policy.guest_notice(), out, err);
    }
    if args.format == Format::Json {
        let doc = CheckJson {
            file: path.to_string(),
            valid: true,
            errors: Vec::new(),
            warnings: warnings.iter().map(JsonProblem::from).collect(),
            config: Some(&config),
            vm: Some(&vm),
            strategy: Some(policy.name()),
            profile: Some(prof),
            errata: Some(policy.errata()),
            guest_notice: Some(policy.guest_notice().to_string()),
        };
        return match serde_json::to_writer_pretty(&mut *out, &doc).map(|()| writeln!(out)) {
            Ok(_) => exit::OK,
            Err(e) => {
                let _ = writeln!(err, "error: writing the output: {e}");
                exit::IO
            }
        };
    }
    for w in &warnings {
        let _ = writeln!(err, "warning: {path}:{w}");
    }
    let names =
        |ps: &[spe_policy::Property]| ps.iter().map(|p| p.name()).collect::<Vec<_>>().join(" + ");
    let _ = writeln!(out, "# {path}: valid\n");
    let _ = write!(out, "{}", annotated(&config, &explicit));
    let _ = writeln!(
        out,
        "\n# strategy {}: {} (gives up {})\n# {}",
        policy.name(),
        names(prof.keeps),
        names(prof.gives_up),
        prof.why
    );
    let _ = writeln!(out, "# errata:");
    for e in policy.errata() {
        let _ = writeln!(out, "#   {}  {}", e.id, e.title);
    }
    let notice = policy.guest_notice();
    let _ = writeln!(out, "# guest notice: {notice}");
    exit::OK
}

/// `config --defaults`.
pub fn defaults(args: &ConfigArgs, out: &mut dyn Write) -> i32 {
    let r = match args.format {
        Format::Json => serde_json::to_writer_pretty(
            &mut *out,
            &serde_json::json!({ "spe": SpeConfig::default(), "vm": VmSpec::default() }),
        )
        .map_err(std::io::Error::other)
        .and_then(|()| writeln!(out)),
        Format::Text => writeln!(
            out,
            "# spe-policy: the default [spe] table, every key at its default value.\n# Embed it in the VMM's config file and change what differs. (migration, unset,\n# follows the strategy: stop-and-copy for pin-all, pre-copy for the others.)\n{}\n# The VM's facts are not policy: a VMM passes them as `VmSpec`; the simulator reads\n# them from a [vm] table (a scenario's, or `compare --vm FILE`). Their defaults:\n{}",
            to_toml(&SpeConfig::default()).trim_end(),
            toml::to_string(&serde_json::json!({ "vm": VmSpec::default() }))
                .unwrap_or_default()
                .lines()
                .map(|l| format!("# {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        ),
    };
    match r {
        Ok(()) => exit::OK,
        Err(_) => exit::IO,
    }
}
