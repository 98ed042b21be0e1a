//! The layered configuration through the real binary: `reflexd config show` attributes
//! each value to the main file, a conf.d file, an environment variable or the default;
//! `validate` names the layer of a bad value; and a running daemon reloads its layers on
//! SIGHUP, applying a reloadable change (a model's manifest) and refusing an invalid or a
//! restart-only one while it keeps serving.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{events, field, metric, repo, scrape, serial, spawn_daemon, test_dir, REFLEXD};
use reflex_tests::{spawn_broker, wait_until};

/// `reflexd <args> --config <config>` with `env` added; (exit code, stdout, stderr).
fn reflexd(args: &[&str], config: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(REFLEXD)
        .args(args)
        .arg("--config")
        .arg(config)
        .envs(env.iter().copied())
        .output()
        .expect("running reflexd");
    (
        out.status.code().expect("reflexd exited, not killed"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A config with one route and the repository's models, and its conf.d.
fn layered_config(name: &str) -> (PathBuf, PathBuf) {
    let dir = test_dir(name);
    let models = repo().join("models");
    let config = dir.join("reflex.toml");
    std::fs::write(
        &config,
        format!(
            r#"[node]
name = "from-file"
[mqtt]
port = 1884
keep_alive_s = 7
[[routes]]
name = "vibration"
topic_filter = "sensors/+/vibration"
model = "edge"
deadline_ms = 20.0
command_topic = "actuators/{{device}}/cmd"
on_budget_unmeetable = "warn"
[models.edge]
manifest = "{models}/edge.manifest.json"
fallback_manifest = "{models}/fallback.manifest.json"
"#,
            models = models.display()
        ),
    )
    .unwrap();
    let conf_d = dir.join("conf.d");
    std::fs::create_dir(&conf_d).unwrap();
    (config, conf_d)
}

#[test]
fn config_show_attributes_each_value_to_its_file_conf_d_file_variable_or_default() {
    let (config, conf_d) = layered_config("show");
    let drop_in = conf_d.join("10-site.toml");
    std::fs::write(
        &drop_in,
        "[mqtt]\nport = 1885\n[scheduler]\nmax_batch = 4\n",
    )
    .unwrap();
    let env = [
        ("REFLEX_NODE__NAME", "board-b"),
        ("REFLEX_MQTT__HOST", "broker.local"),
        ("REFLEX_LOG", "warn"),
    ];
    let (code, out, err) = reflexd(&["config", "show"], &config, &env);
    assert_eq!(code, 0, "{err}");
    let file = config.display().to_string();
    let site = drop_in.display().to_string();
    for line in [
        "name = \"board-b\"  # from REFLEX_NODE__NAME".to_owned(),
        "host = \"broker.local\"  # from REFLEX_MQTT__HOST".to_owned(),
        format!("port = 1885  # from {site}"),
        format!("max_batch = 4  # from {site}"),
        format!("keep_alive_s = 7  # from {file}"),
        format!("deadline_ms = 20.0  # from {file}"),
        "workers = 1  # default".to_owned(),
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "no line {line:?} in:\n{out}"
        );
    }
    assert!(
        out.starts_with(&format!(
            "# reflexd configuration merged from: {file}, {site}, REFLEX_MQTT__HOST, REFLEX_NODE__NAME\n"
        )),
        "{out}"
    );

    // validate lists the same layers.
    let (code, out, err) = reflexd(&["validate"], &config, &env);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("layers: {file}, {site}, REFLEX_MQTT__HOST")),
        "{out}"
    );

    // --conf-dir elsewhere: the default conf.d is not read.
    let empty = config.parent().unwrap().join("empty.d");
    let (code, out, _) = reflexd(
        &["config", "show", "--conf-dir", empty.to_str().unwrap()],
        &config,
        &[],
    );
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("port = 1884  # from {file}")),
        "{out}"
    );
}

#[test]
fn an_invalid_value_exits_64_naming_the_layer_it_came_from() {
    let (config, conf_d) = layered_config("invalid");
    let drop_in = conf_d.join("20-bad.toml");
    std::fs::write(&drop_in, "[bad_input]\nlog_every_s = 0\n").unwrap();
    for args in [&["validate"][..], &["config", "show"][..]] {
        let (code, out, err) = reflexd(args, &config, &[("REFLEX_MQTT__PORT", "0")]);
        assert_eq!(code, 64, "{args:?}: {out}{err}");
        assert!(
            err.contains("mqtt.port = 0: must be in 1..=65535 (from REFLEX_MQTT__PORT)"),
            "{err}"
        );
        assert!(
            err.contains(&format!("(from {})", drop_in.display())),
            "{err}"
        );
    }
    let (code, _, err) = reflexd(&["validate"], &config, &[("REFLEX_MQTT__PROT", "1")]);
    assert_eq!(code, 64);
    assert!(err.contains("REFLEX_MQTT__PROT"), "{err}");
}

/// A copy of the repository's edge model (manifest, ONNX, golden vectors) in `dir`, with
/// the manifest's version set to `version`; returns the manifest.
fn edge_model_copy(dir: &Path, version: &str) -> PathBuf {
    let repo_models = repo().join("models");
    std::fs::copy(repo_models.join("edge.onnx"), dir.join("edge.onnx")).unwrap();
    std::fs::create_dir_all(dir.join("golden")).unwrap();
    for f in ["window_counts.npy", "temperature.npy", "edge_logits.npy"] {
        std::fs::copy(
            repo_models.join("golden").join(f),
            dir.join("golden").join(f),
        )
        .unwrap();
    }
    let manifest = std::fs::read_to_string(repo_models.join("edge.manifest.json")).unwrap();
    let changed = manifest.replacen(
        "\"version\": \"1.0.0\"",
        &format!("\"version\": \"{version}\""),
        1,
    );
    assert_ne!(changed, manifest, "the manifest's version field moved");
    let path = dir.join("edge.manifest.json");
    std::fs::write(&path, changed).unwrap();
    path
}

fn hangup(daemon: &reflex_tests::ChildGuard) {
    let pid = libc::pid_t::try_from(daemon.child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
}

#[test]
fn sighup_applies_a_new_model_from_conf_d_and_keeps_the_old_config_on_a_bad_change() {
    let _serial = serial();
    let broker = spawn_broker();
    let config = common::write_config(&broker, "sighup", 20.0, "");
    let conf_d = config.parent().unwrap().join("conf.d");
    std::fs::create_dir(&conf_d).unwrap();
    let v2_dir = config.parent().unwrap().join("models-v2");
    std::fs::create_dir(&v2_dir).unwrap();
    let v2 = edge_model_copy(&v2_dir, "1.0.1");
    let mut daemon = spawn_daemon(&config);
    let f = field(&broker);
    let evs = events(7, 400);
    let (mut next, _) = f.publish_until_answered("dev-0007", &evs[..100]);
    let info = |version: &str| {
        format!("reflexd_model_info{{route=\"vibration\",model=\"edge\",version=\"{version}\"}}")
    };
    let reloads = |result: &str| {
        metric(
            &scrape(&config),
            &format!("reflexd_config_reloads_total{{result=\"{result}\"}}"),
        )
    };
    assert_eq!(metric(&scrape(&config), &info("1.0.0")), 1);

    // A reloadable change: the model's manifest, from a conf.d file.
    std::fs::write(
        conf_d.join("50-model.toml"),
        format!("[models.edge]\nmanifest = \"{}\"\n", v2.display()),
    )
    .unwrap();
    hangup(&daemon);
    wait_until("the new model to serve", Duration::from_secs(60), || {
        let m = scrape(&config);
        metric(&m, &info("1.0.1")) == 1 && metric(&m, &info("1.0.0")) == 0
    });
    assert_eq!((reloads("applied"), reloads("refused")), (1, 0));

    // An invalid value, then a valid but restart-only one: both refused, nothing applied.
    let bad = conf_d.join("60-bad.toml");
    std::fs::write(&bad, "[bad_input]\nlog_every_s = 0\n").unwrap();
    hangup(&daemon);
    wait_until(
        "the invalid change to be refused",
        Duration::from_secs(30),
        || reloads("refused") == 1,
    );
    let logged = |daemon: &mut reflex_tests::ChildGuard, what: &str| {
        let tail = daemon.stderr_tail();
        tail.contains("configuration reload refused") && tail.contains(what)
    };
    wait_until(
        "the refusal to be logged with its reason",
        Duration::from_secs(5),
        || logged(&mut daemon, "bad_input.log_every_s = 0"),
    );
    std::fs::write(&bad, "[mqtt]\nkeep_alive_s = 9\n").unwrap();
    hangup(&daemon);
    wait_until(
        "the restart-only change to be refused",
        Duration::from_secs(30),
        || reloads("refused") == 2,
    );
    wait_until(
        "the refusal to name the setting",
        Duration::from_secs(5),
        || {
            logged(
                &mut daemon,
                "settings that need a restart changed: mqtt.keep_alive_s",
            )
        },
    );
    assert_eq!(reloads("applied"), 1);
    let m = scrape(&config);
    assert_eq!(
        metric(&m, &info("1.0.1")),
        1,
        "the applied model still serves"
    );

    // Still serving: every further event is answered.
    for (_, bytes) in &evs[next..next + 20] {
        f.publish("dev-0007", bytes.clone());
        f.commands
            .recv_timeout(Duration::from_secs(5))
            .expect("an event after the refused reloads is answered");
    }
    next += 20;
    assert!(next <= evs.len());
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "reflexd stopped"
    );
}
