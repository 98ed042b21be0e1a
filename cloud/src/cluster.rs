//! Rescoring on an Apache Ballista cluster (cargo feature `ballista`).
//!
//! * **Client** ([`collect`]): `rescore --engine ballista` plans the job exactly as the
//!   embedded engine does (the snapshot's file groups, the filter, the `cloud_score`
//!   projection, the counts) and submits the **physical** plan to the scheduler
//!   (`execute_physical_plan`): no logical plan crosses the wire, so the snapshot table
//!   needs no codec; its scan is a plain Parquet `DataSourceExec` over the manifest's files,
//!   which datafusion-proto serializes with their partition value (`file_index`). The
//!   output comes back as one stream, the final stage's partitions in order; the client
//!   then feeds the sketches and writes the rescored files in file order as the embedded
//!   path does, so the report is the same.
//! * **Codec** ([`CloudCodec`]): Ballista's physical codec plus `cloud_score`, encoded as its
//!   batch size and the run's model hashes (JSON). On an executor it decodes to the
//!   executor's own model file (`ballista.executor.model_manifest`), which must have those
//!   hashes or every task fails with the mismatch; elsewhere (the scheduler) to the
//!   client's path, only to be encoded again.
//! * **Scheduler** ([`Scheduler::start`]): Ballista's scheduler with in-memory state, pull
//!   scheduling (executors poll for tasks: the scheduler dials nobody), this codec, and an
//!   empty store as `reflex://store` (decoding a scan looks the store up; the scheduler
//!   reads no file, so it needs no credentials).
//! * **Executor** ([`Executor::start`]): a Ballista executor polling the scheduler, with the
//!   storage's object store registered as `reflex://store` in every task's runtime, and
//!   Arrow Flight on its own listener (port 0 allowed: the bound port is what it
//!   registers).
//!
//! Ballista's gRPC and Flight are plain text and unauthenticated here; `cloud/README.md`
//! says what to put in front of them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use ballista_core::config::BallistaConfig;
use ballista_core::extension::SessionConfigExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::protobuf::ExecutorRegistration;
use ballista_core::serde::scheduler::{
    ExecutorOperatingSystemSpecification, ExecutorSpecification,
};
use ballista_core::serde::{
    BallistaCodec, BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec,
};
use ballista_core::utils::{
    create_grpc_client_endpoint, create_grpc_server, default_config_producer,
    default_session_builder, GrpcServerConfig,
};
use ballista_core::{ConfigProducer, RuntimeProducer, BALLISTA_PROTOCOL_VERSION};
use ballista_executor::executor::Executor as BallistaExecutor;
use ballista_executor::flight_service::BallistaFlightService;
use ballista_executor::metrics::LoggingMetricsCollector;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service_with_listener};
use datafusion::arrow::array::RecordBatch;
use datafusion::common::DataFusionError;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::ScalarUDF;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{scheduler_host_port, ExecutorSection, SchedulerSection};
use crate::rescore::engine::{CloudScore, ModelDigest, STORE_URL};
use crate::rescore::RescoreError;
use crate::storage::Storage;

/// Why a cluster process could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// The scheduler could not be reached.
    #[error("scheduler {url} unreachable: {reason}")]
    Scheduler {
        /// Its URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// Ballista refused to start.
    #[error("ballista: {0}")]
    Ballista(String),
}

/// What `cloud_score` is encoded as on the wire.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoreSpec {
    /// The client's manifest path (kept by the scheduler; replaced on executors).
    manifest_path: PathBuf,
    batch_size: usize,
    digest: Option<ModelDigest>,
}

/// Ballista's physical codec plus `cloud_score` (module doc).
#[derive(Debug, Default)]
pub struct CloudCodec {
    inner: BallistaPhysicalExtensionCodec,
    /// On an executor: its model file, used in place of the client's path.
    local_model: Option<PathBuf>,
}

impl CloudCodec {
    /// The codec of an executor whose model is at `manifest_path`.
    pub fn with_local_model(manifest_path: PathBuf) -> CloudCodec {
        CloudCodec {
            inner: BallistaPhysicalExtensionCodec::default(),
            local_model: Some(manifest_path),
        }
    }
}

impl PhysicalExtensionCodec for CloudCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        self.inner.try_decode(buf, inputs, ctx, proto_converter)
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> datafusion::common::Result<()> {
        self.inner.try_encode(node, buf, proto_converter)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> datafusion::common::Result<Arc<ScalarUDF>> {
        if name != CloudScore::NAME {
            return self.inner.try_decode_udf(name, buf);
        }
        let spec: ScoreSpec = serde_json::from_slice(buf).map_err(|e| {
            DataFusionError::Plan(format!("cloud_score: undecodable definition: {e}"))
        })?;
        let path = self.local_model.clone().unwrap_or(spec.manifest_path);
        let mut udf = CloudScore::new(path, spec.batch_size);
        if let Some(d) = spec.digest {
            udf = udf.expecting(d);
        }
        Ok(Arc::new(ScalarUDF::from(udf)))
    }

    fn try_encode_udf(
        &self,
        node: &ScalarUDF,
        buf: &mut Vec<u8>,
    ) -> datafusion::common::Result<()> {
        let Some(score) = node.inner().downcast_ref::<CloudScore>() else {
            return self.inner.try_encode_udf(node, buf);
        };
        let spec = ScoreSpec {
            manifest_path: score.manifest_path().to_owned(),
            batch_size: score.batch_size(),
            digest: score.digest().cloned(),
        };
        serde_json::to_writer(buf, &spec)
            .map_err(|e| DataFusionError::Internal(format!("cloud_score: {e}")))
    }
}

fn codec(physical: CloudCodec) -> BallistaCodec<LogicalPlanNode, PhysicalPlanNode> {
    BallistaCodec::new(
        Arc::new(BallistaLogicalExtensionCodec::default()),
        Arc::new(physical),
    )
}

/// Runs `plan` on the cluster behind `scheduler` (`http://host:port`) and returns its
/// output, the final stage's partitions in order.
pub async fn collect(
    scheduler: &str,
    plan: Arc<dyn ExecutionPlan>,
) -> Result<Vec<RecordBatch>, RescoreError> {
    scheduler_host_port(scheduler).map_err(|m| RescoreError::Engine(format!("scheduler: {m}")))?;
    let session = SessionConfig::new_with_ballista().with_target_partitions(1);
    let stream = ballista_core::execution_plans::execute_physical_plan::<PhysicalPlanNode>(
        scheduler.to_owned(),
        &BallistaConfig::default(),
        plan,
        &CloudCodec::default(),
        format!("reflex-cloud-{}", std::process::id()),
        session,
    )
    .await
    .map_err(|e| RescoreError::Engine(format!("ballista scheduler {scheduler}: {e}")))?;
    stream
        .try_collect()
        .await
        .map_err(|e| RescoreError::Engine(format!("ballista job on {scheduler}: {e}")))
}

async fn bind(listen: &str) -> Result<(TcpListener, SocketAddr), ClusterError> {
    let bind_err = |source| ClusterError::Bind {
        addr: listen.to_owned(),
        source,
    };
    let listener = TcpListener::bind(listen).await.map_err(bind_err)?;
    let addr = listener.local_addr().map_err(bind_err)?;
    Ok((listener, addr))
}

/// A running scheduler.
pub struct Scheduler {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Scheduler {
    /// Binds `cfg.listen` and serves Ballista's scheduler gRPC until `shutdown`.
    pub async fn start(
        cfg: &SchedulerSection,
        shutdown: CancellationToken,
    ) -> Result<Scheduler, ClusterError> {
        let (listener, addr) = bind(&cfg.listen).await?;
        let config = SchedulerConfig {
            bind_host: addr.ip().to_string(),
            bind_port: addr.port(),
            external_host: addr.ip().to_string(),
            scheduling_policy: ballista_core::config::TaskSchedulingPolicy::PullStaged,
            override_physical_codec: Some(Arc::new(CloudCodec::default())),
            ..SchedulerConfig::default()
        };
        // Decoding a plan's Parquet scan looks its object store up, but the scheduler never
        // reads a file: an empty in-memory store stands in for `reflex://store`, so the
        // scheduler needs no credentials (and a read there would fail, not succeed silently).
        let url = url_of_store()?;
        let session_builder: ballista_scheduler::SessionBuilder =
            Arc::new(move |config: SessionConfig| {
                let state = default_session_builder(config)?;
                state
                    .runtime_env()
                    .register_object_store(&url, Arc::new(object_store::memory::InMemory::new()));
                Ok(state)
            });
        let cluster = BallistaCluster::new_memory(
            addr.to_string(),
            session_builder,
            Arc::new(default_config_producer),
        );
        let server =
            create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, Arc::new(config))
                .await
                .map_err(|e| ClusterError::Ballista(e.to_string()))?;
        let task = tokio::spawn(async move {
            tokio::select! {
                r = start_grpc_service_with_listener(listener, server) => {
                    if let Err(e) = r {
                        tracing::error!(error = %e, "scheduler gRPC service stopped");
                    }
                }
                () = shutdown.cancelled() => {}
            }
        });
        tracing::info!(%addr, "ballista scheduler listening");
        Ok(Scheduler { addr, task })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits for the service to stop (after `shutdown`).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// A running executor.
pub struct Executor {
    addr: SocketAddr,
    task: JoinHandle<()>,
    /// The default work directory, removed when the executor is dropped.
    _temp: Option<tempfile::TempDir>,
}

impl Executor {
    /// Binds `cfg.listen` (Arrow Flight), connects to the scheduler and polls it for tasks
    /// until `shutdown`. Every task reads the snapshot from `storage` and scores with the
    /// model at `cfg.model_manifest`.
    pub async fn start(
        cfg: &ExecutorSection,
        storage: Storage,
        shutdown: CancellationToken,
    ) -> Result<Executor, ClusterError> {
        let (listener, addr) = bind(&cfg.listen).await?;
        let host = cfg
            .advertise_host
            .clone()
            .unwrap_or_else(|| addr.ip().to_string());
        let (temp, work_dir) = match &cfg.work_dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(|source| ClusterError::Bind {
                    addr: d.display().to_string(),
                    source,
                })?;
                (None, d.display().to_string())
            }
            None => {
                let t = tempfile::tempdir().map_err(|source| ClusterError::Bind {
                    addr: "a temporary work directory".into(),
                    source,
                })?;
                let d = t.path().display().to_string();
                (Some(t), d)
            }
        };
        let vcores = if cfg.vcores == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            cfg.vcores
        };
        let channel = create_grpc_client_endpoint(cfg.scheduler.clone(), None)
            .map_err(|e| ClusterError::Scheduler {
                url: cfg.scheduler.clone(),
                reason: e.to_string(),
            })?
            .connect()
            .await
            .map_err(|e| ClusterError::Scheduler {
                url: cfg.scheduler.clone(),
                reason: e.to_string(),
            })?;
        let config_producer: ConfigProducer = Arc::new(default_config_producer);
        let max_message = default_config_producer().ballista_grpc_client_max_message_size();
        let scheduler = SchedulerGrpcClient::new(channel)
            .max_encoding_message_size(max_message)
            .max_decoding_message_size(max_message);
        let store = storage.object_store();
        let url = url_of_store()?;
        let temp_path = work_dir.clone();
        let runtime_producer: RuntimeProducer = Arc::new(move |_: &SessionConfig| {
            let env = RuntimeEnvBuilder::new()
                .with_temp_file_path(temp_path.clone())
                .build()?;
            env.register_object_store(&url, store.clone());
            Ok(Arc::new(env))
        });
        let registration = ExecutorRegistration {
            id: ballista_core::ids::new_instance_id(),
            host: Some(host.clone()),
            port: u32::from(addr.port()),
            // Pull scheduling: the scheduler never dials the executor's gRPC port.
            grpc_port: 0,
            specification: Some(
                ExecutorSpecification::default()
                    .with_vcores(vcores as u32)
                    .into(),
            ),
            os_info: Some(ExecutorOperatingSystemSpecification::default().into()),
            ballista_protocol_version: BALLISTA_PROTOCOL_VERSION,
        };
        let executor = Arc::new(BallistaExecutor::with_default_execution_engine(
            registration,
            &work_dir,
            runtime_producer,
            config_producer,
            Arc::new(BallistaFunctionRegistry::default()),
            Arc::new(LoggingMetricsCollector::default()),
            vcores,
        ));
        let flight = FlightServiceServer::new(BallistaFlightService::new(work_dir))
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        let serve_shutdown = shutdown.clone();
        let flight_task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            if let Err(e) = create_grpc_server(&GrpcServerConfig::default())
                .add_service(flight)
                .serve_with_incoming_shutdown(incoming, serve_shutdown.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "executor flight service stopped");
            }
        });
        let codec = codec(CloudCodec::with_local_model(cfg.model_manifest.clone()));
        let task = tokio::spawn(async move {
            tokio::select! {
                r = ballista_executor::execution_loop::poll_loop(
                    scheduler,
                    executor,
                    codec,
                    None,
                    None,
                    ballista_executor::health::ExecutorHealth::new(),
                ) => {
                    if let Err(e) = r {
                        tracing::error!(error = %e, "executor stopped polling the scheduler");
                    }
                }
                () = shutdown.cancelled() => {}
            }
            flight_task.abort();
        });
        tracing::info!(%addr, %host, vcores, "ballista executor polling the scheduler");
        Ok(Executor {
            addr,
            task,
            _temp: temp,
        })
    }

    /// The bound Flight address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits for the executor to stop (after `shutdown`, or when polling failed).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

fn url_of_store() -> Result<url::Url, ClusterError> {
    url::Url::parse(STORE_URL).map_err(|e| ClusterError::Ballista(format!("{STORE_URL}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> ModelDigest {
        ModelDigest {
            onnx_sha256: "a".repeat(64),
            manifest_sha256: "b".repeat(64),
        }
    }

    #[test]
    fn cloud_score_round_trips_through_the_codec_with_the_executors_model_path() {
        let udf = ScalarUDF::from(CloudScore::new("client/m.json".into(), 48).expecting(digest()));
        let mut buf = Vec::new();
        CloudCodec::default()
            .try_encode_udf(&udf, &mut buf)
            .unwrap();
        assert!(
            !buf.is_empty(),
            "an empty definition would be looked up by name"
        );
        // The scheduler keeps the client's path; an executor uses its own.
        for (codec, path) in [
            (CloudCodec::default(), "client/m.json"),
            (
                CloudCodec::with_local_model("/opt/models/m.json".into()),
                "/opt/models/m.json",
            ),
        ] {
            let back = codec.try_decode_udf(CloudScore::NAME, &buf).unwrap();
            let score = back.inner().downcast_ref::<CloudScore>().unwrap();
            assert_eq!(score.manifest_path(), std::path::Path::new(path));
            assert_eq!(score.batch_size(), 48);
            assert_eq!(score.digest(), Some(&digest()));
        }
    }

    #[test]
    fn an_undecodable_cloud_score_definition_is_a_plan_error_naming_the_function() {
        let e = CloudCodec::default()
            .try_decode_udf(CloudScore::NAME, b"{\"batch_size\": \"x\"}")
            .unwrap_err();
        assert!(e.to_string().contains("cloud_score"), "{e}");
    }
}
