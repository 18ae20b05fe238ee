//! `spe-policy check CONFIG` and `spe-policy config --defaults`.

use std::io::Write;
use std::path::PathBuf;

use spe_policies::Policy;
use spe_policy::config::{
    ConfigError, ConfigErrors, ConfigFile, SpeConfig, explicit_keys, load_toml, to_toml,
};
use spe_policy::{BackingStrategy, VmSpec};

/// Arguments of `check`.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// A VMM config file with an `[spe]` table (TOML), or an `"spe"` object (`.json`).
    pub config: PathBuf,
    /// A VM file whose `[vm]` table describes the VM the policy is for (default: the default
    /// VM: 4 vCPUs, 8 GiB, 4 KiB pages).
    #[arg(long, value_name = "FILE")]
    pub vm: Option<PathBuf>,
}

/// Arguments of `config`.
#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    /// Print the default `[spe]` table with every key.
    #[arg(long, required = true)]
    pub defaults: bool,
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

/// Loads the `spe` object of a JSON config: the same schema and validation as TOML, with the
/// line and column serde_json reports.
fn load_json(src: &str) -> Result<SpeConfig, ConfigErrors> {
    let de = &mut serde_json::Deserializer::from_str(src);
    let file: ConfigFile = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        ConfigErrors(vec![ConfigError {
            key,
            value: String::new(),
            reason: inner.to_string(),
            fix: "see `spe-policy config --defaults` for every key with its default value".into(),
            location: Some((inner.line(), inner.column())),
        }])
    })?;
    file.spe.validate()?;
    Ok(file.spe)
}

/// The dotted keys under `spe` a JSON config sets.
fn json_keys(src: &str) -> Vec<String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        if let Some(map) = v.as_object() {
            for (k, sub) in map {
                let key = format!("{prefix}.{k}");
                if sub.is_object() {
                    walk(&key, sub, out);
                } else {
                    out.push(key);
                }
            }
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(src) {
        walk("spe", &v["spe"], &mut out);
    }
    out
}

/// `check`: 0 valid, 1 invalid, 2 unreadable.
pub fn check(args: &CheckArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let path = args.config.display();
    let src = match std::fs::read_to_string(&args.config) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(err, "error: {path}: cannot read: {e}");
            return 2;
        }
    };
    let is_json = args.config.extension().is_some_and(|e| e == "json");
    let loaded = if is_json {
        load_json(&src)
    } else {
        load_toml(&src)
    };
    let config = match loaded {
        Ok(c) => c,
        Err(errs) => {
            for e in &errs.0 {
                match e.location {
                    Some(_) => {
                        let _ = writeln!(err, "error: {path}:{e}");
                    }
                    None => {
                        let _ = writeln!(err, "error: {path}: {e}");
                    }
                }
            }
            return 1;
        }
    };
    let vm = match &args.vm {
        None => VmSpec::default(),
        Some(p) => {
            let table = spe_policy_sim::read_bounded(p)
                .and_then(|src| spe_policy_sim::vm_table(&p.display().to_string(), &src))
                .and_then(|t| {
                    toml::Value::Table(t)
                        .try_into::<VmSpec>()
                        .map_err(|e| format!("{}: {}", p.display(), e.message()))
                });
            match table {
                Ok(vm) => vm,
                Err(e) => {
                    let _ = writeln!(err, "error: {e}");
                    return 1;
                }
            }
        }
    };
    let policy = match Policy::from_config(&config, &vm) {
        Ok(p) => p,
        Err(errs) => {
            for e in &errs.0 {
                let _ = writeln!(err, "error: {path}: {e}");
            }
            return 1;
        }
    };
    let prof = policy.profile();
    let names =
        |ps: &[spe_policy::Property]| ps.iter().map(|p| p.name()).collect::<Vec<_>>().join(" + ");
    let _ = writeln!(out, "# {path}: valid\n");
    let explicit = if is_json {
        json_keys(&src)
    } else {
        explicit_keys(&src)
    };
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
    0
}

/// `config --defaults`.
pub fn defaults(out: &mut dyn Write) -> i32 {
    let _ = writeln!(
        out,
        "# spe-policy: the default [spe] table, every key at its default value.\n# Embed it in the VMM's config file and change what differs."
    );
    let _ = write!(out, "{}", to_toml(&SpeConfig::default()));
    0
}
