//! `GetFlightInfo`: what a read of a version (or of some of its columns and rows) is made
//! of, as endpoints with tickets; and the command descriptors that name such a read.

use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::{IpcMessage, SchemaAsIpc};

use super::*;
use crate::node::Plan;
use crate::ticket::Selection;

/// Command descriptors longer than this are refused before parsing.
const MAX_COMMAND_BYTES: usize = 64 * 1024;

impl FlightNodeService {
    pub(super) fn flight_info(&self, m: &Manifest) -> Result<FlightInfo> {
        let id = m.dataset()?;
        let descriptor = FlightDescriptor::new_path(vec![id.namespace().into(), id.name().into()]);
        self.flight_info_of(m, &m.ticket()?, descriptor)
    }

    /// The FlightInfo of what `ticket` reads of version `m`: one endpoint per part (each
    /// part's owner first, then the connection in use: any node can serve any part, the
    /// owner serves it from memory), carrying the ticket's selection. Parts past a row
    /// limit are left out, and the part a limit falls in carries its share of it. The
    /// metadata's `ticket` is `ticket` itself (signed) when it selects anything.
    pub(super) fn flight_info_of(
        &self,
        m: &Manifest,
        ticket: &Ticket,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo> {
        let id = m.dataset()?;
        let signer = self.node.signer();
        let expiration = m.expires_at.map(timestamp);
        let selected = !ticket.select.is_all() || ticket.part.is_some();
        // Only a read of less than the whole version needs planning (ListFlights and a
        // path descriptor describe whole versions, often).
        let plan = if selected {
            Some(Plan::new(m, &ticket.select)?)
        } else {
            None
        };
        let endpoint = |t: &Ticket, part: u32| {
            let mut location = Vec::new();
            if let Some(owner) = self.node.placement().part_owner(&id, m.version, part) {
                location.push(Location { uri: owner });
            }
            location.push(Location {
                uri: REUSE_CONNECTION.into(),
            });
            FlightEndpoint {
                ticket: Some(FlightTicket {
                    ticket: Bytes::from(t.encode(signer)),
                }),
                location,
                expiration_time: expiration,
                app_metadata: Bytes::new(),
            }
        };
        let parts: Vec<(u32, Option<u64>)> = match &plan {
            Some(plan) => plan.parts(m, ticket.part),
            None => (0..u32::try_from(m.parts.len()).unwrap_or(u32::MAX))
                .map(|p| (p, None))
                .collect(),
        };
        let endpoints: Vec<FlightEndpoint> = if m.parts.len() > 1 || ticket.part.is_some() {
            parts
                .iter()
                .map(|(p, limit)| {
                    let rows = m.parts.get(*p as usize).map_or(0, |i| i.rows);
                    let select = Selection {
                        columns: ticket.select.columns.clone(),
                        limit: limit.filter(|l| *l < rows),
                    };
                    endpoint(&ticket.with_part(*p).with_selection(select), *p)
                })
                .collect()
        } else {
            vec![endpoint(ticket, 0)]
        };
        let mut described = m.put_result(signer)?;
        if selected {
            // The ticket of what this FlightInfo describes, to pass on.
            described.ticket = ticket.encode(signer);
        }
        let app_metadata = serde_json::to_vec(&described)
            .map_err(|e| Error::Internal(format!("failed to encode flight info metadata: {e}")))?;
        let (rows, bytes) = match &plan {
            Some(plan) => (plan.rows(m, ticket.part), plan.bytes(m, ticket.part)),
            None => (m.rows, m.bytes),
        };
        let mut info = FlightInfo::new()
            .with_descriptor(descriptor)
            .with_endpoints(endpoints)
            .with_total_records(i64::try_from(rows).unwrap_or(i64::MAX))
            .with_total_bytes(i64::try_from(bytes).unwrap_or(i64::MAX))
            .with_ordered(true)
            .with_app_metadata(app_metadata);
        info.schema = match &plan {
            Some(plan) if ticket.select.columns.is_some() => {
                // The chosen columns' schema, encoded here.
                let ipc: IpcMessage =
                    SchemaAsIpc::new(plan.schema(), &IpcWriteOptions::default()).try_into()?;
                ipc.0
            }
            // The schema as the uploader sent it (see `Manifest::schema_flight_data`).
            _ => m.schema_ipc()?,
        };
        Ok(info)
    }

    /// A command descriptor names one version to read: the ticket as text, or JSON
    /// `{"ticket": "...", "columns": [...], "limit": N}` adding a selection to it (a
    /// selection the ticket already has is only narrowed). Returns the ticket to read.
    pub(super) fn command_ticket(&self, cmd: &[u8]) -> Result<Ticket> {
        if cmd.len() > MAX_COMMAND_BYTES {
            return Err(Error::invalid(format!(
                "the command is {} bytes; commands are at most {MAX_COMMAND_BYTES}",
                cmd.len()
            )));
        }
        let trimmed = cmd.trim_ascii_start();
        if !trimmed.starts_with(b"{") {
            return Ticket::decode(cmd.trim_ascii(), self.node.signer()).map_err(|e| match e {
                Error::InvalidArgument(why) => Error::invalid(format!(
                    "GetFlightInfo takes a path descriptor [namespace, name] or a command \
                     holding a ticket: {why}"
                )),
                other => other,
            });
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Command {
            ticket: String,
            columns: Option<Vec<String>>,
            limit: Option<u64>,
        }
        let c: Command = serde_json::from_slice(cmd).map_err(|e| {
            Error::invalid(format!(
                "the command is neither a ticket nor JSON {{\"ticket\", \"columns\", \"limit\"}}: {e}"
            ))
        })?;
        let ticket = Ticket::decode(c.ticket.trim().as_bytes(), self.node.signer())?;
        let more = Selection::new(c.columns, c.limit)?;
        let select = ticket.select.narrow(&more)?;
        Ok(ticket.with_selection(select))
    }
}
