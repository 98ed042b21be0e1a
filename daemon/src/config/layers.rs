//! Layered configuration: the `--config` file, then `conf.d/*.toml`, then `REFLEX_*`
//! environment variables, merged by figment, which remembers where each value came from.
//!
//! Contract:
//! - **Precedence** (later wins): the main file, then each conf.d file in lexical (byte)
//!   order of its file name, then the environment.
//! - **Merge rule**: tables merge key by key; any other value, arrays included, is replaced
//!   whole by a later layer. A conf.d file with `[[routes]]` therefore replaces *all* the
//!   routes of the layers before it, never appends to them.
//! - **conf.d**: `<directory of the main file>/conf.d` unless given (`--conf-dir`). A
//!   missing directory is no layer; an unreadable one is an error. Only regular files whose
//!   name ends in `.toml` and does not start with `.` are layers (`x.toml.dpkg-dist`,
//!   editor backups and hidden files are not).
//! - **Environment**: `REFLEX_` then the key path in upper case with `__` between levels:
//!   `REFLEX_NODE__NAME`, `REFLEX_MQTT__PORT`, `REFLEX_MODELS__VIB__HOT_RELOAD`. Only names
//!   with `__` after the prefix are configuration (every key lives in a section), so the
//!   program variables `REFLEX_LOG`, `REFLEX_LOG_FORMAT` and the test and bench variables
//!   never are. The value is read as a TOML value when it is one (`1884` a number, `true` a
//!   boolean, `"007"` a string) and as a plain string otherwise. A name with an empty level
//!   (`REFLEX_NODE____NAME`) is refused.
//! - The merged document is deserialized with the sections' `deny_unknown_fields`, so an
//!   unknown key in any layer, environment included, is an error naming that layer; then
//!   validated as one config ([`Config::validate`]); every error names the layer its value
//!   came from ([`ValidationError::origin`]), or `default`.
//!
//! [`load_layered`] does I/O (the files, the directory listing); the environment is
//! passed in, so tests need not touch the process's.

use std::path::{Path, PathBuf};

use figment::providers::{Format as _, Toml};
use figment::value::{Dict, Map, Tag, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};

use super::error::{ConfigError, ValidationError};
use super::Config;

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "REFLEX_";
/// Separator of key levels in those variables' names.
pub const ENV_SEPARATOR: &str = "__";
/// What [`Layered::origin_of`] answers for a value no layer set.
pub const DEFAULT_ORIGIN: &str = "default";

/// Where a layered configuration is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    /// The main file (`--config`); it must exist.
    pub file: PathBuf,
    /// The drop-in directory (`--conf-dir`, else [`default_conf_dir`]); may be missing.
    pub conf_dir: PathBuf,
}

/// `conf.d` next to `file`.
pub fn default_conf_dir(file: &Path) -> PathBuf {
    file.parent().unwrap_or(Path::new("")).join("conf.d")
}

/// Whether a file named `name` in conf.d is a layer.
pub fn is_layer_name(name: &str) -> bool {
    name.ends_with(".toml") && !name.starts_with('.')
}

impl Sources {
    /// The main file and its conf.d (`conf_dir`, else [`default_conf_dir`]).
    pub fn new(file: impl Into<PathBuf>, conf_dir: Option<PathBuf>) -> Self {
        let file = file.into();
        let conf_dir = conf_dir.unwrap_or_else(|| default_conf_dir(&file));
        Self { file, conf_dir }
    }

    /// The conf.d layers, in the order they apply. I/O.
    pub fn conf_files(&self) -> Result<Vec<PathBuf>, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: self.conf_dir.clone(),
            source,
        };
        let entries = match std::fs::read_dir(&self.conf_dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(read_err(e)),
            Ok(entries) => entries,
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(read_err)?;
            let path = entry.path();
            if is_layer_name(&entry.file_name().to_string_lossy()) && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        Ok(files)
    }
}

/// The key path (`node.name`) an environment variable overrides, if it is a configuration
/// variable; `Err` names a configuration variable with an empty level.
pub fn env_key(name: &str) -> Option<Result<String, ConfigError>> {
    let rest = name.strip_prefix(ENV_PREFIX)?;
    if !rest.contains(ENV_SEPARATOR) {
        return None;
    }
    let levels: Vec<String> = rest
        .split(ENV_SEPARATOR)
        .map(|l| l.to_ascii_lowercase())
        .collect();
    if levels.iter().any(String::is_empty) {
        return Some(Err(ConfigError::Parse {
            origin: name.to_owned(),
            field: ".".into(),
            message: format!("empty key level in environment variable {name}"),
        }));
    }
    Some(Ok(levels.join(".")))
}

/// The name of the variable that sets `key` (`node.name` → `REFLEX_NODE__NAME`).
pub fn env_name(key: &[&str]) -> String {
    let levels: Vec<String> = key.iter().map(|k| k.to_ascii_uppercase()).collect();
    format!("{ENV_PREFIX}{}", levels.join(ENV_SEPARATOR))
}

/// One configuration variable as a figment layer, named by the variable.
struct EnvVar {
    name: String,
    key: Vec<String>,
    value: String,
}

impl Provider for EnvVar {
    fn metadata(&self) -> Metadata {
        Metadata::from("environment variable", Source::Custom(self.name.clone()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        // Nested by hand rather than with figment's `nest`, which splits on '.' and so
        // cannot hold a model name with a dot.
        let mut value: Value = self.value.parse().expect("parsing a Value is infallible");
        for level in self.key.iter().rev() {
            let mut dict = Dict::new();
            dict.insert(level.clone(), value);
            value = Value::from(dict);
        }
        let dict = value.into_dict().expect("a key nests into a dict");
        Ok(Profile::Default.collect(dict))
    }
}

/// A configuration merged from layers, with the source of each value.
#[derive(Debug, Clone)]
pub struct Layered {
    /// The merged configuration (validated when it comes from [`load_layered`]).
    pub config: Config,
    /// Where it was read from.
    pub sources: Sources,
    /// The conf.d files that were layers, in order.
    pub conf_files: Vec<PathBuf>,
    /// The environment variables that were layers, in name order.
    pub env_vars: Vec<String>,
    figment: Figment,
}

/// The layers of `sources` and the configuration variables among `env`, merged but not
/// deserialized. I/O (reads the files).
fn merge(
    sources: &Sources,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(Figment, Vec<PathBuf>, Vec<String>), ConfigError> {
    // figment reads the files itself; this gives the usual error for a missing main file.
    std::fs::File::open(&sources.file).map_err(|source| ConfigError::Read {
        path: sources.file.clone(),
        source,
    })?;
    let conf_files = sources.conf_files()?;
    let mut figment = Figment::new().merge(Toml::file_exact(&sources.file));
    for f in &conf_files {
        figment = figment.merge(Toml::file_exact(f));
    }
    let mut vars = Vec::new();
    for (name, value) in env {
        if let Some(key) = env_key(&name) {
            let key = key?;
            vars.push(EnvVar {
                name,
                key: key.split('.').map(str::to_owned).collect(),
                value,
            });
        }
    }
    vars.sort_by(|a, b| a.name.cmp(&b.name));
    let names = vars.iter().map(|v| v.name.clone()).collect();
    for v in vars {
        figment = figment.merge(v);
    }
    Ok((figment, conf_files, names))
}

/// Reads every layer of `sources` and the configuration variables among `env` (pass
/// `std::env::vars()`), merges them, deserializes and validates the result. Errors name
/// the layer of the bad value. No file checks: see [`Config::check_files`] and
/// [`Layered::attribute`].
pub fn load_layered(
    sources: &Sources,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Layered, ConfigError> {
    let layered = parse_layered(sources, env)?;
    layered
        .config
        .validate()
        .map_err(|errors| ConfigError::Invalid(layered.attribute(errors)))?;
    Ok(layered)
}

/// [`load_layered`] without the validation: merged and deserialized (unknown keys and
/// wrong types are errors).
pub fn parse_layered(
    sources: &Sources,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Layered, ConfigError> {
    let (figment, conf_files, env_vars) = merge(sources, env)?;
    let config: Config = figment.extract().map_err(parse_error)?;
    Ok(Layered {
        config,
        sources: sources.clone(),
        conf_files,
        env_vars,
        figment,
    })
}

/// The first of figment's errors as a [`ConfigError::Parse`] naming its layer.
fn parse_error(e: figment::Error) -> ConfigError {
    let e = e
        .into_iter()
        .next()
        .expect("a figment error holds one at least");
    let origin = e
        .metadata
        .as_ref()
        .map_or_else(|| "<merged config>".to_owned(), origin_of_metadata);
    let field = if e.path.is_empty() {
        ".".to_owned()
    } else {
        e.path.join(".")
    };
    ConfigError::Parse {
        origin,
        field,
        message: e.kind.to_string(),
    }
}

/// A layer's name: its file path or its variable's name.
fn origin_of_metadata(m: &Metadata) -> String {
    match &m.source {
        Some(Source::File(p)) => p.display().to_string(),
        Some(Source::Custom(s)) => s.clone(),
        _ => m.name.to_string(),
    }
}

/// The levels of a validation field path: `routes[1].deadline_ms` → `routes`, `1`,
/// `deadline_ms`.
fn field_levels(field: &str) -> Vec<String> {
    field
        .replace('[', ".")
        .replace(']', "")
        .split('.')
        .map(str::to_owned)
        .collect()
}

/// The value at `levels` under `value`. A dict key may itself contain dots (a model
/// named `vib.v2`): the shortest run of levels that is a key is taken.
fn find<'a>(value: &'a Value, levels: &[String]) -> Option<&'a Value> {
    if levels.is_empty() {
        return Some(value);
    }
    match value {
        Value::Dict(_, d) => (1..=levels.len()).find_map(|n| {
            let key = levels[..n].join(".");
            d.get(&key).and_then(|v| find(v, &levels[n..]))
        }),
        Value::Array(_, a) => {
            let i: usize = levels[0].parse().ok()?;
            find(a.get(i)?, &levels[1..])
        }
        _ => None,
    }
}

impl Layered {
    fn tag_at(&self, levels: &[String]) -> Option<Tag> {
        let (first, rest) = levels.split_first()?;
        let top = self.figment.find_value(first).ok()?;
        find(&top, rest).map(Value::tag)
    }

    /// Which layer set the value at `field` (a validation field path such as
    /// `mqtt.port` or `routes[1].deadline_ms`): a file path, a variable name, or
    /// [`DEFAULT_ORIGIN`].
    pub fn origin_of(&self, field: &str) -> String {
        self.origin_at(&field_levels(field))
    }

    /// [`Layered::origin_of`] for a path given as its levels.
    pub fn origin_at(&self, levels: &[String]) -> String {
        self.tag_at(levels)
            .and_then(|t| self.figment.get_metadata(t))
            .map_or_else(|| DEFAULT_ORIGIN.to_owned(), origin_of_metadata)
    }

    /// `errors` with the layer each value came from.
    pub fn attribute(&self, errors: Vec<ValidationError>) -> Vec<ValidationError> {
        errors
            .into_iter()
            .map(|mut e| {
                e.origin = Some(self.origin_of(&e.field));
                e
            })
            .collect()
    }

    /// The layers, in the order they apply: the main file, the conf.d files, the
    /// variables.
    pub fn layers(&self) -> Vec<String> {
        std::iter::once(self.sources.file.display().to_string())
            .chain(self.conf_files.iter().map(|f| f.display().to_string()))
            .chain(self.env_vars.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: &str = r#"
[node]
name = "from-file"
[mqtt]
port = 1884
[[routes]]
name = "vibration"
topic_filter = "sensors/+/vibration"
model = "edge"
deadline_ms = 5.0
command_topic = "actuators/{device}/cmd"
[models.edge]
manifest = "edge.json"
fallback_manifest = "fallback.json"
"#;

    /// A fresh directory with `reflex.toml` (`main`) and `conf.d/` holding `drop_ins`.
    fn dir_with(test: &str, main: &str, drop_ins: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("reflex-layers-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        std::fs::write(dir.join("reflex.toml"), main).unwrap();
        for (name, text) in drop_ins {
            std::fs::write(dir.join("conf.d").join(name), text).unwrap();
        }
        dir
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn later_layers_win_and_each_value_remembers_its_layer() {
        let dir = dir_with(
            "order",
            MAIN,
            &[
                ("20-late.toml", "[mqtt]\nkeep_alive_s = 9\nport = 1886\n"),
                ("10-early.toml", "[mqtt]\nport = 1885\nkeep_alive_s = 7\n"),
                ("30-ignored.toml.dpkg-dist", "[mqtt]\nport = 1\n"),
            ],
        );
        let sources = Sources::new(dir.join("reflex.toml"), None);
        let vars = env(&[
            ("REFLEX_NODE__NAME", "from-env"),
            ("REFLEX_LOG", "debug"),
            ("REFLEX_LOG_FORMAT", "json"),
        ]);
        let l = load_layered(&sources, vars).unwrap();
        assert_eq!(l.config.node.name, "from-env");
        assert_eq!((l.config.mqtt.port, l.config.mqtt.keep_alive_s), (1886, 9));
        assert_eq!(l.origin_of("node.name"), "REFLEX_NODE__NAME");
        let late = dir.join("conf.d/20-late.toml").display().to_string();
        assert_eq!(l.origin_of("mqtt.port"), late);
        assert_eq!(l.origin_of("mqtt.keep_alive_s"), late);
        let main = dir.join("reflex.toml").display().to_string();
        assert_eq!(l.origin_of("routes[0].deadline_ms"), main);
        assert_eq!(l.origin_of("models.edge.manifest"), main);
        assert_eq!(l.origin_of("mqtt.host"), DEFAULT_ORIGIN);
        assert_eq!(l.env_vars, ["REFLEX_NODE__NAME"]);
        assert_eq!(l.conf_files.len(), 2);
    }

    #[test]
    fn a_routes_array_in_conf_d_replaces_the_main_files_routes() {
        let route = |name: &str, filter: &str| {
            format!(
                "[[routes]]\nname = \"{name}\"\ntopic_filter = \"{filter}\"\nmodel = \"edge\"\n\
                 deadline_ms = 4.0\ncommand_topic = \"a/{{device}}/cmd\"\n"
            )
        };
        let dir = dir_with(
            "routes",
            MAIN,
            &[("10-routes.toml", &route("temperature", "sensors/+/temp"))],
        );
        let l = load_layered(&Sources::new(dir.join("reflex.toml"), None), env(&[])).unwrap();
        let names: Vec<&str> = l.config.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["temperature"]);
    }

    #[test]
    fn an_unknown_key_is_refused_naming_the_variable_or_file_it_came_from() {
        let dir = dir_with("unknown", MAIN, &[("10-typo.toml", "[mqtt]\nprot = 1\n")]);
        let sources = Sources::new(dir.join("reflex.toml"), None);
        match load_layered(&sources, env(&[])) {
            Err(ConfigError::Parse { origin, field, .. }) => {
                assert_eq!(
                    origin,
                    dir.join("conf.d/10-typo.toml").display().to_string()
                );
                assert_eq!(field, "mqtt.prot");
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
        std::fs::remove_file(dir.join("conf.d/10-typo.toml")).unwrap();
        match load_layered(&sources, env(&[("REFLEX_MQTT__PROT", "1")])) {
            Err(e @ ConfigError::Parse { .. }) => {
                assert!(e.to_string().contains("REFLEX_MQTT__PROT"), "{e}");
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn every_validation_error_names_the_layer_of_its_value() {
        let dir = dir_with(
            "invalid",
            MAIN,
            &[("10-bad.toml", "[bad_input]\nlog_every_s = 0\n")],
        );
        let sources = Sources::new(dir.join("reflex.toml"), None);
        let errors = match load_layered(&sources, env(&[("REFLEX_MQTT__PORT", "0")])) {
            Err(ConfigError::Invalid(errors)) => errors,
            other => panic!("expected validation errors, got {other:?}"),
        };
        let origin = |field: &str| {
            errors
                .iter()
                .find(|e| e.field == field)
                .unwrap_or_else(|| panic!("no error on {field}: {errors:?}"))
                .origin
                .clone()
                .unwrap()
        };
        assert_eq!(origin("mqtt.port"), "REFLEX_MQTT__PORT");
        assert_eq!(
            origin("bad_input.log_every_s"),
            dir.join("conf.d/10-bad.toml").display().to_string()
        );
        let shown = ConfigError::Invalid(errors.clone()).to_string();
        assert!(
            shown.contains("mqtt.port = 0: must be in 1..=65535 (from REFLEX_MQTT__PORT)"),
            "{shown}"
        );
    }

    #[test]
    fn a_missing_conf_dir_is_no_layer_but_a_missing_main_file_is_an_error() {
        let dir = dir_with("missing", MAIN, &[]);
        let sources = Sources::new(dir.join("reflex.toml"), Some(dir.join("nowhere")));
        assert!(load_layered(&sources, env(&[])).is_ok());
        let gone = Sources::new(dir.join("gone.toml"), None);
        assert!(matches!(
            load_layered(&gone, env(&[])),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn an_env_value_is_read_as_toml_when_it_is_toml() {
        let dir = dir_with("types", MAIN, &[]);
        let sources = Sources::new(dir.join("reflex.toml"), None);
        let vars = env(&[
            ("REFLEX_MQTT__CLEAN_SESSION", "true"),
            ("REFLEX_MQTT__HOST", "broker.local"),
            ("REFLEX_NODE__NAME", "\"007\""),
        ]);
        let l = load_layered(&sources, vars).unwrap();
        assert!(l.config.mqtt.clean_session);
        assert_eq!(l.config.mqtt.host, "broker.local");
        assert_eq!(l.config.node.name, "007");
    }

    #[test]
    fn only_prefixed_names_with_a_level_separator_are_configuration() {
        assert_eq!(env_key("REFLEX_NODE__NAME").unwrap().unwrap(), "node.name");
        assert_eq!(
            env_key("REFLEX_MQTT__TLS__CA_FILE").unwrap().unwrap(),
            "mqtt.tls.ca_file"
        );
        for not_config in [
            "REFLEX_LOG",
            "REFLEX_LOG_FORMAT",
            "REFLEX_PIPELINE_SEED",
            "HOME",
        ] {
            assert!(env_key(not_config).is_none(), "{not_config}");
        }
        assert!(env_key("REFLEX_NODE____NAME").unwrap().is_err());
    }

    #[test]
    fn a_key_maps_back_to_its_variable_name() {
        assert_eq!(env_name(&["mqtt", "port"]), "REFLEX_MQTT__PORT");
        assert_eq!(
            env_key(&env_name(&["scheduler", "safety_margin_us"]))
                .unwrap()
                .unwrap(),
            "scheduler.safety_margin_us"
        );
    }

    #[test]
    fn conf_d_layers_are_toml_files_not_hidden_or_package_leftovers() {
        assert!(is_layer_name("10-site.toml"));
        for not_layer in [
            ".10-site.toml",
            "10-site.toml.dpkg-dist",
            "10-site.toml~",
            "x.conf",
        ] {
            assert!(!is_layer_name(not_layer), "{not_layer}");
        }
    }

    #[test]
    fn conf_d_defaults_to_the_directory_of_the_main_file() {
        assert_eq!(
            default_conf_dir(Path::new("/etc/reflex/reflex.toml")),
            Path::new("/etc/reflex/conf.d")
        );
        assert_eq!(
            default_conf_dir(Path::new("reflex.toml")),
            Path::new("conf.d")
        );
    }

    #[test]
    fn validation_paths_split_into_levels() {
        assert_eq!(
            field_levels("routes[1].deadline_ms"),
            ["routes", "1", "deadline_ms"]
        );
        assert_eq!(field_levels("models.vib.v2.manifest").len(), 4);
    }
}
