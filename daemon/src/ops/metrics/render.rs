//! The text exposition of [`Metrics`]: one small function per group of families, in
//! a fixed order (the order scrapers and tests see), starting with `reflexd_build_info`.

use std::fmt::Write as _;

use super::exposition::{header, single, Escaped, Seconds};
use super::histogram::{BUCKETS_NS, N_BUCKETS};
use super::{cause_index, AssemblyEvent, SparkplugEvent, BAD_INPUT_REASONS};
use super::{get, source_index, source_str, Metrics, RouteCounters, Stage, SOURCES};
use crate::ops::metrics::MissCause;

/// `reflexd_build_info`'s labels: the crate version, and what `build.rs` found (the git
/// commit or `unknown`, the target triple, the cargo profile).
pub const BUILD_INFO: [(&str, &str); 4] = [
    ("version", env!("CARGO_PKG_VERSION")),
    ("git_commit", env!("REFLEXD_GIT_COMMIT")),
    ("target", env!("REFLEXD_TARGET")),
    ("profile", env!("REFLEXD_PROFILE")),
];

/// The build, as an info gauge (always 1) that dashboards join on or show as text.
fn render_build_info(out: &mut String) -> std::fmt::Result {
    header(
        out,
        "reflexd_build_info",
        "The running build: version, git commit, target triple and cargo profile (value is always 1).",
        "gauge",
    )?;
    out.push_str("reflexd_build_info{");
    for (i, (label, value)) in BUILD_INFO.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        write!(out, "{sep}{label}=\"{}\"", Escaped(value))?;
    }
    out.push_str("} 1\n");
    Ok(())
}

impl Metrics {
    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ = self.render_into(&mut out);
        out
    }

    fn render_into(&self, out: &mut String) -> std::fmt::Result {
        render_build_info(out)?;
        self.render_events(out)?;
        self.render_latency(out)?;
        self.render_engine(out)?;
        self.render_models(out)?;
        self.render_mqtt(out)?;
        self.render_readiness(out)?;
        self.render_journal(out)?;
        self.render_journal_outcomes(out)?;
        self.render_upload(out)?;
        if let Some(extra) = self.extra.get() {
            extra.render_prometheus(out);
        }
        Ok(())
    }

    /// A counter family with one series per route.
    fn per_route_counter(
        &self,
        out: &mut String,
        name: &str,
        help: &str,
        value: impl Fn(&RouteCounters) -> u64,
    ) -> std::fmt::Result {
        header(out, name, help, "counter")?;
        for (route, r) in self.named_routes() {
            writeln!(out, "{name}{{route=\"{}\"}} {}", Escaped(route), value(r))?;
        }
        Ok(())
    }

    /// Events received, bad input, decisions, misses, late answers, duplicates, reordering.
    fn render_events(&self, out: &mut String) -> std::fmt::Result {
        self.per_route_counter(
            out,
            "reflexd_events_received_total",
            "Sensor events received, by route.",
            |r| get(&r.received),
        )?;

        header(
            out,
            "reflexd_bad_input_total",
            "Messages rejected before scheduling, by reason.",
            "counter",
        )?;
        for (reason, c) in BAD_INPUT_REASONS.iter().zip(&self.bad_input) {
            writeln!(
                out,
                "reflexd_bad_input_total{{reason=\"{reason}\"}} {}",
                get(c)
            )?;
        }

        header(
            out,
            "reflexd_decisions_total",
            "Events answered, by route and by who decided (model, fallback or rule).",
            "counter",
        )?;
        for (route, r) in self.named_routes() {
            for source in SOURCES {
                writeln!(
                    out,
                    "reflexd_decisions_total{{route=\"{}\",source=\"{}\"}} {}",
                    Escaped(route),
                    source_str(source),
                    get(&r.decided[source_index(source)])
                )?;
            }
        }

        header(
            out,
            "reflexd_deadline_misses_total",
            "Events the model could not answer by their deadline, by route and cause.",
            "counter",
        )?;
        for (route, r) in self.named_routes() {
            for cause in MissCause::ALL {
                writeln!(
                    out,
                    "reflexd_deadline_misses_total{{route=\"{}\",cause=\"{}\"}} {}",
                    Escaped(route),
                    cause.as_str(),
                    get(&r.misses[cause_index(cause)])
                )?;
            }
        }

        self.per_route_counter(
            out,
            "reflexd_late_model_answers_total",
            "Model answers that arrived after the fallback had been sent.",
            |r| get(&r.late_model_answers),
        )?;
        self.per_route_counter(
            out,
            "reflexd_duplicate_events_total",
            "Duplicate events dropped, by route.",
            |r| get(&r.duplicates),
        )?;
        self.per_route_counter(
            out,
            "reflexd_out_of_order_events_total",
            "Events that arrived out of sequence order, by route.",
            |r| get(&r.out_of_order),
        )?;
        for (event, name, help) in [
            (
                AssemblyEvent::Eviction,
                "reflexd_assembly_evictions_total",
                "Devices whose window buffer was evicted to stay within assemble.max_devices, by route.",
            ),
            (
                AssemblyEvent::GapReset,
                "reflexd_assembly_gap_resets_total",
                "Window buffers started again after a gap longer than assemble.max_gap_ms, by route.",
            ),
            (
                AssemblyEvent::Stale,
                "reflexd_assembly_stale_windows_total",
                "Assembled windows not scored because older than assemble.max_age_ms, by route.",
            ),
            (
                AssemblyEvent::DuplicateReading,
                "reflexd_assembly_duplicate_readings_total",
                "Readings dropped by window assembly as redeliveries (sequence not above the last), by route.",
            ),
        ] {
            self.per_route_counter(out, name, help, |r| get(&r.assembly[event as usize]))?;
        }
        for (event, name, help) in [
            (
                SparkplugEvent::Birth,
                "reflexd_sparkplug_births_total",
                "Sparkplug B births (NBIRTH, DBIRTH) recorded, by route.",
            ),
            (
                SparkplugEvent::Death,
                "reflexd_sparkplug_deaths_total",
                "Sparkplug B deaths (NDEATH, DDEATH) that forgot a node or device, by route.",
            ),
            (
                SparkplugEvent::Command,
                "reflexd_sparkplug_commands_total",
                "Sparkplug B commands (NCMD, DCMD) seen on a route's filter and not read, by route.",
            ),
            (
                SparkplugEvent::AliasEviction,
                "reflexd_sparkplug_alias_evictions_total",
                "Sparkplug B devices whose aliases were evicted to stay within devices.max_tracked, by route.",
            ),
        ] {
            self.per_route_counter(out, name, help, |r| get(&r.sparkplug[event as usize]))?;
        }

        Ok(())
    }

    /// The per-stage latency histograms.
    fn render_latency(&self, out: &mut String) -> std::fmt::Result {
        header(
            out,
            "reflexd_stage_latency_seconds",
            "Latency per pipeline stage: decode, queue, infer, publish, end_to_end; ack: received to PUBACK when it waits for the journal.",
            "histogram",
        )?;
        for stage in Stage::ALL {
            let h = &self.stages[stage.index()];
            let counts: [u64; N_BUCKETS] = std::array::from_fn(|i| get(&h.buckets[i]));
            let name = stage.as_str();
            let mut cumulative = 0u64;
            for (&le_ns, n) in BUCKETS_NS.iter().zip(counts) {
                cumulative += n;
                let le = Seconds(le_ns);
                writeln!(
                    out,
                    "reflexd_stage_latency_seconds_bucket{{stage=\"{name}\",le=\"{le}\"}} {cumulative}"
                )?;
            }
            cumulative += counts[N_BUCKETS - 1];
            writeln!(
                out,
                "reflexd_stage_latency_seconds_bucket{{stage=\"{name}\",le=\"+Inf\"}} {cumulative}"
            )?;
            writeln!(
                out,
                "reflexd_stage_latency_seconds_sum{{stage=\"{name}\"}} {}",
                Seconds(get(&h.sum_ns))
            )?;
            writeln!(
                out,
                "reflexd_stage_latency_seconds_count{{stage=\"{name}\"}} {cumulative}"
            )?;
        }

        Ok(())
    }

    /// Queue depth, the timer's fallback cost, model runs, resent commands, RT threads.
    fn render_engine(&self, out: &mut String) -> std::fmt::Result {
        header(
            out,
            "reflexd_queue_depth",
            "Events waiting in the scheduler queue.",
            "gauge",
        )?;
        writeln!(out, "reflexd_queue_depth {}", get(&self.queue_depth))?;

        header(
            out,
            "reflexd_fallback_answer_cost_seconds",
            "The deadline timer's running estimate of one fallback answer (0 until it answered one); it starts that much earlier per pending event, so that a burst due together is answered whole by its deadline.",
            "gauge",
        )?;
        writeln!(
            out,
            "reflexd_fallback_answer_cost_seconds {}",
            Seconds(get(&self.fallback_cost_ns))
        )?;

        single(
            out,
            "reflexd_model_runs_total",
            "Model runs by the workers (one run answers a batch of queued events).",
            "counter",
            get(&self.model_runs),
        )?;
        single(
            out,
            "reflexd_model_run_windows_total",
            "Events run through the model; divided by reflexd_model_runs_total, the mean batch.",
            "counter",
            get(&self.model_windows),
        )?;

        header(
            out,
            "reflexd_commands_resent_total",
            "Journaled commands sent again for events the broker redelivered after a restart.",
            "counter",
        )?;
        writeln!(
            out,
            "reflexd_commands_resent_total {}",
            get(&self.commands_resent)
        )?;
        single(
            out,
            "reflexd_acks_dropped_session_lost_total",
            "Held PUBACKs not sent because the broker kept no session across a reconnect (the broker redelivers nothing of a lost session; a packet id of the old one could ack another message).",
            "counter",
            get(&self.acks_dropped_session_lost),
        )?;

        header(
            out,
            "reflexd_realtime_threads",
            "Engine threads (workers, deadline timer) that got SCHED_FIFO.",
            "gauge",
        )?;
        writeln!(
            out,
            "reflexd_realtime_threads {}",
            get(&self.realtime_threads)
        )?;
        single(
            out,
            "reflexd_priority_inheriting_locks",
            "1 when the locks the engine's real-time threads share with the intake thread inherit priorities (PI futexes); 0 on a kernel without them.",
            "gauge",
            get(&self.priority_inheriting_locks),
        )?;

        Ok(())
    }

    /// Which model serves each route, its calibrated p99.9 and reloads.
    fn render_models(&self, out: &mut String) -> std::fmt::Result {
        header(
            out,
            "reflexd_model_info",
            "The model serving each route (value is always 1).",
            "gauge",
        )?;
        {
            let models = self.models.lock().unwrap_or_else(|e| e.into_inner());
            for (route, model) in self.routes.iter().zip(models.iter()) {
                if let (Some(route), Some(m)) = (route.get(), model) {
                    writeln!(
                        out,
                        "reflexd_model_info{{route=\"{}\",model=\"{}\",version=\"{}\"}} 1",
                        Escaped(route),
                        Escaped(&m.name),
                        Escaped(&m.version)
                    )?;
                }
            }
        }

        header(
            out,
            "reflexd_model_latency_p999_seconds",
            "Calibrated p99.9 inference time of each route's model.",
            "gauge",
        )?;
        for (route, r) in self.named_routes() {
            writeln!(
                out,
                "reflexd_model_latency_p999_seconds{{route=\"{}\"}} {}",
                Escaped(route),
                Seconds(get(&r.model_p999_ns))
            )?;
        }

        header(
            out,
            "reflexd_route_budget_seconds",
            "Each configured route's per-event budget (deadline_ms), as running now.",
            "gauge",
        )?;
        for (route, r) in self.named_routes().filter(|(_, r)| get(&r.budget_ns) > 0) {
            writeln!(
                out,
                "reflexd_route_budget_seconds{{route=\"{}\"}} {}",
                Escaped(route),
                Seconds(get(&r.budget_ns))
            )?;
        }
        header(
            out,
            "reflexd_safety_margin_seconds",
            "The scheduler's safety margin before each deadline, as running now.",
            "gauge",
        )?;
        writeln!(
            out,
            "reflexd_safety_margin_seconds {}",
            Seconds(get(&self.safety_margin_ns))
        )?;

        header(
            out,
            "reflexd_model_reloads_total",
            "Model reload attempts, by result.",
            "counter",
        )?;
        writeln!(
            out,
            "reflexd_model_reloads_total{{result=\"ok\"}} {}",
            get(&self.reloads_ok)
        )?;
        writeln!(
            out,
            "reflexd_model_reloads_total{{result=\"error\"}} {}",
            get(&self.reloads_failed)
        )?;

        header(
            out,
            "reflexd_config_reloads_total",
            "Configuration reloads (SIGHUP), by result: applied, or refused and the old one kept.",
            "counter",
        )?;
        writeln!(
            out,
            "reflexd_config_reloads_total{{result=\"applied\"}} {}",
            get(&self.config_reloads_applied)
        )?;
        writeln!(
            out,
            "reflexd_config_reloads_total{{result=\"refused\"}} {}",
            get(&self.config_reloads_refused)
        )?;

        header(
            out,
            "reflexd_model_verification_failures_total",
            "Models taken out of service because their background verification failed.",
            "counter",
        )?;
        for (model, n) in self.verification_failures.get().into_iter().flatten() {
            writeln!(
                out,
                "reflexd_model_verification_failures_total{{model=\"{}\"}} {}",
                Escaped(model),
                get(n)
            )?;
        }

        Ok(())
    }

    /// MQTT reconnections and published commands.
    fn render_mqtt(&self, out: &mut String) -> std::fmt::Result {
        header(
            out,
            "reflexd_mqtt_reconnects_total",
            "MQTT reconnections.",
            "counter",
        )?;
        writeln!(
            out,
            "reflexd_mqtt_reconnects_total {}",
            get(&self.mqtt_reconnects)
        )?;

        header(
            out,
            "reflexd_commands_published_total",
            "Actuator commands published.",
            "counter",
        )?;
        writeln!(
            out,
            "reflexd_commands_published_total {}",
            get(&self.published)
        )?;
        Ok(())
    }

    /// Readiness and the MQTT link, once attached.
    fn render_readiness(&self, out: &mut String) -> std::fmt::Result {
        if let Some(r) = self.readiness.get() {
            single(
                out,
                "reflexd_ready",
                "1 while reflexd is ready (what GET /readyz answers 200 to), else 0.",
                "gauge",
                u64::from(r.check().is_ok()),
            )?;
            single(
                out,
                "reflexd_mqtt_connected",
                "1 while connected to the broker, else 0.",
                "gauge",
                u64::from(r.link().is_connected()),
            )?;
            single(
                out,
                "reflexd_mqtt_subscribed",
                "1 while every route's subscription is acknowledged with success, else 0.",
                "gauge",
                u64::from(r.link().is_subscribed()),
            )?;
        }
        Ok(())
    }

    /// The journal's own counters, once attached.
    fn render_journal(&self, out: &mut String) -> std::fmt::Result {
        if let Some(j) = self.journal.get() {
            single(
                out,
                "reflexd_journal_appended_total",
                "Records appended to the journal.",
                "counter",
                get(&j.appended),
            )?;
            single(
                out,
                "reflexd_journal_durable_through",
                "Highest journal sequence made durable.",
                "gauge",
                get(&j.durable_through),
            )?;
            single(
                out,
                "reflexd_journal_syncs_total",
                "Group commits.",
                "counter",
                get(&j.syncs),
            )?;
            header(
                out,
                "reflexd_journal_sync_seconds_total",
                "Time spent in group commits.",
                "counter",
            )?;
            writeln!(
                out,
                "reflexd_journal_sync_seconds_total {}",
                Seconds(get(&j.sync_us) * 1000)
            )?;
            single(
                out,
                "reflexd_journal_dropped_records_total",
                "Records not yet uploaded (their events acked) deleted by the quota under when_full = drop-oldest: lost to the cloud.",
                "counter",
                get(&j.dropped_records),
            )?;
            single(
                out,
                "reflexd_journal_dropped_uploaded_total",
                "Records already uploaded (kept by keep_uploaded) deleted by the quota; these go before any record not yet uploaded.",
                "counter",
                get(&j.dropped_uploaded),
            )?;
            single(
                out,
                "reflexd_journal_live_bytes",
                "Bytes of records kept.",
                "gauge",
                get(&j.live_bytes),
            )?;
            single(
                out,
                "reflexd_journal_files_bytes",
                "Size of the journal's files.",
                "gauge",
                get(&j.files_bytes),
            )?;
            single(
                out,
                "reflexd_journal_fs_free_bytes",
                "Free bytes on the journal's filesystem.",
                "gauge",
                get(&j.fs_free_bytes),
            )?;
            single(
                out,
                "reflexd_journal_errors_total",
                "Failed appends or group commits.",
                "counter",
                get(&j.errors),
            )?;
            single(
                out,
                "reflexd_journal_reopens_total",
                "Journal reopens after an i/o error (e.g. a full disk) or a start without space.",
                "counter",
                get(&j.reopens),
            )?;
            single(
                out,
                "reflexd_journal_reopen_failures_total",
                "Journal reopen attempts that failed (retried with backoff).",
                "counter",
                get(&j.reopen_failures),
            )?;
            single(
                out,
                "reflexd_journal_windows_dropped_total",
                "Monitoring windows deleted unsent because too many waited for an upload.",
                "counter",
                get(&j.windows_dropped),
            )?;
            single(
                out,
                "reflexd_journal_dead_lettered_total",
                "Records the cloud refused one by one, filed in the journal's dead-letter range.",
                "counter",
                get(&j.dead_lettered),
            )?;
            single(
                out,
                "reflexd_journal_dead_letter_full_total",
                "Upload acks not recorded because the dead-letter range was at its bound (the batch is kept and retried; uploading stops until the range is cleared).",
                "counter",
                get(&j.dead_letter_full),
            )?;
            let counts = j
                .dead_letter_by_reason
                .lock()
                .expect("dead letter counts lock")
                .clone()
                .unwrap_or_default();
            header(
                out,
                "reflexd_journal_dead_letter_records",
                "Records kept in the journal's dead-letter range, by the cloud's refusal reason.",
                "gauge",
            )?;
            for reason in reflex_records::RefusalReason::ALL {
                writeln!(
                    out,
                    "reflexd_journal_dead_letter_records{{reason=\"{}\"}} {}",
                    reason.as_str(),
                    counts.get(reason.as_str()).copied().unwrap_or(0)
                )?;
            }
        }
        Ok(())
    }

    /// Appends refused or failed and journals moved aside: the daemon's own journal outcomes.
    fn render_journal_outcomes(&self, out: &mut String) -> std::fmt::Result {
        single(
            out,
            "reflexd_journal_refused_total",
            "Records refused under backpressure (their events stay unacked).",
            "counter",
            get(&self.journal_refused),
        )?;
        single(
            out,
            "reflexd_journal_append_failures_total",
            "Records that failed to append (their events stay unacked).",
            "counter",
            get(&self.journal_failed),
        )?;
        single(
            out,
            "reflexd_journal_moved_aside_total",
            "Journals that could not be opened and were moved aside.",
            "counter",
            get(&self.journal_moved_aside),
        )?;
        single(
            out,
            "reflexd_journal_salvaged_records_total",
            "Records salvaged from journals moved aside into the live journal (re-appended, or in a salvaged in-flight batch sent under its own id).",
            "counter",
            get(&self.journal_salvaged_records),
        )?;
        single(
            out,
            "reflexd_journal_salvage_failures_total",
            "Salvage attempts of journals moved aside that failed (left as <dir>.corrupt-*: unreadable, or no room yet; tried again at the next start).",
            "counter",
            get(&self.journal_salvage_failures),
        )?;
        single(
            out,
            "reflexd_journal_records_without_features_total",
            "Records journaled with no features because they could not be computed (the cloud refuses them one by one; they stay in the dead-letter range).",
            "counter",
            get(&self.journal_without_features),
        )?;
        Ok(())
    }

    /// The uploader's counters, once attached.
    fn render_upload(&self, out: &mut String) -> std::fmt::Result {
        if let Some(u) = self.upload.get() {
            single(
                out,
                "reflexd_upload_batches_total",
                "Batches acknowledged by the cloud.",
                "counter",
                get(&u.batches_acked),
            )?;
            single(
                out,
                "reflexd_upload_windows_total",
                "Monitoring windows (sketches) acknowledged by the cloud with the batches.",
                "counter",
                get(&u.windows_uploaded),
            )?;
            single(
                out,
                "reflexd_upload_duplicate_batches_total",
                "Batches the cloud already had.",
                "counter",
                get(&u.batches_duplicate),
            )?;
            single(
                out,
                "reflexd_upload_salvaged_batches_total",
                "Batches acknowledged that were in flight in a journal moved aside (sent under their own id).",
                "counter",
                get(&u.salvaged_batches_acked),
            )?;
            single(
                out,
                "reflexd_upload_records_total",
                "Records acknowledged by the cloud.",
                "counter",
                get(&u.records_uploaded),
            )?;
            single(
                out,
                "reflexd_upload_bytes_total",
                "Compressed bytes acknowledged.",
                "counter",
                get(&u.bytes_uploaded),
            )?;
            single(
                out,
                "reflexd_upload_failures_total",
                "Failed upload attempts.",
                "counter",
                get(&u.failures),
            )?;
            single(
                out,
                "reflexd_upload_rejected_total",
                "Batches the cloud answered 400, unreadable as a whole (kept, nothing deleted, retried with backoff).",
                "counter",
                get(&u.rejected),
            )?;
            single(
                out,
                "reflexd_upload_records_refused_total",
                "Records the cloud refused one by one (kept in the journal's dead-letter range).",
                "counter",
                get(&u.records_refused),
            )?;
            single(
                out,
                "reflexd_upload_unauthorized_total",
                "Uploads refused for the token.",
                "counter",
                get(&u.unauthorized),
            )?;
            single(
                out,
                "reflexd_upload_backlog_records",
                "Records not yet acknowledged.",
                "gauge",
                get(&u.backlog_records),
            )?;
            single(
                out,
                "reflexd_upload_last_ack_unix_seconds",
                "Time of the last acknowledged batch.",
                "gauge",
                get(&u.last_ack_unix_s),
            )?;
            single(
                out,
                "reflexd_upload_window_closed",
                "1 while the upload window ([upload] window) is closed and nothing is sent.",
                "gauge",
                get(&u.window_closed),
            )?;
        }
        Ok(())
    }
}
