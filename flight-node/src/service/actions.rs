//! `DoAction`: the actions the node understands, each a JSON body and a JSON answer
//! (the standard Flight actions take and give protobuf), and their descriptions for
//! `ListActions`.

use super::*;

/// The actions `DoAction` understands, with the descriptions `ListActions` returns.
pub const ACTIONS: &[(&str, &str)] = &[
    ("delete", "Delete a dataset or one version from storage and memory. Body: JSON {\"namespace\", \"name\", \"version\"?}. Result: JSON {\"deleted\": [versions]}."),
    ("evict", "Drop a dataset or one version from this node's memory only; storage keeps it. Body: JSON {\"namespace\", \"name\", \"version\"?}. Result: JSON {\"evicted\": n}."),
    ("stats", "The versions this node holds in memory (of the token's namespaces), and its memory and cache counters (to a token of every namespace). Body: empty. Result: JSON."),
    ("preload", "Load a version (the newest by default) into the pool's memory ahead of its first read: this node loads the parts it owns and asks each other part's owner for its parts. Body: JSON {\"namespace\", \"name\", \"version\"?, \"parts\"?} (with parts and version: load just those parts on this node). Result: JSON {\"version\", \"cached\" (every part is held), \"parts\", \"partsCached\", \"nodes\": [{\"node\", \"parts\", \"cached\", \"error\"?}]}."),
    ("load", "Ingest a CSV or Parquet object from the node's storage (under the namespace's own prefix, or a shared prefix the node allows) as a new version. Body: JSON {\"namespace\", \"name\", \"source\", \"format\"?, \"ttl\"?, \"contract\"?, \"delimiter\"?, \"consumers\"?}. Result: the PutResult JSON."),
    ("release", "A consumer is done with a version uploaded with x-flight-consumers; once every consumer has released it, it is deleted after --release-grace. Body: JSON {\"ticket\", \"consumer\"?} (consumer required for named consumers). Result: the PutResult JSON with the consumers still pending."),
    ("renew", "Extend a version's TTL lease. Body: JSON {\"ticket\", \"ttl\"}. Result: the PutResult JSON with the new expiresAt."),
    ("RenewFlightEndpoint", "Standard Flight lease renewal. Body: RenewFlightEndpointRequest (protobuf) whose endpoint carries the ticket; a later expiration_time sets it, the endpoint as returned extends the lease by the version's TTL. Result: the renewed FlightEndpoint (protobuf)."),
    ("CancelFlightInfo", "Standard Flight cancellation. Datasets are complete and immutable, so the answer is always CANCEL_STATUS_NOT_CANCELLABLE. Result: CancelFlightInfoResult (protobuf)."),
];

impl FlightNodeService {
    pub(super) async fn do_action_inner(&self, req: Request<Action>) -> Result<Vec<Bytes>> {
        let principal = self.principal(req.metadata())?;
        let authorization = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let caller = self.auth.caller_key(authorization);
        // Forwarded to peers for work spread over the pool.
        let token = authorization
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(|t| t.trim().to_string());
        let action = req.into_inner();
        let body = &action.body;
        match action.r#type.as_str() {
            "delete" => {
                let r: DatasetRef = json_body("delete", body)?;
                let id = DatasetId::new(r.namespace.as_str(), r.name.as_str())?;
                principal.check(id.namespace())?;
                let deleted = self.node.delete(&id, r.version).await?;
                if deleted.is_empty() {
                    return Err(Error::not_found(format!("dataset {id} not found")));
                }
                Ok(vec![to_json(&serde_json::json!({ "deleted": deleted }))?])
            }
            "evict" => {
                let r: DatasetRef = json_body("evict", body)?;
                let id = DatasetId::new(r.namespace.as_str(), r.name.as_str())?;
                principal.check(id.namespace())?;
                let evicted = self.node.evict(&id, r.version);
                Ok(vec![to_json(&serde_json::json!({ "evicted": evicted }))?])
            }
            "stats" => Ok(vec![to_json(&self.node.stats(&principal))?]),
            "preload" => {
                let r: PreloadRequest = json_body("preload", body)?;
                let id = DatasetId::new(r.namespace.as_str(), r.name.as_str())?;
                principal.check(id.namespace())?;
                let result = match &r.parts {
                    None => {
                        crate::fanout::preload(
                            &self.node,
                            &self.peers,
                            token.as_deref(),
                            &id,
                            r.version,
                        )
                        .await?
                    }
                    Some(parts) => {
                        if r.version.is_none() {
                            return Err(Error::invalid(
                                "preload: \"parts\" name parts of one version; give \"version\" too",
                            ));
                        }
                        let (m, done) = self.node.preload(&id, r.version, Some(parts)).await?;
                        PreloadResult {
                            version: m.version,
                            cached: done.cached == done.parts,
                            parts: done.parts,
                            parts_cached: done.cached,
                            nodes: vec![NodePreload {
                                node: self
                                    .node
                                    .placement()
                                    .advertise_uri()
                                    .unwrap_or_default()
                                    .into(),
                                parts: done.parts,
                                cached: done.cached,
                                error: None,
                            }],
                        }
                    }
                };
                Ok(vec![to_json(&result)?])
            }
            "load" => {
                let r: LoadRequest = json_body("load", body)?;
                principal.check(&r.namespace)?;
                let _slot = self.upload_slot(caller)?;
                let m = self.node.load(r).await?;
                Ok(vec![to_json(&m.put_result(self.node.signer())?)?])
            }
            "release" => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Release {
                    ticket: String,
                    #[serde(default)]
                    consumer: Option<String>,
                }
                let r: Release = json_body("release", body)?;
                let ticket = Ticket::decode(r.ticket.as_bytes(), self.node.signer())?;
                principal.check(ticket.dataset.namespace())?;
                let m = self.node.release(&ticket, r.consumer.as_deref()).await?;
                Ok(vec![to_json(&m.put_result(self.node.signer())?)?])
            }
            "renew" => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Renew {
                    ticket: String,
                    ttl: String,
                }
                let r: Renew = json_body("renew", body)?;
                let ticket = Ticket::decode(r.ticket.as_bytes(), self.node.signer())?;
                principal.check(ticket.dataset.namespace())?;
                let ttl = crate::ttl::parse_ttl(&r.ttl)?;
                let until = crate::ttl::expires_at(self.node.now(), ttl)
                    .ok_or_else(|| Error::invalid("the TTL is too long"))?;
                let m = self.node.renew(&ticket, until).await?;
                Ok(vec![to_json(&m.put_result(self.node.signer())?)?])
            }
            "RenewFlightEndpoint" => {
                let req = RenewFlightEndpointRequest::decode(body.as_ref()).map_err(|e| {
                    Error::invalid(format!("invalid RenewFlightEndpointRequest: {e}"))
                })?;
                let mut endpoint = req
                    .endpoint
                    .ok_or_else(|| Error::invalid("RenewFlightEndpointRequest has no endpoint"))?;
                let raw = endpoint
                    .ticket
                    .as_ref()
                    .ok_or_else(|| Error::invalid("the endpoint to renew has no ticket"))?;
                let ticket = Ticket::decode(&raw.ticket, self.node.signer())?;
                principal.check(ticket.dataset.namespace())?;
                let wanted = endpoint.expiration_time.as_ref().and_then(|t| {
                    DateTime::<Utc>::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
                });
                let current = self.node.resolve(&ticket).await?;
                // An explicit later expiration time sets it; the endpoint as GetFlightInfo
                // returned it (or an earlier time) extends the lease by the version's TTL.
                let until = match (wanted, current.expires_at, current.ttl_seconds) {
                    (Some(w), Some(now), _) if w > now => w,
                    (Some(w), None, _) => w,
                    (_, Some(_), Some(ttl)) => {
                        crate::ttl::expires_at(self.node.now(), std::time::Duration::from_secs(ttl))
                            .ok_or_else(|| Error::invalid("the TTL is too long"))?
                    }
                    (None, None, _) => {
                        // Never expires: nothing to renew.
                        endpoint.expiration_time = None;
                        return Ok(vec![Bytes::from(endpoint.encode_to_vec())]);
                    }
                    (_, Some(_), None) => {
                        return Err(Error::invalid(
                            "this version has no TTL to extend by; give a later expiration_time",
                        ))
                    }
                };
                let m = self.node.renew(&ticket, until).await?;
                endpoint.expiration_time = m.expires_at.map(timestamp);
                Ok(vec![Bytes::from(endpoint.encode_to_vec())])
            }
            // Flights here are complete, immutable datasets: there is never anything to cancel.
            "CancelFlightInfo" => {
                let req = arrow_flight::CancelFlightInfoRequest::decode(body.as_ref())
                    .map_err(|e| Error::invalid(format!("invalid CancelFlightInfoRequest: {e}")))?;
                let info = req
                    .info
                    .ok_or_else(|| Error::invalid("CancelFlightInfoRequest has no FlightInfo"))?;
                let namespace = match (&info.flight_descriptor, info.endpoint.first()) {
                    (Some(d), _) => Self::descriptor_id(d)?.namespace().to_string(),
                    (
                        None,
                        Some(FlightEndpoint {
                            ticket: Some(t), ..
                        }),
                    ) => Ticket::decode(&t.ticket, self.node.signer())?
                        .dataset
                        .namespace()
                        .to_string(),
                    _ => return Err(Error::invalid("the FlightInfo to cancel names no dataset")),
                };
                principal.check(&namespace)?;
                Ok(vec![Bytes::from(
                    arrow_flight::CancelFlightInfoResult::new(
                        arrow_flight::CancelStatus::NotCancellable,
                    )
                    .encode_to_vec(),
                )])
            }
            other => Err(Error::invalid(format!(
                "unknown action {other:?}; ListActions lists: {}",
                ACTIONS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

fn json_body<T: for<'de> Deserialize<'de>>(action: &str, body: &[u8]) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| Error::invalid(format!("invalid body for action {action:?}: {e}")))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Bytes> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| Error::Internal(format!("failed to encode JSON: {e}")))
}
