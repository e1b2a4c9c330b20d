//! Ingest: uploads over Flight (`put`) and HTTP (`put_csv`), the `load` action, and the
//! checks every upload's schema and batches pass.

use super::*;

impl Node {
    /// Stores a stream of batches as a new version: Parquet parts written as the batches
    /// arrive (memory bounded by the part size), then the manifest committed create-only,
    /// then the table cached. Returns only after the version is durable. On any error the
    /// parts already written are removed and nothing is visible.
    pub async fn put<S>(
        &self,
        id: DatasetId,
        opts: PutOptions,
        schema: SchemaRef,
        batches: S,
    ) -> Result<Manifest>
    where
        S: Stream<Item = Result<RecordBatch>> + Send,
    {
        let contract = opts
            .contract
            .as_deref()
            .map(|c| self.contracts.get(c))
            .transpose()?;
        if let Some(c) = &contract {
            c.check_schema(&schema)?;
        }
        let started = std::time::Instant::now();
        let upload = self.versions.begin(&id, self.limits.marker_refresh());
        let upload_id = upload.upload_id().to_string();
        let mut w = PartWriter::new(
            self,
            id.clone(),
            upload_id.clone(),
            schema.clone(),
            contract.clone(),
        );
        let written = async {
            futures::pin_mut!(batches);
            while let Some(batch) = batches.next().await {
                w.push(batch?).await?;
            }
            w.finish().await
        }
        .await;
        written?;

        let created_at = self.now();
        let ttl = opts.ttl.or(self.limits.default_ttl);
        let expires_at = match ttl {
            Some(ttl) => Some(crate::ttl::expires_at(created_at, ttl).ok_or_else(|| {
                Error::invalid("the TTL is too long to represent an expiry time")
            })?),
            None => None,
        };
        let manifest = Manifest {
            format: MANIFEST_FORMAT.into(),
            namespace: id.namespace().into(),
            name: id.name().into(),
            version: 0,
            upload_id,
            schema: match opts
                .schema_message
                .as_deref()
                .and_then(manifest::encode_schema_message)
            {
                Some(sent) => sent,
                None => manifest::encode_schema(&schema)?,
            },
            columns: manifest::columns(&schema),
            rows: w.rows,
            bytes: w.parts.iter().map(|p| p.bytes).sum(),
            stored_bytes: w.parts.iter().map(|p| p.stored_bytes).sum(),
            parts: std::mem::take(&mut w.parts),
            part_format: w.format,
            contract: contract.map(|c| c.name.clone()),
            created_at,
            ttl_seconds: ttl.map(|t| t.as_secs()),
            expires_at,
            source: opts.source,
            consumers: opts.consumers.clone(),
        };
        // From here on the commit owns the parts: it runs to completion on its own task even
        // if this call goes away, and only it may remove them.
        w.committed = true;
        let manifest = self.versions.commit(upload, manifest).await?;
        let key = (id, manifest.version);
        self.remember(key.clone(), manifest.clone(), None);
        if let (Some(parts), Some(room)) = (w.encoded.take(), w.cache_room.take()) {
            // The parts this node owns stay in memory; their owners load the others on
            // first read (or preload).
            let owned: Vec<(PartKey, Arc<EncodedPart>)> = (0u32..)
                .zip(parts)
                .filter(|(p, _)| self.placement.owns(&key.0, key.1, *p))
                .map(|(p, part)| ((key.0.clone(), key.1, p), Arc::new(part)))
                .collect();
            self.cache.insert_reserved(owned, room);
        }
        drop(w);
        crate::memory::release_after(manifest.bytes);
        self.metrics.record_upload(
            manifest.rows,
            manifest.bytes,
            started.elapsed().as_secs_f64(),
        );
        tracing::info!(
            dataset = %manifest.dataset()?, version = manifest.version, rows = manifest.rows,
            bytes = manifest.bytes, parts = manifest.parts.len(), "committed upload"
        );
        Ok(manifest)
    }

    /// Ingests CSV bytes (header row first) as a new version. Parsing runs on a blocking
    /// thread fed by the stream, so the body is never held whole in memory. With a
    /// contract, its schema is used to parse; otherwise the schema is inferred from the
    /// first megabyte.
    pub async fn put_csv<S, E>(
        &self,
        id: DatasetId,
        opts: PutOptions,
        delimiter: u8,
        body: S,
    ) -> Result<Manifest>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        let contract_schema = match &opts.contract {
            Some(c) => Some(Arc::new(self.contracts.get(c)?.schema())),
            None => None,
        };
        let (schema_tx, schema_rx) = tokio::sync::oneshot::channel();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<RecordBatch>>(2);
        let reader =
            tokio_util::io::StreamReader::new(Box::pin(body.map_err(std::io::Error::other)));
        let parser = tokio::task::spawn_blocking(move || {
            crate::csv::parse(reader, contract_schema, delimiter, schema_tx, tx)
        });
        let schema = match schema_rx.await {
            Ok(schema) => schema?,
            Err(_) => {
                return Err(match parser.await {
                    Ok(Err(e)) => e,
                    _ => Error::Internal("the CSV parser stopped without a schema".into()),
                })
            }
        };
        // The batches end when the parser's sender is dropped, which a panic also does: the
        // stream ends with the parser's outcome, so a parser that died never commits a
        // truncated table.
        let outcome = stream::once(async move {
            match parser.await {
                Err(e) => Some(Err(Error::Internal(format!("the CSV parser failed: {e}")))),
                Ok(_) => None,
            }
        })
        .filter_map(|failed| async move { failed });
        let batches = tokio_stream::wrappers::ReceiverStream::new(rx).chain(outcome);
        self.put(id, opts, schema, batches).await
    }

    /// The `load` action: ingests a CSV or Parquet object from the node's storage.
    pub async fn load(&self, req: LoadRequest) -> Result<Manifest> {
        let id = DatasetId::new(req.namespace.as_str(), req.name.as_str())?;
        let path = self.source_path(id.namespace(), &req.source)?;
        let format = match req.format.as_deref() {
            Some(f) => f.to_ascii_lowercase(),
            None if path.as_ref().ends_with(".parquet") => "parquet".into(),
            None if path.as_ref().ends_with(".csv") => "csv".into(),
            None => {
                return Err(Error::invalid(format!(
                    "cannot tell the format of {path}; set format to csv or parquet"
                )))
            }
        };
        let size = self.storage.object_size(&path).await?;
        if size > self.limits.max_upload_size {
            return Err(Error::ResourceExhausted(format!(
                "source {path} is {size} bytes, above the upload limit of {} bytes",
                self.limits.max_upload_size
            )));
        }
        let opts = PutOptions {
            ttl: req.ttl.as_deref().map(crate::ttl::parse_ttl).transpose()?,
            contract: req.contract.clone(),
            source: req.source.clone(),
            schema_message: None,
            consumers: req
                .consumers
                .as_ref()
                .map(crate::consumers::ConsumersSpec::to_consumers)
                .transpose()?,
        };
        match format.as_str() {
            "csv" => {
                let delimiter = req.delimiter.unwrap_or(',');
                if !delimiter.is_ascii() {
                    return Err(Error::invalid(
                        "the CSV delimiter must be one ASCII character",
                    ));
                }
                let body = self
                    .storage
                    .object_store()
                    .get_opts(&path, Default::default())
                    .await
                    .map_err(|e| Error::storage(format!("read {path}"), e))?
                    .into_stream();
                self.put_csv(id, opts, delimiter as u8, body).await
            }
            "parquet" => {
                let bytes = self.storage.get_object(&path).await?;
                let builder =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                        .map_err(|e| {
                        Error::invalid(format!("source {path} is not a readable Parquet file: {e}"))
                    })?;
                let schema = builder.schema().clone();
                let reader = builder
                    .with_batch_size(READ_BATCH_ROWS)
                    .build()
                    .map_err(|e| {
                        Error::invalid(format!("failed to read Parquet source {path}: {e}"))
                    })?;
                let batches = stream::iter(reader.map(|r| {
                    r.map_err(|e| Error::invalid(format!("failed to decode Parquet source: {e}")))
                }));
                self.put(id, opts, schema, batches).await
            }
            other => Err(Error::invalid(format!(
                "unknown source format {other:?}; use csv or parquet"
            ))),
        }
    }

    /// The object a `load` reads: relative to the storage root, inside the destination's
    /// own namespace prefix (`<namespace>/...`) or one of the shared prefixes the node was
    /// given (`--load-source-prefix`). Anything else is refused, so a token for one
    /// namespace cannot read another's objects through a load.
    pub(super) fn source_path(&self, namespace: &str, source: &str) -> Result<Path> {
        let path = self.source_object(source)?;
        let mut parts = path.parts();
        let first = parts.next();
        if first.as_ref().map(|p| p.as_ref()) == Some(namespace) && parts.next().is_some() {
            return Ok(path);
        }
        let allowed = self.limits.load_source_prefixes.iter().any(|prefix| {
            let prefix = Path::from(prefix.as_str());
            path.prefix_matches(&prefix) && path != prefix
        });
        if allowed {
            return Ok(path);
        }
        let shared = if self.limits.load_source_prefixes.is_empty() {
            String::new()
        } else {
            format!(
                " or one of the shared prefixes {:?}",
                self.limits.load_source_prefixes
            )
        };
        Err(Error::PermissionDenied(format!(
            "source {source:?} is outside namespace {namespace:?}: a load reads objects under \"{namespace}/\" in the storage{shared}"
        )))
    }

    pub(super) fn source_object(&self, source: &str) -> Result<Path> {
        let base = self.storage.url().trim_end_matches('/');
        let rel = if let Some(rest) = source.strip_prefix(base) {
            rest.trim_start_matches('/')
        } else if source.contains("://") {
            return Err(Error::invalid(format!(
                "source {source:?} is outside this node's storage {base:?}; give a path relative to it"
            )));
        } else {
            source.trim_start_matches('/')
        };
        Path::parse(rel).map_err(|e| Error::invalid(format!("invalid source path {source:?}: {e}")))
    }
}

/// Refuses an upload's schema unless every column has a type Arrow can hold arrays of. The
/// IPC decoder accepts some types no array can have (a map whose entries are not a struct
/// of key and value, for one); a batch of such a column would fail validation, but an
/// upload of no batches would be stored and then break every read of it.
pub fn check_schema(schema: &arrow::datatypes::Schema) -> Result<()> {
    for field in schema.fields() {
        check_type(field.name(), field.data_type())?;
        // What a read of an empty version makes of the column; anything else arrow's
        // array constructors refuse (by panicking) is caught here rather than later.
        let data_type = field.data_type().clone();
        let made = std::panic::catch_unwind(move || {
            arrow::array::new_empty_array(&data_type)
                .to_data()
                .validate_full()
        });
        let problem = match made {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e.to_string(),
            Err(panic) => crate::error::panic_message(&panic),
        };
        return Err(Error::invalid(format!(
            "column {:?} has a type no Arrow array can have ({}): {problem}",
            field.name(),
            field.data_type()
        )));
    }
    Ok(())
}

pub(super) fn check_type(name: &str, data_type: &arrow::datatypes::DataType) -> Result<()> {
    use arrow::datatypes::DataType;
    if let DataType::Map(entries, _) = data_type {
        let two = matches!(entries.data_type(), DataType::Struct(f) if f.len() == 2);
        if !two {
            return Err(Error::invalid(format!(
                "column {name:?} is a map whose entries are {} instead of a struct of key and value",
                entries.data_type()
            )));
        }
    }
    let children: Vec<&arrow::datatypes::Field> = match data_type {
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _)
        | DataType::Map(f, _) => vec![f.as_ref()],
        DataType::Struct(fields) => fields.iter().map(|f| f.as_ref()).collect(),
        DataType::Union(fields, _) => fields.iter().map(|(_, f)| f.as_ref()).collect(),
        DataType::RunEndEncoded(ends, values) => vec![ends.as_ref(), values.as_ref()],
        DataType::Dictionary(_, values) => return check_type(name, values),
        _ => Vec::new(),
    };
    for child in children {
        check_type(name, child.data_type())?;
    }
    Ok(())
}

/// The most rows one record batch of an upload may hold: Arrow's Java and C# readers index
/// rows with 32-bit integers, so a longer batch is unreadable to them.
pub const MAX_BATCH_ROWS: usize = i32::MAX as usize;

/// What a batch counts against `--max-upload-size`: its bytes, and at least one byte per
/// row. Columns that take no space (no columns at all, the null type, zero-width
/// fixed-size types) would otherwise let a few bytes claim any number of rows, and storing
/// and reading rows costs time and memory in proportion to their number.
pub fn upload_size(batch: &RecordBatch) -> usize {
    batch_size(batch).max(batch.num_rows())
}

/// Refuses a record batch longer than [`MAX_BATCH_ROWS`].
pub fn check_batch_rows(batch: &RecordBatch) -> Result<()> {
    if batch.num_rows() > MAX_BATCH_ROWS {
        return Err(Error::invalid(format!(
            "a record batch of {} rows; at most {MAX_BATCH_ROWS} rows per batch (send more, smaller batches)",
            batch.num_rows()
        )));
    }
    Ok(())
}
