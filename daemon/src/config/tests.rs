use super::*;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const EXAMPLE: &str = include_str!("../../reflex.example.toml");

const MINIMAL: &str = r#"
    [[routes]]
    name = "vibration"
    topic_filter = "sensors/+/vibration"
    model = "edge"
    deadline_ms = 5.0
    command_topic = "actuators/{device}/cmd"

    [models.edge]
    manifest = "models/edge.manifest.json"
    fallback_manifest = "models/fallback.manifest.json"
"#;

fn parse_err(text: &str) -> (String, String) {
    match parse(text) {
        Err(ConfigError::Parse { field, message, .. }) => (field, message),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

fn invalid(config: &Config) -> Vec<ValidationError> {
    config
        .validate_with_cores(2)
        .expect_err("expected validation errors")
}

fn fields(errors: &[ValidationError]) -> Vec<&str> {
    errors.iter().map(|e| e.field.as_str()).collect()
}

fn minimal() -> Config {
    parse(MINIMAL).unwrap()
}

#[test]
fn example_file_parses_and_validates() {
    let config = parse(EXAMPLE).unwrap();
    config.validate_with_cores(1).unwrap();
    assert_eq!(config.routes.len(), 1);
    let route = &config.routes[0];
    assert_eq!(route.name, "vibration");
    assert_eq!(route.topic_filter, "sensors/+/vibration");
    assert_eq!(route.budget(), Duration::from_millis(5));
    assert_eq!(route.command_topic_for("pump-7"), "actuators/pump-7/cmd");
    let model = config.model_of(route).unwrap();
    assert_eq!(model.manifest, Path::new("models/edge.manifest.json"));
    assert_eq!(
        model.fallback_manifest.as_deref(),
        Some(Path::new("models/fallback.manifest.json"))
    );
}

#[test]
fn example_file_states_the_defaults() {
    // Everything the example spells out is the default, apart from routes and models.
    let example = parse(EXAMPLE).unwrap();
    let minimal = minimal();
    assert_eq!(example, minimal);
}

#[test]
fn defaults_are_what_the_docs_say() {
    let c = minimal();
    c.validate_with_cores(1).unwrap();
    assert_eq!(c.node.name, super::node::default_name());
    assert_eq!(c.client_id(), format!("reflexd-{}", c.node.name));
    let m = &c.mqtt;
    assert_eq!((m.host.as_str(), m.port), ("127.0.0.1", 1883));
    assert_eq!(
        (&m.client_id, &m.username, &m.password, &m.password_file),
        (&None, &None, &None, &None)
    );
    assert_eq!(m.tls, TlsConfig::default());
    assert!(!m.tls.enabled);
    assert_eq!(m.keep_alive(), Duration::from_secs(5));
    assert_eq!(m.max_packet_bytes, 205_065);
    assert_eq!(m.request_channel_capacity, 10_000);
    assert_eq!(
        m.reconnect_backoff(),
        (Duration::from_millis(100), Duration::from_millis(5_000))
    );
    assert!(!m.clean_session);
    let r = &c.routes[0];
    assert_eq!(r.format, Format::Postcard);
    assert_eq!((r.qos_in, r.qos_out), (1, 1));
    assert_eq!(r.on_budget_unmeetable, OnBudgetUnmeetable::Refuse);
    let model = &c.models["edge"];
    assert_eq!((model.calibration_runs, model.hot_reload), (2_000, true));
    assert_eq!(c.scheduler.workers, 1);
    assert_eq!(c.scheduler.max_batch, 8);
    assert_eq!(c.scheduler.queue_capacity, 4_096);
    assert_eq!(c.scheduler.safety_margin(), Duration::from_micros(200));
    assert_eq!(
        (c.devices.max_tracked, c.devices.dedupe_window),
        (10_000, 1_024)
    );
    assert_eq!((c.bad_input.keep_last, c.bad_input.log_every_s), (100, 10));
    assert!(c.metrics.enabled);
    assert_eq!(
        c.metrics.listen_addr().unwrap(),
        "127.0.0.1:9464".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.shutdown.grace(), Duration::from_millis(5_000));
}

#[test]
fn unknown_field_is_refused_naming_it() {
    let (field, message) = parse_err(&format!("{MINIMAL}\n[scheduler]\nworkres = 2\n"));
    assert!(field.starts_with("scheduler"), "{field}");
    assert!(message.contains("unknown field `workres`"), "{message}");
    let err = parse(&MINIMAL.replace("deadline_ms", "deadline_msec")).unwrap_err();
    assert!(err.to_string().contains("deadline_msec"), "{err}");
}

#[test]
fn unknown_section_is_refused_naming_it() {
    let (_, message) = parse_err(&format!("{MINIMAL}\n[metrix]\nenabled = false\n"));
    assert!(message.contains("metrix"), "{message}");
}

#[test]
fn wrong_type_is_refused_naming_the_field() {
    let (field, message) = parse_err(&format!("{MINIMAL}\n[mqtt]\nport = \"1883\"\n"));
    assert_eq!(field, "mqtt.port");
    assert!(message.contains("invalid type"), "{message}");
    let (field, _) = parse_err(&MINIMAL.replace("5.0", "\"fast\""));
    assert_eq!(field, "routes[0].deadline_ms");
}

#[test]
fn toml_syntax_error_is_reported_with_its_line() {
    let err = parse("[mqtt\nport = 1").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("line 1"), "{text}");
}

#[test]
fn three_distinct_errors_are_all_reported_with_their_field_paths() {
    let mut c = minimal();
    c.routes.push(RouteConfig {
        name: "temperature".into(),
        topic_filter: "sensors/+/temperature".into(),
        model: "edge".into(),
        format: Format::Json,
        deadline_ms: 0.0,
        command_topic: "actuators/{device}/cmd".into(),
        qos_in: 1,
        qos_out: 1,
        on_budget_unmeetable: OnBudgetUnmeetable::Warn,
        input: Default::default(),
        policy: None,
        fallback: Default::default(),
        command_template: None,
    });
    c.mqtt.keep_alive_s = 0;
    c.metrics.listen = "localhost".into();
    let errors = invalid(&c);
    assert_eq!(
        fields(&errors),
        [
            "mqtt.keep_alive_s",
            "routes[1].deadline_ms",
            "metrics.listen"
        ]
    );
    let text = ConfigError::Invalid(errors).to_string();
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(
        text.contains("routes[1].deadline_ms = 0: must be finite"),
        "{text}"
    );
    assert!(text.contains("metrics.listen = \"localhost\""), "{text}");
}

#[test]
fn bad_topic_filters_are_refused() {
    for bad in [
        "",
        "sensors/#/vibration",
        "sensors/a+/x",
        "sensors/+x",
        "sensors/x#",
        "a\0b",
    ] {
        assert!(check_topic_filter(bad).is_err(), "{bad:?} accepted");
        let mut c = minimal();
        c.routes[0].topic_filter = bad.into();
        let errors = invalid(&c);
        assert_eq!(fields(&errors), ["routes[0].topic_filter"], "{bad:?}");
        assert!(errors[0].value.contains(&format!("{bad:?}")));
    }
    for good in [
        "#",
        "+",
        "sensors/+/vibration",
        "sensors/#",
        "+/+/x",
        "/a",
        "$SYS/#",
    ] {
        assert_eq!(check_topic_filter(good), Ok(()), "{good:?}");
    }
}

#[test]
fn overlapping_route_filters_are_refused() {
    assert!(filters_overlap("sensors/+/vibration", "sensors/pump-1/+"));
    assert!(filters_overlap("sensors/#", "sensors"));
    assert!(filters_overlap("a/b", "a/b"));
    assert!(!filters_overlap(
        "sensors/+/vibration",
        "sensors/+/temperature"
    ));
    assert!(!filters_overlap("a/+", "a"));
    assert!(!filters_overlap("a/b/c", "a/b"));
    let mut c = minimal();
    let mut second = c.routes[0].clone();
    second.name = "all".into();
    second.topic_filter = "sensors/#".into();
    c.routes.push(second);
    assert_eq!(fields(&invalid(&c)), ["routes[1].topic_filter"]);
}

#[test]
fn route_rules_are_enforced() {
    let mut c = minimal();
    let mut r = c.routes[0].clone();
    r.topic_filter = "other/+".into();
    r.model = "missing".into();
    r.deadline_ms = f64::NAN;
    r.command_topic = "actuators/+/cmd".into();
    r.qos_in = 2;
    c.routes.push(r);
    let errors = invalid(&c);
    assert_eq!(
        fields(&errors),
        [
            "routes[1].name",
            "routes[1].model",
            "routes[1].deadline_ms",
            "routes[1].command_topic",
            "routes[1].qos_in"
        ]
    );
    assert!(errors[0].reason.contains("duplicate"));
}

#[test]
fn command_topic_needs_the_device_placeholder_and_nothing_else() {
    for bad in [
        "actuators/cmd",
        "actuators/{device}/{id}",
        "actuators/{device}/#",
    ] {
        let mut c = minimal();
        c.routes[0].command_topic = bad.into();
        assert_eq!(fields(&invalid(&c)), ["routes[0].command_topic"], "{bad}");
    }
}

#[test]
fn no_routes_is_refused() {
    let c = parse("[models.edge]\nmanifest = \"a\"\nfallback_manifest = \"b\"\n").unwrap();
    assert_eq!(fields(&invalid(&c)), ["routes"]);
}

#[test]
fn deadline_must_leave_room_for_the_safety_margin() {
    let mut c = minimal();
    c.routes[0].deadline_ms = 0.2;
    assert_eq!(fields(&invalid(&c)), ["routes[0].deadline_ms"]);
    c.routes[0].deadline_ms = 10_000.5;
    assert_eq!(fields(&invalid(&c)), ["routes[0].deadline_ms"]);
}

#[test]
fn max_packet_must_hold_the_largest_event_of_the_route_format() {
    let mut c = minimal();
    c.mqtt.max_packet_bytes = reflex_wire::MAX_EVENT_BYTES + PUBLISH_OVERHEAD_BYTES;
    c.validate_with_cores(1).unwrap();
    c.routes[0].format = Format::Json;
    assert_eq!(fields(&invalid(&c)), ["mqtt.max_packet_bytes"]);
}

#[test]
fn persistent_session_needs_a_client_id() {
    let mut c = minimal();
    c.mqtt.client_id = Some(String::new());
    assert_eq!(fields(&invalid(&c)), ["mqtt.client_id"]);
    c.mqtt.clean_session = true;
    c.validate_with_cores(1).unwrap();
}

#[test]
fn credentials_and_tls_must_be_consistent() {
    let mut c = minimal();
    c.mqtt.password = Some(Secret::new("hunter2"));
    c.mqtt.password_file = Some("/run/pw".into());
    c.mqtt.tls.ca_file = Some("ca.pem".into());
    let errors = invalid(&c);
    assert_eq!(
        fields(&errors),
        ["mqtt.password_file", "mqtt.username", "mqtt.tls.ca_file"]
    );
    c.mqtt.username = Some("reflexd".into());
    c.mqtt.password_file = None;
    c.mqtt.tls.enabled = true;
    c.mqtt.tls.client_cert_file = Some("c.pem".into());
    assert_eq!(fields(&invalid(&c)), ["mqtt.tls.client_key_file"]);
    c.mqtt.tls.client_key_file = Some("c.key".into());
    c.validate_with_cores(1).unwrap();
}

#[test]
fn password_never_shows_in_debug_output() {
    let mut c = minimal();
    c.mqtt.password = Some(Secret::new("hunter2"));
    assert!(!format!("{c:?}").contains("hunter2"));
    assert_eq!(
        c.mqtt.resolve_password().unwrap().unwrap().expose(),
        "hunter2"
    );
}

#[test]
fn a_password_file_others_may_read_is_refused_naming_it_and_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("reflexd-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mqtt.password");
    std::fs::write(&path, "hunter2\n").unwrap();
    let mut c = minimal();
    c.mqtt.username = Some("reflexd".into());
    c.mqtt.password_file = Some(path.clone());
    let mode = |m| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).unwrap();
    mode(0o644);
    let e = c.mqtt.resolve_password().unwrap_err().to_string();
    assert!(
        e.contains(&path.display().to_string()) && e.contains("0644"),
        "{e}"
    );
    mode(0o660);
    assert!(
        c.mqtt.resolve_password().is_err(),
        "group-writable accepted"
    );
    mode(0o640);
    assert_eq!(
        c.mqtt.resolve_password().unwrap().unwrap().expose(),
        "hunter2"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn realtime_priority_above_fifty_is_refused_and_zero_turns_it_off() {
    let mut c = minimal();
    assert_eq!(c.scheduler.realtime_priority, 10);
    c.scheduler.realtime_priority = 51;
    assert_eq!(fields(&invalid(&c)), ["scheduler.realtime_priority"]);
    c.scheduler.realtime_priority = 0;
    c.validate_with_cores(4).unwrap();
}

#[test]
fn workers_are_bounded_by_the_cores() {
    let mut c = minimal();
    c.scheduler.workers = 3;
    assert_eq!(fields(&invalid(&c)), ["scheduler.workers"]);
    c.validate_with_cores(4).unwrap();
    c.scheduler.workers = 0;
    assert_eq!(fields(&invalid(&c)), ["scheduler.workers"]);
}

#[test]
fn section_limits_are_enforced() {
    let mut c = minimal();
    c.node.name = "bad name".into();
    c.scheduler.queue_capacity = 0;
    c.scheduler.max_batch = 65;
    c.devices.max_tracked = 0;
    c.devices.dedupe_window = MAX_DEDUPE_WINDOW + 1;
    c.bad_input.log_every_s = 0;
    c.mqtt.reconnect_max_ms = 50;
    c.models.get_mut("edge").unwrap().calibration_runs = 10;
    assert_eq!(
        fields(&invalid(&c)),
        [
            "node.name",
            "mqtt.reconnect_max_ms",
            "models.edge.calibration_runs",
            "scheduler.queue_capacity",
            "scheduler.max_batch",
            "devices.max_tracked",
            "devices.dedupe_window",
            "bad_input.log_every_s"
        ]
    );
}

#[test]
fn metrics_may_listen_on_any_address_chosen_explicitly() {
    let mut c = minimal();
    c.metrics.listen = "0.0.0.0:9464".into();
    c.validate_with_cores(1).unwrap();
    c.metrics.listen = "[::1]:9464".into();
    c.validate_with_cores(1).unwrap();
}

#[test]
fn load_reports_every_problem_of_a_file() {
    let dir = std::env::temp_dir().join(format!("reflexd-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        MINIMAL.replace("5.0", "-1.0").replace("{device}", "x"),
    )
    .unwrap();
    let err = load(&path).unwrap_err();
    match &err {
        ConfigError::Invalid(errors) => assert_eq!(
            fields(errors),
            ["routes[0].deadline_ms", "routes[0].command_topic"]
        ),
        other => panic!("{other:?}"),
    }
    let missing = load(dir.join("missing.toml")).unwrap_err();
    assert!(matches!(missing, ConfigError::Read { .. }), "{missing}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_files_reports_unreadable_manifests() {
    let dir = std::env::temp_dir().join(format!("reflexd-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("edge.manifest.json");
    std::fs::write(&manifest, "{}").unwrap();
    let mut c = minimal();
    let m = c.models.get_mut("edge").unwrap();
    m.manifest = manifest;
    m.fallback_manifest = Some(dir.join("nope.json"));
    let problems = c.check_files();
    assert_eq!(fields(&problems), ["models.edge.fallback_manifest"]);
    assert!(problems[0].reason.starts_with("cannot open"));
    c.models.get_mut("edge").unwrap().fallback_manifest = Some(dir.clone());
    assert_eq!(c.check_files()[0].reason, "not a regular file");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `minimal()` with a journal and an upload section (files not checked by `validate`).
fn with_upload(extra: &str) -> Config {
    let text = format!(
        "{MINIMAL}\n[journal]\ndir = \"/tmp/j\"\n\n[upload]\nurl = \"https://ingest.example\"\n\
         token_file = \"/nonexistent/token\"\n{extra}\n"
    );
    parse(&text).unwrap()
}

#[test]
fn parse_upload_window_reads_utc_hh_mm_ranges_and_refuses_anything_else() {
    assert_eq!(parse_upload_window("01:00-02:30"), Some((60, 150)));
    assert_eq!(parse_upload_window("22:00-06:00"), Some((1320, 360)));
    assert_eq!(parse_upload_window("00:00-23:59"), Some((0, 1439)));
    assert_eq!(parse_upload_window(" 7:05 - 8:00 "), Some((425, 480)));
    for bad in [
        "",
        "01:00",
        "01:00-",
        "24:00-01:00",
        "01:00-01:60",
        "0100-0200",
        "1h-2h",
        "01:00-02:00-03:00",
        "-01:00-02:00",
        "01:00–02:00", // an en dash
    ] {
        assert_eq!(parse_upload_window(bad), None, "{bad:?}");
    }
}

#[test]
fn a_bad_upload_window_is_reported_with_its_field_and_value() {
    with_upload("window = \"23:00-06:00\"")
        .validate_with_cores(2)
        .unwrap();
    let errors = invalid(&with_upload("window = \"25:00-06:00\""));
    assert_eq!(fields(&errors), ["upload.window"]);
    assert!(errors[0].value.contains("25:00-06:00"), "{:?}", errors[0]);
    let text = errors[0].to_string();
    assert!(
        text.contains("upload.window") && text.contains("25:00-06:00"),
        "{text}"
    );
}

#[test]
fn an_upload_ca_file_must_be_readable_and_hold_a_certificate() {
    let dir = std::env::temp_dir().join(format!("reflexd-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let certs = reflex_tests::make_test_certs(&dir);
    let check = |ca: Option<&Path>| {
        let mut c = with_upload("");
        let u = c.upload.as_mut().unwrap();
        u.token_file = token.clone();
        u.ca_file = ca.map(Path::to_path_buf);
        c.check_files()
            .into_iter()
            .filter(|e| e.field.starts_with("upload."))
            .collect::<Vec<_>>()
    };
    assert!(check(None).is_empty(), "default: webpki roots only");
    assert!(check(Some(&certs.ca_file)).is_empty());
    for (path, why) in [
        (dir.join("missing.pem"), "cannot read"),
        (empty.clone(), "no PEM certificate"),
        (certs.key_file.clone(), "no PEM certificate"),
    ] {
        let problems = check(Some(&path));
        assert_eq!(fields(&problems), ["upload.ca_file"], "{path:?}");
        assert!(problems[0].reason.contains(why), "{:?}", problems[0]);
        assert!(
            problems[0].value.contains(&path.display().to_string()),
            "{:?}",
            problems[0]
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_journal_segment_size_must_be_a_power_of_two_in_range() {
    let journal = |extra: &str| {
        parse(&format!(
            "{MINIMAL}\n[journal]\ndir = \"/tmp/j\"\n{extra}\n"
        ))
        .unwrap()
    };
    for good in [
        "",
        "segment_kib = 16",
        "segment_kib = 128",
        "segment_kib = 16384",
    ] {
        journal(good).validate_with_cores(2).unwrap();
    }
    assert_eq!(journal("").journal.unwrap().segment_kib, 512);
    for bad in ["100", "8", "32768", "0"] {
        let errors = invalid(&journal(&format!("segment_kib = {bad}")));
        assert_eq!(fields(&errors), ["journal.segment_kib"], "{bad}");
        assert_eq!(errors[0].value, bad);
    }
}
