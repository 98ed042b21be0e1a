//! The rescore job's plan, planned and executed by DataFusion (embedded).
//!
//! * **Scan** ([`SnapshotTable`]): a table provider over exactly the run manifest's file list
//!   (path and size from the manifest: no listing at execution time, so a replay reads the
//!   same files), split into `workers` contiguous file groups, the plan's partitions. Each
//!   row carries the index of its file in the snapshot (`file_index`, a partition column).
//! * **Rescore** ([`CloudScore`]): a scalar UDF `cloud_score(model_input, features,
//!   temperature)` that runs the cloud model through tract over each record batch, in
//!   chunks of the planned batch size: the model's declared input (`model_input` of
//!   `Model::input_len` values, its preprocessing applied by `Model`), and, for a model
//!   that reads the temperature, the row's `temperature` feature (the legacy column of an
//!   older file, else the `features` map's entry). It owns its model instances (a pool,
//!   one per partition running at a time): no global state, so the same UDF instance can
//!   be shipped to a distributed executor. Rows whose model input is not one input of the
//!   model, or that lack a temperature the model needs, give NULL (unscorable).
//! * **Compare** ([`tallies`]): `GROUP BY` aggregates over the rescored rows: the comparison
//!   cells (device × edge model × edge class × cloud class × fallback, with event and
//!   deadline-miss counts), events per drift window, unscorable and out-of-range rows.
//! * **Sketch** ([`sketch_files`]): the drift sketches are fed from the rescored record
//!   batches, one [`Partial`] per snapshot file (see `aggregate` for why not a UDAF), each
//!   row's features looked up **by name** in the reference's order
//!   ([`super::by_name::ByName`]); a reference feature a row lacks is counted as missing.
//!
//! The plan runs on its own multi-threaded tokio runtime of `workers` threads (the UDF is
//! CPU-bound; DataFusion polls partitions as tasks), started from a blocking thread.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Float32Array, Float32Builder, Int64Array, ListArray,
    ListBuilder, MapArray, RecordBatch, StringArray, StructArray, UInt32Array, UInt64Array,
    UInt8Array, UInt8Builder,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::cast::{as_float32_array, as_list_array};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemTable;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::datasource::TableType;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::functions::core::expr_fn::get_field;
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::logical_expr::{
    cast, ident, lit, ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::physical_plan::{collect_partitioned, ExecutionPlan};
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use reflex_models::Model;
use tokio_util::sync::CancellationToken;

use super::aggregate::{Cell, Observation, Partial, PlanParams, Tallies};
use super::by_name::ByName;
use super::RescoreError;
use crate::storage::{Listed, Storage};
use crate::table::{self, FeatureColumns, RescoredRow, FEATURES, LEGACY_FEATURE_NAMES};

/// The temperature feature's name (demo features and any model that declares it).
const TEMPERATURE: &str = "temperature";

/// The partition column naming each row's file (its index in the snapshot's file list).
pub const FILE_INDEX: &str = "file_index";
/// The rescored column: `struct<class: u8, logits: list<f32>>`, NULL when unscorable.
pub const CLOUD: &str = "cloud";
/// The URL the job registers the storage's object store under (on Ballista executors too).
pub const STORE_URL: &str = "reflex://store";

fn engine_err(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// The snapshot as a DataFusion table: exactly its files, in `partitions` contiguous groups.
#[derive(Debug)]
pub struct SnapshotTable {
    url: ObjectStoreUrl,
    files: Vec<Listed>,
    partitions: usize,
    schema: SchemaRef,
}

impl SnapshotTable {
    /// The table over `files` (read from the object store registered at `url`).
    pub fn new(url: ObjectStoreUrl, files: Vec<Listed>, partitions: usize) -> SnapshotTable {
        let mut fields: Vec<Arc<Field>> = table::events_read_schema()
            .fields()
            .iter()
            .cloned()
            .collect();
        fields.push(Arc::new(Self::file_index_field()));
        SnapshotTable {
            url,
            files,
            partitions: partitions.max(1),
            schema: Arc::new(Schema::new(fields)),
        }
    }

    fn file_index_field() -> Field {
        Field::new(FILE_INDEX, DataType::UInt32, false)
    }

    /// The file groups: contiguous runs of the file list, sizes differing by at most one.
    pub fn file_groups(&self) -> Vec<FileGroup> {
        let n = self.files.len();
        let parts = self.partitions.min(n).max(1);
        let mut groups = Vec::with_capacity(parts);
        let mut start = 0;
        for g in 0..parts {
            let len = n / parts + usize::from(g < n % parts);
            let files: Vec<PartitionedFile> = (start..start + len)
                .map(|i| {
                    let mut f =
                        PartitionedFile::new(self.files[i].path.clone(), self.files[i].size);
                    f.partition_values = vec![ScalarValue::UInt32(Some(i as u32))];
                    f
                })
                .collect();
            groups.push(FileGroup::new(files));
            start += len;
        }
        groups
    }
}

#[async_trait]
impl TableProvider for SnapshotTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let source = ParquetSource::new(
            TableSchema::builder(table::events_read_schema())
                .with_table_partition_cols(vec![Arc::new(Self::file_index_field())])
                .build(),
        );
        let config = FileScanConfigBuilder::new(self.url.clone(), Arc::new(source))
            .with_file_groups(self.file_groups())
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

/// The identity a run's model must have wherever `cloud_score` loads it: the hashes of its
/// ONNX file and manifest (the run manifest's [`super::ModelRef`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ModelDigest {
    /// SHA-256 of the ONNX file.
    pub onnx_sha256: String,
    /// SHA-256 of the manifest file.
    pub manifest_sha256: String,
}

/// A model file whose hashes are not the run's.
#[derive(Debug, thiserror::Error)]
#[error(
    "model {path}: onnx sha256 {found_onnx}, manifest sha256 {found_manifest}; the job needs \
     onnx {want_onnx}, manifest {want_manifest}"
)]
pub struct ModelMismatch {
    path: PathBuf,
    found_onnx: String,
    found_manifest: String,
    want_onnx: String,
    want_manifest: String,
}

/// `cloud_score(model_input, features, temperature)`: the cloud model through tract
/// (module doc).
pub struct CloudScore {
    manifest_path: PathBuf,
    batch_size: usize,
    /// Checked before the first load: the model at `manifest_path` must have these hashes.
    digest: Option<ModelDigest>,
    signature: Signature,
    /// Idle model instances; an invocation takes one (or loads one) and gives it back.
    pool: Mutex<Vec<Model>>,
}

impl CloudScore {
    /// The UDF's name.
    pub const NAME: &'static str = "cloud_score";

    /// The UDF for the model at `manifest_path`, planned for `batch_size` windows per run.
    pub fn new(manifest_path: PathBuf, batch_size: usize) -> CloudScore {
        CloudScore {
            manifest_path,
            batch_size: batch_size.max(1),
            digest: None,
            signature: Signature::any(3, Volatility::Immutable),
            pool: Mutex::new(Vec::new()),
        }
    }

    /// The same UDF, refusing to score with a model whose hashes are not `digest`.
    pub fn expecting(mut self, digest: ModelDigest) -> CloudScore {
        self.digest = Some(digest);
        self
    }

    /// Where the model is read from.
    pub fn manifest_path(&self) -> &std::path::Path {
        &self.manifest_path
    }

    /// Windows per tract run.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The hashes the model must have, if checked.
    pub fn digest(&self) -> Option<&ModelDigest> {
        self.digest.as_ref()
    }

    /// Checks the model file against the expected hashes.
    fn check_digest(&self) -> datafusion::common::Result<()> {
        let Some(want) = &self.digest else {
            return Ok(());
        };
        let (found, _) = super::ModelRef::of(&self.manifest_path).map_err(engine_err)?;
        if found.onnx_sha256 != want.onnx_sha256 || found.manifest_sha256 != want.manifest_sha256 {
            return Err(engine_err(ModelMismatch {
                path: self.manifest_path.clone(),
                found_onnx: found.onnx_sha256,
                found_manifest: found.manifest_sha256,
                want_onnx: want.onnx_sha256.clone(),
                want_manifest: want.manifest_sha256.clone(),
            }));
        }
        Ok(())
    }

    /// The UDF's output type.
    pub fn output_fields() -> Fields {
        Fields::from(vec![
            Field::new("class", DataType::UInt8, false),
            Field::new(
                "logits",
                DataType::List(Arc::new(Field::new("item", DataType::Float32, true))),
                false,
            ),
        ])
    }

    fn take_model(&self) -> datafusion::common::Result<Model> {
        let idle = self
            .pool
            .lock()
            .map_err(|_| engine_err(PoisonedPool))?
            .pop();
        match idle {
            Some(m) => Ok(m),
            None => {
                self.check_digest()?;
                Model::load_with_batch(&self.manifest_path, self.batch_size).map_err(engine_err)
            }
        }
    }

    fn give_back(&self, model: Model) {
        if let Ok(mut pool) = self.pool.lock() {
            pool.push(model);
        }
    }

    /// The temperature of row `i`: the legacy column when it is there, else the map's
    /// `temperature` entry.
    fn temperature(features: Option<&MapArray>, legacy: &Float32Array, i: usize) -> Option<f32> {
        if legacy.is_valid(i) {
            return Some(legacy.value(i));
        }
        let m = features.filter(|m| m.is_valid(i))?;
        let keys = m.keys().as_any().downcast_ref::<StringArray>()?;
        let values = m.values().as_any().downcast_ref::<Float32Array>()?;
        let offsets = m.value_offsets();
        (offsets[i] as usize..offsets[i + 1] as usize)
            .find(|&j| keys.value(j) == TEMPERATURE)
            .map(|j| values.value(j))
    }

    fn score(
        model: &mut Model,
        inputs: &ListArray,
        features: Option<&MapArray>,
        temperatures: &Float32Array,
    ) -> datafusion::common::Result<StructArray> {
        let n = inputs.len();
        let row_len = model.input_len();
        let needs_temperature = model.uses_temperature();
        let picked: Vec<(usize, f32)> = (0..n)
            .filter(|&i| inputs.is_valid(i) && inputs.value_length(i) as usize == row_len)
            .filter_map(|i| {
                if needs_temperature {
                    Self::temperature(features, temperatures, i).map(|t| (i, t))
                } else {
                    Some((i, 0.0))
                }
            })
            .collect();
        let mut predictions = vec![None; n];
        let mut windows: Vec<f32> = Vec::with_capacity(model.batch() * row_len);
        let mut temps: Vec<f32> = Vec::with_capacity(model.batch());
        for chunk in picked.chunks(model.batch()) {
            windows.clear();
            temps.clear();
            for &(i, t) in chunk {
                let window = inputs.value(i);
                windows.extend_from_slice(as_float32_array(&window)?.values());
                temps.push(t);
            }
            let out = model.predict_batch(&windows, &temps).map_err(engine_err)?;
            for (&(i, _), p) in chunk.iter().zip(out) {
                predictions[i] = Some(p);
            }
        }
        let mut class = UInt8Builder::with_capacity(n);
        let mut logits = ListBuilder::new(Float32Builder::new());
        for p in &predictions {
            match p {
                Some(p) => {
                    class.append_value(p.class as u8);
                    logits.values().append_slice(&p.logits);
                }
                None => class.append_value(0),
            }
            logits.append(true);
        }
        let valid = NullBuffer::from(predictions.iter().map(Option::is_some).collect::<Vec<_>>());
        Ok(StructArray::try_new(
            Self::output_fields(),
            vec![Arc::new(class.finish()), Arc::new(logits.finish())],
            Some(valid),
        )?)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the model pool's lock is poisoned (a scoring thread panicked)")]
struct PoisonedPool;

impl fmt::Debug for CloudScore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudScore")
            .field("manifest_path", &self.manifest_path)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

impl PartialEq for CloudScore {
    fn eq(&self, other: &Self) -> bool {
        self.manifest_path == other.manifest_path
            && self.batch_size == other.batch_size
            && self.digest == other.digest
    }
}

impl Eq for CloudScore {}

impl Hash for CloudScore {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.manifest_path.hash(state);
        self.batch_size.hash(state);
        self.digest.hash(state);
    }
}

impl ScalarUDFImpl for CloudScore {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> datafusion::common::Result<DataType> {
        match args {
            [DataType::List(item), DataType::Map(..), DataType::Float32]
                if item.data_type() == &DataType::Float32 =>
            {
                Ok(DataType::Struct(Self::output_fields()))
            }
            other => Err(DataFusionError::Plan(format!(
                "cloud_score takes (list<float32>, map<utf8, float32>, float32), not {other:?}"
            ))),
        }
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let inputs = as_list_array(&arrays[0])?;
        let features = arrays[1].as_any().downcast_ref::<MapArray>();
        let temperatures = as_float32_array(&arrays[2])?;
        let mut model = self.take_model()?;
        let scored = Self::score(&mut model, inputs, features, temperatures);
        self.give_back(model);
        Ok(ColumnarValue::Array(Arc::new(scored?)))
    }
}

/// What the engine hands back: the rescored rows per partition, and the tallies.
pub struct Executed {
    /// The rescored record batches, per partition, in file order within each.
    pub partitions: Vec<Vec<RecordBatch>>,
    /// The `GROUP BY` counts.
    pub tallies: Tallies,
}

/// The job's inputs to the engine.
pub struct EnginePlan {
    /// Where the files are.
    pub storage: Storage,
    /// The snapshot's event files.
    pub files: Vec<Listed>,
    /// Plan constants (range, windows).
    pub params: PlanParams,
    /// The cloud model.
    pub manifest_path: PathBuf,
    /// Windows per tract run.
    pub batch_size: usize,
    /// Partitions, and threads of the engine's runtime.
    pub workers: usize,
    /// The model's hashes, checked wherever it is loaded.
    pub digest: ModelDigest,
    /// Where the plan runs.
    pub engine: super::Engine,
}

impl EnginePlan {
    /// Runs the plan to completion on its own runtime (module doc); blocks the calling
    /// thread. A cancelled `shutdown` abandons it.
    pub fn run_blocking(&self, shutdown: &CancellationToken) -> Result<Executed, RescoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.workers.max(1))
            .thread_name("rescore-engine")
            .enable_all()
            .build()
            .map_err(|e| RescoreError::Task(format!("engine runtime: {e}")))?;
        let result = runtime.block_on(async {
            tokio::select! {
                r = self.execute() => r,
                () = shutdown.cancelled() => Err(RescoreError::Cancelled { total: self.files.len() }),
            }
        });
        runtime.shutdown_background();
        result
    }

    /// The session: `workers` partitions, files neither split nor repartitioned (each
    /// partition's output keeps its files' order).
    fn context(&self) -> Result<SessionContext, RescoreError> {
        let config = SessionConfig::new()
            .with_target_partitions(self.workers.max(1))
            .with_repartition_file_scans(false)
            .with_round_robin_repartition(false);
        let ctx = SessionContext::new_with_config(config);
        let url = ObjectStoreUrl::parse(STORE_URL)?;
        ctx.register_object_store(url.as_ref(), self.storage.object_store());
        Ok(ctx)
    }

    /// Runs `df`'s physical plan on the engine: every partition's batches (embedded), or the
    /// cluster's output as one partition, partitions in order (Ballista).
    async fn collect(
        &self,
        ctx: &SessionContext,
        df: DataFrame,
    ) -> Result<(SchemaRef, Vec<Vec<RecordBatch>>), RescoreError> {
        let plan = df.create_physical_plan().await?;
        let schema = plan.schema();
        match &self.engine {
            super::Engine::Embedded => {
                Ok((schema, collect_partitioned(plan, ctx.task_ctx()).await?))
            }
            #[cfg(feature = "ballista")]
            super::Engine::Ballista { scheduler } => Ok((
                schema,
                vec![crate::cluster::collect(scheduler, plan).await?],
            )),
            #[cfg(not(feature = "ballista"))]
            super::Engine::Ballista { .. } => Err(RescoreError::Engine(
                "this build has no Ballista engine (cargo feature `ballista`)".into(),
            )),
        }
    }

    /// The rows of `df`, counted on the engine.
    async fn count(&self, ctx: &SessionContext, df: DataFrame) -> Result<u64, RescoreError> {
        let counted = df.aggregate(vec![], vec![count(lit(1)).alias("n")])?;
        let mut n = 0;
        for b in self.collect(ctx, counted).await?.1.iter().flatten() {
            n += column::<Int64Array>(b, "n")?
                .iter()
                .map(|v| v.unwrap_or(0) as u64)
                .sum::<u64>();
        }
        Ok(n)
    }

    async fn execute(&self) -> Result<Executed, RescoreError> {
        let ctx = self.context()?;
        let url = ObjectStoreUrl::parse(STORE_URL)?;
        let table = SnapshotTable::new(url, self.files.clone(), self.workers);
        let scan = ctx.read_table(Arc::new(table))?;
        let rows = self.count(&ctx, scan.clone()).await?;
        let score = ScalarUDF::from(
            CloudScore::new(self.manifest_path.clone(), self.batch_size)
                .expecting(self.digest.clone()),
        );
        let arrival = || ident("arrival_unix_us");
        let mut columns: Vec<Expr> = [
            FILE_INDEX,
            "device",
            "node",
            "seq",
            "journal_seq",
            "arrival_unix_us",
            "class",
            "source",
            "model_name",
            "model_version",
            "end_to_end_us",
            "deadline_miss",
        ]
        .into_iter()
        .chain([FEATURES])
        .chain(LEGACY_FEATURE_NAMES)
        .map(ident)
        .collect();
        columns.push(
            score
                .call(vec![
                    ident("model_input"),
                    ident(FEATURES),
                    ident(TEMPERATURE),
                ])
                .alias(CLOUD),
        );
        let in_range_scan = scan.filter(
            arrival()
                .gt_eq(lit(self.params.from_us))
                .and(arrival().lt(lit(self.params.to_us))),
        )?;
        // Null (a file from before the column) is not flagged.
        let clock_suspect = self
            .count(
                &ctx,
                in_range_scan
                    .clone()
                    .filter(ident("clock_suspect").is_true())?,
            )
            .await?;
        let rescored = in_range_scan.select(columns)?;
        let (schema, partitions) = self.collect(&ctx, rescored).await?;
        let in_range: u64 = partitions
            .iter()
            .flatten()
            .map(|b| b.num_rows() as u64)
            .sum();
        let table = MemTable::try_new(
            schema,
            if partitions.is_empty() {
                vec![Vec::new()]
            } else {
                partitions.clone()
            },
        )?;
        let mut tallies = tallies(ctx.read_table(Arc::new(table))?, self.params).await?;
        tallies.out_of_range = rows.saturating_sub(in_range);
        tallies.clock_suspect = clock_suspect;
        Ok(Executed {
            partitions,
            tallies,
        })
    }
}

impl From<DataFusionError> for RescoreError {
    fn from(e: DataFusionError) -> Self {
        RescoreError::Engine(e.to_string())
    }
}

/// The comparison `GROUP BY`s over the rescored rows (module doc). `out_of_range` is left 0.
pub async fn tallies(rescored: DataFrame, params: PlanParams) -> Result<Tallies, RescoreError> {
    let unscorable = rescored
        .clone()
        .filter(ident(CLOUD).is_null())?
        .count()
        .await? as u64;
    let scored = rescored.filter(ident(CLOUD).is_not_null())?;
    Ok(Tallies {
        cells: comparison_cells(scored.clone()).await?,
        window_events: window_events(scored, params).await?,
        out_of_range: 0,
        unscorable,
        clock_suspect: 0,
    })
}

/// Scored rows grouped by node, device, edge model, edge class, cloud class and fallback,
/// with their event and deadline-miss counts, sorted by the group's columns.
async fn comparison_cells(scored: DataFrame) -> Result<Vec<Cell>, RescoreError> {
    let group = vec![
        ident("node"),
        ident("device"),
        ident("model_name"),
        ident("model_version"),
        ident("class"),
        get_field(ident(CLOUD), "class").alias("cloud_class"),
        ident("source").eq(lit("fallback")).alias("fallback"),
    ];
    let order: Vec<_> = [
        "node",
        "device",
        "model_name",
        "model_version",
        "class",
        "cloud_class",
        "fallback",
    ]
    .into_iter()
    .map(|c| ident(c).sort(true, false))
    .collect();
    let batches = scored
        .aggregate(
            group,
            vec![
                count(lit(1)).alias("events"),
                sum(cast(ident("deadline_miss"), DataType::UInt64)).alias("misses"),
            ],
        )?
        .sort(order)?
        .collect()
        .await?;
    let mut cells = Vec::new();
    for b in &batches {
        let node = column::<StringArray>(b, "node")?;
        let device = column::<StringArray>(b, "device")?;
        let name = column::<StringArray>(b, "model_name")?;
        let version = column::<StringArray>(b, "model_version")?;
        let edge = column::<UInt8Array>(b, "class")?;
        let cloud = column::<UInt8Array>(b, "cloud_class")?;
        let fallback = column::<BooleanArray>(b, "fallback")?;
        let events = column::<Int64Array>(b, "events")?;
        let misses = column::<UInt64Array>(b, "misses")?;
        for i in 0..b.num_rows() {
            cells.push(Cell {
                node: node.value(i).to_owned(),
                device: device.value(i).to_owned(),
                edge_model: format!("{}@{}", name.value(i), version.value(i)),
                edge_class: usize::from(edge.value(i)),
                cloud_class: usize::from(cloud.value(i)),
                fallback: fallback.value(i),
                events: events.value(i) as u64,
                deadline_miss: misses.value(i),
            });
        }
    }
    Ok(cells)
}

/// Scored rows per drift window (`(arrival − from) / window`).
async fn window_events(
    scored: DataFrame,
    params: PlanParams,
) -> Result<BTreeMap<u64, u64>, RescoreError> {
    let window = (ident("arrival_unix_us") - lit(params.from_us)) / lit(params.window_us.max(1));
    let batches = scored
        .aggregate(
            vec![window.alias("window")],
            vec![count(lit(1)).alias("events")],
        )?
        .collect()
        .await?;
    let mut out = BTreeMap::new();
    for b in &batches {
        let w = column::<UInt64Array>(b, "window")?;
        let n = column::<Int64Array>(b, "events")?;
        for i in 0..b.num_rows() {
            out.insert(w.value(i), n.value(i) as u64);
        }
    }
    Ok(out)
}

fn column<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a T, RescoreError> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| {
            RescoreError::Engine(format!(
                "column {name:?} of the rescored rows is missing or of another type"
            ))
        })
}

/// One snapshot file's share of the run: its sketches and its rescored rows.
pub struct FileOutput {
    /// The file's sketches.
    pub partial: Partial,
    /// Its rescored rows, in file order.
    pub rows: Vec<RescoredRow>,
}

/// Feeds one partition's rescored batches into per-file sketches and rows (scored rows
/// only; unscorable rows are counted by [`tallies`]). `reference` names the features the
/// sketches hold, in order; each row's are looked up by name.
pub fn sketch_files(
    batches: &[RecordBatch],
    params: PlanParams,
    reference: &[String],
) -> Result<BTreeMap<usize, FileOutput>, RescoreError> {
    let mut out: BTreeMap<usize, FileOutput> = BTreeMap::new();
    let mut by_name = ByName::new(reference.to_vec());
    let mut row = Vec::new();
    let mut features = vec![0f32; reference.len()];
    let mut missing = vec![false; reference.len()];
    for b in batches {
        let c = RescoredColumns::of(b)?;
        for i in (0..b.num_rows()).filter(|&i| c.cloud.is_valid(i)) {
            c.features.row_into(i, &mut row);
            by_name.resolve(&row, &mut features, &mut missing);
            let o = Observation {
                node: c.node.value(i),
                device: c.device.value(i),
                end_to_end_us: c.latency.value(i),
                arrival_us: c.arrival.value(i),
                features: &features,
                missing: &missing,
            };
            let entry = out
                .entry(c.file.value(i) as usize)
                .or_insert_with(|| FileOutput {
                    partial: Partial::new(params),
                    rows: Vec::new(),
                });
            entry.partial.observe(&o);
            entry.rows.push(c.row(i)?);
        }
    }
    Ok(out)
}

/// The columns of the plan's output [`sketch_files`] reads, borrowed from one batch.
struct RescoredColumns<'a> {
    file: &'a UInt32Array,
    device: &'a StringArray,
    node: &'a StringArray,
    seq: &'a UInt64Array,
    journal_seq: &'a UInt64Array,
    arrival: &'a UInt64Array,
    class: &'a UInt8Array,
    source: &'a StringArray,
    version: &'a StringArray,
    latency: &'a UInt32Array,
    miss: &'a BooleanArray,
    features: FeatureColumns<'a>,
    cloud: &'a StructArray,
    cloud_class: &'a UInt8Array,
    cloud_logits: &'a ListArray,
}

impl<'a> RescoredColumns<'a> {
    /// Borrows the columns; errors naming the first missing or mistyped one.
    fn of(b: &'a RecordBatch) -> Result<Self, RescoreError> {
        let file = column::<UInt32Array>(b, FILE_INDEX)?;
        let device = column::<StringArray>(b, "device")?;
        let node = column::<StringArray>(b, "node")?;
        let seq = column::<UInt64Array>(b, "seq")?;
        let journal_seq = column::<UInt64Array>(b, "journal_seq")?;
        let arrival = column::<UInt64Array>(b, "arrival_unix_us")?;
        let class = column::<UInt8Array>(b, "class")?;
        let source = column::<StringArray>(b, "source")?;
        let version = column::<StringArray>(b, "model_version")?;
        let latency = column::<UInt32Array>(b, "end_to_end_us")?;
        let miss = column::<BooleanArray>(b, "deadline_miss")?;
        let features = FeatureColumns::of(b).map_err(|e| RescoreError::Engine(e.to_string()))?;
        let cloud = column::<StructArray>(b, CLOUD)?;
        let cloud_class = cloud
            .column_by_name("class")
            .and_then(|c| c.as_any().downcast_ref::<UInt8Array>());
        let cloud_logits = cloud
            .column_by_name("logits")
            .and_then(|c| c.as_any().downcast_ref::<ListArray>());
        let (Some(cloud_class), Some(cloud_logits)) = (cloud_class, cloud_logits) else {
            return Err(RescoreError::Engine(format!(
                "column {CLOUD:?} is not the cloud_score struct"
            )));
        };
        Ok(RescoredColumns {
            file,
            device,
            node,
            seq,
            journal_seq,
            arrival,
            class,
            source,
            version,
            latency,
            miss,
            features,
            cloud,
            cloud_class,
            cloud_logits,
        })
    }

    /// Row `i` (a scored one) as a rescored row.
    fn row(&self, i: usize) -> Result<RescoredRow, RescoreError> {
        let logits: ArrayRef = self.cloud_logits.value(i);
        Ok(RescoredRow {
            device: self.device.value(i).to_owned(),
            node: self.node.value(i).to_owned(),
            seq: self.seq.value(i),
            journal_seq: self.journal_seq.value(i),
            arrival_unix_us: self.arrival.value(i),
            edge_class: self.class.value(i),
            edge_source: self.source.value(i).to_owned(),
            edge_model_version: self.version.value(i).to_owned(),
            cloud_class: self.cloud_class.value(i),
            cloud_logits: as_float32_array(&logits)?.values().to_vec(),
            end_to_end_us: self.latency.value(i),
            deadline_miss: self.miss.value(i),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::config::ConfigOptions;

    fn manifest() -> PathBuf {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../models/cloud.manifest.json").into()
    }

    #[test]
    fn file_groups_are_contiguous_runs_of_the_snapshot_tagged_with_their_index() {
        let files: Vec<Listed> = (0..5)
            .map(|i| Listed {
                path: format!("events/f{i}"),
                size: 10 + i,
            })
            .collect();
        let url = ObjectStoreUrl::parse(STORE_URL).unwrap();
        let groups = SnapshotTable::new(url.clone(), files.clone(), 2).file_groups();
        let seen: Vec<Vec<(String, u64, ScalarValue)>> = groups
            .iter()
            .map(|g| {
                g.files()
                    .iter()
                    .map(|f| {
                        (
                            f.object_meta.location.to_string(),
                            f.object_meta.size,
                            f.partition_values[0].clone(),
                        )
                    })
                    .collect()
            })
            .collect();
        let expect = |i: u32| {
            (
                format!("events/f{i}"),
                10 + u64::from(i),
                ScalarValue::UInt32(Some(i)),
            )
        };
        assert_eq!(
            seen,
            vec![
                vec![expect(0), expect(1), expect(2)],
                vec![expect(3), expect(4)]
            ]
        );
        // More partitions than files: one file each, no empty group.
        assert_eq!(SnapshotTable::new(url, files, 9).file_groups().len(), 5);
    }

    #[test]
    fn cloud_score_matches_the_model_and_gives_null_without_a_window_or_a_temperature() {
        const WINDOW_LEN: usize = reflex_models::WINDOW_LEN;
        let window = |k: usize| -> Vec<f32> {
            (0..WINDOW_LEN)
                .map(|i| ((i * (k + 3)) as f32 * 0.05).sin() * (k as f32 + 0.5))
                .collect()
        };
        let mut lists = ListBuilder::new(Float32Builder::new());
        let rows = [
            window(0),
            vec![1.0; WINDOW_LEN - 1],
            window(2),
            window(3),
            window(4),
        ];
        for r in &rows {
            lists.values().append_slice(r);
            lists.append(true);
        }
        let inputs: ArrayRef = Arc::new(lists.finish());
        // Rows 0–2 have the legacy column; row 3 only the map's entry; row 4 neither.
        let temps: ArrayRef = Arc::new(Float32Array::from(vec![
            Some(20.0),
            Some(21.0),
            Some(35.0),
            None,
            None,
        ]));
        let mut map = datafusion::arrow::array::MapBuilder::new(
            None,
            datafusion::arrow::array::StringBuilder::new(),
            Float32Builder::new(),
        );
        for i in 0..rows.len() {
            if i == 3 {
                map.keys().append_value("mean_x");
                map.values().append_value(0.0);
                map.keys().append_value("temperature");
                map.values().append_value(60.0);
                map.append(true).unwrap();
            } else if i == 4 {
                map.keys().append_value("rms_current");
                map.values().append_value(5.0);
                map.append(true).unwrap();
            } else {
                map.append(false).unwrap();
            }
        }
        let features: ArrayRef = Arc::new(map.finish());
        let udf = CloudScore::new(manifest(), 2);
        let return_type = udf
            .return_type(&[
                inputs.data_type().clone(),
                features.data_type().clone(),
                DataType::Float32,
            ])
            .unwrap();
        let args = || ScalarFunctionArgs {
            args: vec![
                ColumnarValue::Array(inputs.clone()),
                ColumnarValue::Array(features.clone()),
                ColumnarValue::Array(temps.clone()),
            ],
            arg_fields: vec![
                Arc::new(Field::new("model_input", inputs.data_type().clone(), false)),
                Arc::new(Field::new(FEATURES, features.data_type().clone(), true)),
                Arc::new(Field::new("temperature", DataType::Float32, true)),
            ],
            number_rows: rows.len(),
            return_field: Arc::new(Field::new(CLOUD, return_type.clone(), true)),
            config_options: Arc::new(ConfigOptions::default()),
        };
        let out = udf
            .invoke_with_args(args())
            .unwrap()
            .into_array(rows.len())
            .unwrap();
        let out = out.as_any().downcast_ref::<StructArray>().unwrap();
        assert_eq!(
            (0..rows.len()).map(|i| out.is_valid(i)).collect::<Vec<_>>(),
            vec![true, false, true, true, false]
        );
        let class = out.column(0).as_any().downcast_ref::<UInt8Array>().unwrap();
        let logits = out.column(1).as_any().downcast_ref::<ListArray>().unwrap();
        let mut model = Model::load_with_batch(manifest(), 1).unwrap();
        for i in [0usize, 2, 3] {
            let temp = [[20.0f32, 21.0, 35.0, 60.0][i]];
            let p = model.predict_batch(&rows[i], &temp).unwrap().remove(0);
            assert_eq!(usize::from(class.value(i)), p.class, "row {i}");
            let got = logits.value(i);
            let got = got.as_any().downcast_ref::<Float32Array>().unwrap();
            for (a, b) in got.values().iter().zip(&p.logits) {
                assert!((a - b).abs() < 1e-4, "row {i}: {a} vs {b}");
            }
        }
        // The instance keeps its model for the next batch instead of loading another.
        udf.invoke_with_args(args()).unwrap();
        assert_eq!(udf.pool.lock().unwrap().len(), 1);
    }
}
