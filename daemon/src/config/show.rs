//! `reflexd config show`: the merged configuration as TOML, every value followed by the
//! layer it came from (`# from /etc/reflex/conf.d/10-site.toml`, `# from
//! REFLEX_NODE__NAME`, `# default`). Pure: the caller gives the origin of each key path.
//!
//! Contract: the output is valid TOML that deserializes to the same [`Config`], except
//! that secrets are shown as [`super::mqtt::REDACTED`]. Absent optional values (no
//! `[journal]`, no `mqtt.username`) are not shown. An array of tables (`[[routes]]`) is
//! one value: each of its keys is attributed to the layer that set the array.

use std::fmt::Write as _;

use super::layers::DEFAULT_ORIGIN;
use super::Config;

/// `config` as commented TOML; `origin` answers the layer of the value at a key path
/// (levels such as `["routes", "0", "name"]`).
pub fn render(config: &Config, origin: &dyn Fn(&[String]) -> String) -> String {
    let value = toml::Value::try_from(config).expect("a config serializes to TOML");
    let mut out = String::new();
    if let toml::Value::Table(t) = &value {
        table(&mut out, &[], &[], t, origin);
    }
    out.trim_start().to_owned()
}

fn key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_owned()
    } else {
        format!("{k:?}")
    }
}

fn header(path: &[String]) -> String {
    path.iter().map(|k| key(k)).collect::<Vec<_>>().join(".")
}

fn is_table_array(v: &toml::Value) -> bool {
    matches!(v, toml::Value::Array(a) if !a.is_empty() && a.iter().all(toml::Value::is_table))
}

fn comment(origin: String) -> String {
    if origin == DEFAULT_ORIGIN {
        "# default".to_owned()
    } else {
        format!("# from {origin}")
    }
}

/// The keys of table `t` at `path`: values first, then sub-tables and arrays of tables.
/// `head` is `path` as a TOML header names it: without the indices of arrays of tables
/// (`[routes.input]` is the input of the last `[[routes]]`).
fn table(
    out: &mut String,
    path: &[String],
    head: &[String],
    t: &toml::Table,
    origin: &dyn Fn(&[String]) -> String,
) {
    let at = |k: &str| {
        let mut p = path.to_vec();
        p.push(k.to_owned());
        p
    };
    for (k, v) in t {
        if v.is_table() || is_table_array(v) {
            continue;
        }
        let _ = writeln!(out, "{} = {}  {}", key(k), v, comment(origin(&at(k))));
    }
    for (k, v) in t {
        let p = at(k);
        let mut h = head.to_vec();
        h.push(k.to_owned());
        match v {
            toml::Value::Table(sub) => {
                // A table of tables only (`[models]`) needs no header of its own.
                let only_tables =
                    !sub.is_empty() && sub.values().all(|v| v.is_table() || is_table_array(v));
                if !only_tables {
                    let _ = writeln!(out, "\n[{}]", header(&h));
                }
                table(out, &p, &h, sub, origin);
            }
            toml::Value::Array(items) if is_table_array(v) => {
                for (i, item) in items.iter().enumerate() {
                    let _ = writeln!(out, "\n[[{}]]", header(&h));
                    let mut pi = p.clone();
                    pi.push(i.to_string());
                    if let toml::Value::Table(sub) = item {
                        table(out, &pi, &h, sub, origin);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[node]
name = "press-7"
[mqtt]
port = 1884
password = "hunter2"
username = "u"
[[routes]]
name = "vib"
topic_filter = "sensors/+/vibration"
model = "vib.v2"
deadline_ms = 5.0
command_topic = "actuators/{device}/cmd"
[models."vib.v2"]
manifest = "m.json"
fallback_manifest = "f.json"
"#;

    fn origin(levels: &[String]) -> String {
        match levels.join("/").as_str() {
            "node/name" => "REFLEX_NODE__NAME".into(),
            "mqtt/port" => "/etc/reflex/reflex.toml".into(),
            _ => DEFAULT_ORIGIN.into(),
        }
    }

    #[test]
    fn each_value_is_followed_by_its_origin_and_the_output_parses_back() {
        let config = super::super::parse(BASE).unwrap();
        let shown = render(&config, &origin);
        assert!(
            shown.contains("[node]\nname = \"press-7\"  # from REFLEX_NODE__NAME\n"),
            "{shown}"
        );
        assert!(
            shown.contains("port = 1884  # from /etc/reflex/reflex.toml\n"),
            "{shown}"
        );
        assert!(shown.contains("keep_alive_s = 5  # default\n"), "{shown}");
        assert!(
            shown.contains("[[routes]]\ncommand_topic = \"actuators/{device}/cmd\""),
            "{shown}"
        );
        assert!(shown.contains("[models.\"vib.v2\"]\n"), "{shown}");
        let mut back = super::super::parse(&shown).unwrap();
        assert_eq!(
            back.mqtt.password.as_ref().map(|s| s.expose().to_owned()),
            Some(super::super::mqtt::REDACTED.to_owned())
        );
        back.mqtt.password = config.mqtt.password.clone();
        assert_eq!(back, config);
    }

    #[test]
    fn a_routes_input_section_is_shown_under_its_route_and_parses_back() {
        let text = BASE.replace(
            "command_topic = \"actuators/{device}/cmd\"\n",
            "command_topic = \"actuators/{device}/cmd\"\n[routes.input]\nkind = \"json\"\n\
             channels = [\"/ax\"]\n[routes.input.assemble]\nhop = 8\n",
        );
        let config = super::super::parse(&text).unwrap();
        let shown = render(&config, &origin);
        assert!(shown.contains("\n[routes.input]\n"), "{shown}");
        assert!(shown.contains("\n[routes.input.assemble]\n"), "{shown}");
        let mut back = super::super::parse(&shown).unwrap();
        back.mqtt.password = config.mqtt.password.clone();
        assert_eq!(back, config);
    }

    #[test]
    fn a_route_without_an_input_section_shows_none() {
        let config = super::super::parse(BASE).unwrap();
        let shown = render(&config, &origin);
        assert!(!shown.contains("[routes.input]"), "{shown}");
        assert!(!shown.contains("kind = "), "{shown}");
    }

    #[test]
    fn a_secret_is_never_shown() {
        let config = super::super::parse(BASE).unwrap();
        assert!(!render(&config, &origin).contains("hunter2"));
    }
}
