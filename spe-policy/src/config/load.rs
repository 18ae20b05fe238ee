//! Reading a config: from TOML or JSON text, or from a value a VMM already parsed. Every error
//! names the key, the value, the reason, the fix and, where the format has lines, where; the
//! shape of the file is checked before its keys (an `spe` that is not a table, trailing data),
//! and what is suspicious but valid comes back as warnings.

use super::{ConfigError, ConfigErrors, ConfigFile, SpeConfig, StrategyName};

/// 1-based line and column of byte `offset` in `src`.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |n| before.len() - n - 1)
        + 1;
    (line, col)
}

/// The closest of `candidates` to `word`, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.75)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// The backticked names in a serde message ("unknown field `x`, expected one of `a`, `b`").
fn backticked(msg: &str) -> Vec<&str> {
    msg.split('`').skip(1).step_by(2).collect()
}

/// A fix for a serde error message.
fn serde_fix(msg: &str) -> String {
    let names = backticked(msg);
    if msg.starts_with("unknown field") || msg.starts_with("unknown variant") {
        let what = if msg.starts_with("unknown field") {
            "key"
        } else {
            "value"
        };
        if let Some((bad, valid)) = names.split_first() {
            return match did_you_mean(bad, valid.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("valid {what}s: {}", valid.join(", ")),
            };
        }
    }
    "see `spe-policy config --defaults` for every key with its default value".into()
}

/// Finds the line and column of `key` (dotted, e.g. `spe.pin_buffer.cap_per_vcpu`) in TOML
/// source: the `name =` line inside its table, or the table header.
pub fn locate_key(src: &str, key: &str) -> Option<(usize, usize)> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let name = parts.pop()?;
    let table = parts.join(".");
    let mut in_table = table.is_empty();
    let mut offset = 0;
    for line in src.split_inclusive('\n') {
        let t = line.trim_start();
        if let Some(h) = t.strip_prefix('[') {
            let header = h.trim_end().trim_end_matches(']').trim();
            in_table = header == table;
            if header == key {
                return Some(line_col(src, offset));
            }
        } else if in_table {
            let lhs = t.split('=').next().unwrap_or("").trim();
            if t.contains('=') && lhs == name {
                return Some(line_col(src, offset + (line.len() - t.len())));
            }
        }
        offset += line.len();
    }
    None
}

/// Something valid but suspicious in a config: the caller decides (`spe-policy check` prints
/// them; a file without an `[spe]` table is an error there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The key or table concerned (`spe`, `sep`, `spe.pin_buffer`, ...).
    pub key: String,
    /// What is suspicious and what to do.
    pub message: String,
    /// 1-based line and column, when the format has lines.
    pub location: Option<(usize, usize)>,
}

impl core::fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if let Some((l, c)) = self.location {
            write!(f, "{l}:{c}: ")?;
        }
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// A config read from a file: the policy, what was suspicious, and which keys the file set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// The validated policy.
    pub config: SpeConfig,
    /// Suspicious but valid.
    pub warnings: Vec<ConfigWarning>,
    /// Whether the file had an `[spe]` table at all.
    pub has_spe_table: bool,
    /// The dotted keys under `spe` the file set (the rest are defaults).
    pub explicit: Vec<String>,
}

/// The strategy tables and the strategy that reads each.
const STRATEGY_TABLES: [(&str, StrategyName); 3] = [
    ("pin_all", StrategyName::PinAll),
    ("pin_buffer", StrategyName::PinBuffer),
    ("shadow_buffer", StrategyName::ShadowBuffer),
];

/// The policy keys that are only meaningful inside `[spe]`.
const SPE_KEYS: [&str; 6] = [
    "strategy",
    "migration",
    "dirty_log",
    "recovery",
    "service",
    "pin",
];

/// A format-neutral view of a parsed document, for the shape checks and the warnings.
enum Node<'a> {
    Table(Vec<(&'a str, Node<'a>)>),
    Array,
    Scalar,
}

fn node_of_json(v: &serde_json::Value) -> Node<'_> {
    match v {
        serde_json::Value::Object(m) => Node::Table(
            m.iter()
                .map(|(k, v)| (k.as_str(), node_of_json(v)))
                .collect(),
        ),
        serde_json::Value::Array(_) => Node::Array,
        _ => Node::Scalar,
    }
}

#[cfg(feature = "toml")]
fn node_of_toml(v: &toml::Value) -> Node<'_> {
    match v {
        toml::Value::Table(m) => Node::Table(
            m.iter()
                .map(|(k, v)| (k.as_str(), node_of_toml(v)))
                .collect(),
        ),
        toml::Value::Array(_) => Node::Array,
        _ => Node::Scalar,
    }
}

fn shape_error(key: &str, reason: &str, fix: &str) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        key: key.into(),
        value: String::new(),
        reason: reason.into(),
        fix: fix.into(),
        location: None,
    }])
}

/// Checks the document's shape (a table at the top, `spe` a table) and collects the warnings
/// its keys deserve; returns whether it has an `[spe]` table and the keys set under it.
fn inspect(
    doc: &Node<'_>,
    format: &str,
) -> Result<(bool, Vec<String>, Vec<ConfigWarning>), ConfigErrors> {
    let Node::Table(top) = doc else {
        return Err(shape_error(
            "(top level)",
            &format!("a config is a {format} table of tables, not a list or a value"),
            "write the policy as an `spe` table",
        ));
    };
    let mut warnings = Vec::new();
    let mut has_spe = false;
    let mut explicit = Vec::new();
    for (k, v) in top {
        if *k == "spe" {
            let Node::Table(spe) = v else {
                return Err(shape_error(
                    "spe",
                    "`spe` must be one table ([spe]), not a list ([[spe]]) or a value",
                    "write [spe] once, with strategy = ... under it",
                ));
            };
            has_spe = true;
            fn walk(prefix: &str, t: &[(&str, Node<'_>)], out: &mut Vec<String>) {
                for (k, v) in t {
                    let key = format!("{prefix}.{k}");
                    match v {
                        Node::Table(sub) => walk(&key, sub, out),
                        _ => out.push(key),
                    }
                }
            }
            walk("spe", spe, &mut explicit);
        } else if SPE_KEYS.contains(k) {
            warnings.push(ConfigWarning {
                key: (*k).into(),
                message: format!(
                    "a top-level `{k}` is not read: spe-policy reads only the [spe] table; move it under [spe]"
                ),
                location: None,
            });
        } else if matches!(v, Node::Table(_))
            && strsim::damerau_levenshtein(&k.to_ascii_lowercase(), "spe") <= 1
        {
            warnings.push(ConfigWarning {
                key: (*k).into(),
                message: format!("a table named `{k}` is not read; did you mean [spe]?"),
                location: None,
            });
        }
    }
    if !has_spe {
        warnings.push(ConfigWarning {
            key: "spe".into(),
            message: "no [spe] table: every key takes its default (pin-buffer); add an [spe] table with strategy = ...".into(),
            location: None,
        });
    }
    Ok((has_spe, explicit, warnings))
}

/// The warnings a validated policy deserves on its own: a strategy table the chosen strategy
/// ignores.
fn policy_warnings(config: &SpeConfig, explicit: &[String]) -> Vec<ConfigWarning> {
    STRATEGY_TABLES
        .iter()
        .filter(|(_, s)| *s != config.strategy)
        .filter(|(t, _)| {
            let prefix = format!("spe.{t}.");
            explicit.iter().any(|k| k.starts_with(&prefix))
        })
        .map(|(t, s)| ConfigWarning {
            key: format!("spe.{t}"),
            message: format!(
                "[spe.{t}] configures {}, but strategy = \"{}\": it is ignored",
                s.as_str(),
                config.strategy.as_str()
            ),
            location: None,
        })
        .collect()
}

fn finish(
    config: SpeConfig,
    has_spe_table: bool,
    explicit: Vec<String>,
    mut warnings: Vec<ConfigWarning>,
    locate: impl Fn(&str) -> Option<(usize, usize)>,
) -> Result<Loaded, ConfigErrors> {
    config.validate().map_err(|mut errs| {
        for e in &mut errs.0 {
            e.location = locate(&e.key);
        }
        errs
    })?;
    warnings.extend(policy_warnings(&config, &explicit));
    for w in &mut warnings {
        w.location = locate(&w.key);
    }
    Ok(Loaded {
        config,
        warnings,
        has_spe_table,
        explicit,
    })
}

impl SpeConfig {
    /// Reads the `[spe]` table of a TOML config (other tables are the VMM's and are ignored)
    /// and validates it.
    #[cfg(feature = "toml")]
    pub fn from_toml_str(src: &str) -> Result<Loaded, ConfigErrors> {
        let one = |e: ConfigError| ConfigErrors(vec![e]);
        let doc: toml::Table = src.parse().map_err(|e: toml::de::Error| {
            one(ConfigError {
                key: "(syntax)".into(),
                value: String::new(),
                reason: e.message().trim().to_string(),
                fix: "fix the TOML syntax at that position".into(),
                location: e.span().map(|s| line_col(src, s.start)),
            })
        })?;
        let (has_spe, explicit, warnings) =
            inspect(&node_of_toml(&toml::Value::Table(doc)), "TOML").map_err(|mut e| {
                for x in &mut e.0 {
                    x.location = locate_key(src, &x.key);
                }
                e
            })?;
        let de = toml::de::Deserializer::parse(src).map_err(|e| {
            one(ConfigError {
                key: "(syntax)".into(),
                value: String::new(),
                reason: e.message().trim().to_string(),
                fix: "fix the TOML syntax at that position".into(),
                location: e.span().map(|s| line_col(src, s.start)),
            })
        })?;
        let file: ConfigFile = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let msg = inner.message().trim().to_string();
            let span = inner.span();
            // The span covers the offending value, or the key itself for an unknown key.
            let value = if msg.starts_with("unknown field") {
                String::new()
            } else {
                span.clone()
                    .and_then(|s| src.get(s))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default()
            };
            one(ConfigError {
                key: path,
                value,
                reason: msg.lines().next().unwrap_or("").to_string(),
                fix: serde_fix(&msg),
                location: span.map(|s| line_col(src, s.start)),
            })
        })?;
        finish(file.spe, has_spe, explicit, warnings, |k| {
            locate_key(src, k)
        })
    }

    /// Reads the `"spe"` object of a JSON config (Cloud Hypervisor's and Firecracker's
    /// format; other keys are the VMM's) and validates it. Trailing data after the document
    /// is an error.
    pub fn from_json_str(src: &str) -> Result<Loaded, ConfigErrors> {
        let json_error = |key: String, e: &serde_json::Error, fix: &str| {
            ConfigErrors(vec![ConfigError {
                key,
                value: String::new(),
                reason: e.to_string(),
                fix: fix.into(),
                location: Some((e.line(), e.column())),
            }])
        };
        let value: serde_json::Value = serde_json::from_str(src)
            .map_err(|e| json_error("(syntax)".into(), &e, "fix the JSON at that position"))?;
        let (has_spe, explicit, warnings) = inspect(&node_of_json(&value), "JSON")?;
        let de = &mut serde_json::Deserializer::from_str(src);
        let file: ConfigFile = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let msg = inner.to_string();
            json_error(key, &inner, &serde_fix(&msg))
        })?;
        de.end()
            .map_err(|e| json_error("(syntax)".into(), &e, "remove what follows the document"))?;
        finish(file.spe, has_spe, explicit, warnings, |_| None)
    }

    /// The policy from a value a VMM already parsed (any serde format: a `serde_json::Value`,
    /// a `toml::Value`, ...) holding the `spe` table's contents; validated.
    pub fn from_value<'de, D: serde::Deserializer<'de>>(value: D) -> Result<SpeConfig, ConfigErrors>
    where
        D::Error: core::fmt::Display,
    {
        let config: SpeConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = format!("spe.{}", e.path());
            let msg = e.into_inner().to_string();
            ConfigErrors(vec![ConfigError {
                key,
                value: String::new(),
                fix: serde_fix(&msg),
                reason: msg,
                location: None,
            }])
        })?;
        config.validate()?;
        Ok(config)
    }
}

/// Loads the `[spe]` table from TOML source (other tables are the VMM's and are ignored),
/// then validates it; [`SpeConfig::from_toml_str`] also returns the warnings.
#[cfg(feature = "toml")]
pub fn load_toml(src: &str) -> Result<SpeConfig, ConfigErrors> {
    SpeConfig::from_toml_str(src).map(|l| l.config)
}

/// The dotted keys under `spe` that TOML source sets explicitly (the rest are defaults).
#[cfg(feature = "toml")]
pub fn explicit_keys(src: &str) -> Vec<String> {
    SpeConfig::from_toml_str(src)
        .map(|l| l.explicit)
        .unwrap_or_default()
}

/// The config as TOML, with every key (for `spe-policy config --defaults` and `check`).
#[cfg(feature = "toml")]
pub fn to_toml(config: &SpeConfig) -> String {
    toml::to_string(&ConfigFile { spe: *config }).unwrap_or_default()
}
