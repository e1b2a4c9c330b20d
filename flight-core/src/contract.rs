//! Data contracts: named schemas an upload can be required to match.
//!
//! Contracts are read from a YAML file (`--contracts-file`, written by the operator from
//! `FlightPool.spec.contracts`):
//!
//! ```yaml
//! contracts:
//!   sales-v1:
//!     fields:
//!       - { name: id, type: int64, nullable: false }
//!       - { name: amount, type: "decimal128(12,2)" }
//!       - { name: sold_at, type: "timestamp[ms, UTC]" }
//! ```
//!
//! Types are Arrow type strings in the vocabulary pyarrow users know (`int64`, `utf8` or
//! `string`, `float64` or `double`, `bool`, `date32`, `timestamp[us]`, `timestamp[ms, UTC]`,
//! `decimal128(12,2)`, `list<int64>`, …). Comparison is by logical type: `utf8`,
//! `large_utf8` and `utf8_view` are the same column type (pandas produces any of them), as
//! are the binary and list variants, and a dictionary-encoded column (a pandas categorical)
//! matches its value type. Column order does not matter. A field with `nullable: false`
//! refuses batches that contain nulls in it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use serde::Deserialize;

use crate::error::{Error, Result};

/// One field of a contract.
#[derive(Debug, Clone, PartialEq)]
pub struct ContractField {
    pub name: String,
    pub data_type: DataType,
    pub nullable: bool,
}

/// A named schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Contract {
    pub name: String,
    pub fields: Vec<ContractField>,
}

/// All contracts a node knows, by name.
#[derive(Debug, Clone, Default)]
pub struct Contracts {
    by_name: HashMap<String, Arc<Contract>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRepr {
    #[serde(default)]
    contracts: BTreeMap<String, ContractRepr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContractRepr {
    fields: Vec<FieldRepr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldRepr {
    name: String,
    #[serde(rename = "type")]
    data_type: String,
    #[serde(default = "default_nullable")]
    nullable: bool,
}

fn default_nullable() -> bool {
    true
}

impl Contracts {
    /// Parses the YAML contracts document.
    pub fn from_yaml(text: &str) -> Result<Self> {
        let repr: FileRepr = serde_yaml::from_str(text)
            .map_err(|e| Error::Config(format!("failed to parse contracts: {e}")))?;
        let mut by_name = HashMap::new();
        for (name, c) in repr.contracts {
            crate::name::validate_label("contract name", &name)
                .map_err(|e| Error::Config(e.to_string()))?;
            let mut fields = Vec::with_capacity(c.fields.len());
            for f in c.fields {
                let data_type = parse_type(&f.data_type).map_err(|e| {
                    Error::Config(format!("contract {name:?}, field {:?}: {e}", f.name))
                })?;
                if fields.iter().any(|x: &ContractField| x.name == f.name) {
                    return Err(Error::Config(format!(
                        "contract {name:?} lists field {:?} twice",
                        f.name
                    )));
                }
                fields.push(ContractField {
                    name: f.name,
                    data_type,
                    nullable: f.nullable,
                });
            }
            by_name.insert(name.clone(), Arc::new(Contract { name, fields }));
        }
        Ok(Self { by_name })
    }

    /// Reads the contracts file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!(
                "failed to read contracts file {}: {e}",
                path.display()
            ))
        })?;
        Self::from_yaml(&text)
    }

    /// Looks a contract up; an unknown name is `InvalidArgument`.
    pub fn get(&self, name: &str) -> Result<Arc<Contract>> {
        self.by_name.get(name).cloned().ok_or_else(|| {
            let mut known: Vec<_> = self.by_name.keys().map(String::as_str).collect();
            known.sort_unstable();
            Error::invalid(format!(
                "unknown data contract {name:?} (known: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
        })
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

impl Contract {
    /// Checks an upload's schema; the error names every differing column.
    pub fn check_schema(&self, schema: &Schema) -> Result<()> {
        let mut problems = Vec::new();
        for cf in &self.fields {
            match schema.field_with_name(&cf.name) {
                Err(_) => problems.push(format!(
                    "missing column {:?} ({})",
                    cf.name,
                    type_to_string(&cf.data_type)
                )),
                Ok(f) if !same_logical_type(&cf.data_type, f.data_type()) => {
                    problems.push(format!(
                        "column {:?}: expected {}, got {}",
                        cf.name,
                        type_to_string(&cf.data_type),
                        type_to_string(f.data_type())
                    ))
                }
                Ok(_) => {}
            }
        }
        for f in schema.fields() {
            if !self.fields.iter().any(|cf| &cf.name == f.name()) {
                problems.push(format!(
                    "unexpected column {:?} ({})",
                    f.name(),
                    type_to_string(f.data_type())
                ));
            }
        }
        self.violation(problems)
    }

    /// Checks that non-nullable contract columns hold no nulls in this batch.
    pub fn check_batch(&self, batch: &RecordBatch) -> Result<()> {
        let schema = batch.schema();
        let mut problems = Vec::new();
        for cf in self.fields.iter().filter(|cf| !cf.nullable) {
            if let Ok(idx) = schema.index_of(&cf.name) {
                let nulls = batch.column(idx).null_count();
                if nulls > 0 {
                    problems.push(format!(
                        "column {:?} is not nullable but has {nulls} nulls",
                        cf.name
                    ));
                }
            }
        }
        self.violation(problems)
    }

    fn violation(&self, problems: Vec<String>) -> Result<()> {
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::ContractViolation(format!(
                "upload does not match contract {:?}: {}",
                self.name,
                problems.join("; ")
            )))
        }
    }

    /// The contract as an Arrow schema.
    pub fn schema(&self) -> Schema {
        Schema::new(
            self.fields
                .iter()
                .map(|f| Field::new(&f.name, f.data_type.clone(), f.nullable))
                .collect::<Vec<_>>(),
        )
    }
}

/// Compares types by logical meaning (see the module docs).
pub fn same_logical_type(expected: &DataType, actual: &DataType) -> bool {
    use DataType::*;
    match (expected, actual) {
        (e, Dictionary(_, values)) if !matches!(e, Dictionary(_, _)) => {
            same_logical_type(e, values)
        }
        (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View) => true,
        (Binary | LargeBinary | BinaryView, Binary | LargeBinary | BinaryView) => true,
        (
            List(a) | LargeList(a) | ListView(a) | LargeListView(a),
            List(b) | LargeList(b) | ListView(b) | LargeListView(b),
        ) => same_logical_type(a.data_type(), b.data_type()),
        (Dictionary(_, a), Dictionary(_, b)) => same_logical_type(a, b),
        (a, b) => a == b,
    }
}

fn unit_str(u: &TimeUnit) -> &'static str {
    match u {
        TimeUnit::Second => "s",
        TimeUnit::Millisecond => "ms",
        TimeUnit::Microsecond => "us",
        TimeUnit::Nanosecond => "ns",
    }
}

/// Formats a type in the contract vocabulary (`int64`, `utf8`, `timestamp[ms, UTC]`).
pub fn type_to_string(t: &DataType) -> String {
    use DataType::*;
    match t {
        Null => "null".into(),
        Boolean => "bool".into(),
        Int8 => "int8".into(),
        Int16 => "int16".into(),
        Int32 => "int32".into(),
        Int64 => "int64".into(),
        UInt8 => "uint8".into(),
        UInt16 => "uint16".into(),
        UInt32 => "uint32".into(),
        UInt64 => "uint64".into(),
        Float16 => "float16".into(),
        Float32 => "float32".into(),
        Float64 => "float64".into(),
        Utf8 => "utf8".into(),
        LargeUtf8 => "large_utf8".into(),
        Utf8View => "utf8_view".into(),
        Binary => "binary".into(),
        LargeBinary => "large_binary".into(),
        BinaryView => "binary_view".into(),
        FixedSizeBinary(n) => format!("fixed_size_binary[{n}]"),
        Date32 => "date32".into(),
        Date64 => "date64".into(),
        Time32(u) => format!("time32[{}]", unit_str(u)),
        Time64(u) => format!("time64[{}]", unit_str(u)),
        Duration(u) => format!("duration[{}]", unit_str(u)),
        Timestamp(u, None) => format!("timestamp[{}]", unit_str(u)),
        Timestamp(u, Some(tz)) => format!("timestamp[{}, {tz}]", unit_str(u)),
        Decimal32(p, s) => format!("decimal32({p},{s})"),
        Decimal64(p, s) => format!("decimal64({p},{s})"),
        Decimal128(p, s) => format!("decimal128({p},{s})"),
        Decimal256(p, s) => format!("decimal256({p},{s})"),
        List(f) => format!("list<{}>", type_to_string(f.data_type())),
        LargeList(f) => format!("large_list<{}>", type_to_string(f.data_type())),
        Dictionary(k, v) => format!(
            "dictionary<values={}, indices={}>",
            type_to_string(v),
            type_to_string(k)
        ),
        other => other.to_string(),
    }
}

/// Parses an Arrow type string. Accepts both this crate's spelling and pyarrow's
/// (`string`, `double`, `timestamp[ms, tz=UTC]`, `date32[day]`, `list<item: int64>`).
pub fn parse_type(text: &str) -> Result<DataType> {
    let s = text.trim();
    let bad = |why: &str| {
        Error::invalid(format!(
            "unknown Arrow type {text:?}: {why} (examples: int64, utf8, float64, bool, date32, \
             timestamp[ms, UTC], decimal128(12,2), list<int64>)"
        ))
    };
    let simple = match s {
        "null" => Some(DataType::Null),
        "bool" | "boolean" => Some(DataType::Boolean),
        "int8" => Some(DataType::Int8),
        "int16" => Some(DataType::Int16),
        "int32" => Some(DataType::Int32),
        "int64" => Some(DataType::Int64),
        "uint8" => Some(DataType::UInt8),
        "uint16" => Some(DataType::UInt16),
        "uint32" => Some(DataType::UInt32),
        "uint64" => Some(DataType::UInt64),
        "float16" | "halffloat" => Some(DataType::Float16),
        "float32" | "float" => Some(DataType::Float32),
        "float64" | "double" => Some(DataType::Float64),
        "utf8" | "string" => Some(DataType::Utf8),
        "large_utf8" | "large_string" => Some(DataType::LargeUtf8),
        "utf8_view" | "string_view" => Some(DataType::Utf8View),
        "binary" => Some(DataType::Binary),
        "large_binary" => Some(DataType::LargeBinary),
        "binary_view" => Some(DataType::BinaryView),
        "date32" | "date32[day]" => Some(DataType::Date32),
        "date64" | "date64[ms]" => Some(DataType::Date64),
        _ => None,
    };
    if let Some(t) = simple {
        return Ok(t);
    }
    let unit = |u: &str| -> Result<TimeUnit> {
        match u.trim() {
            "s" => Ok(TimeUnit::Second),
            "ms" => Ok(TimeUnit::Millisecond),
            "us" => Ok(TimeUnit::Microsecond),
            "ns" => Ok(TimeUnit::Nanosecond),
            other => Err(bad(&format!("unknown time unit {other:?}"))),
        }
    };
    if let Some(inner) = bracketed(s, "timestamp[", ']') {
        let (u, tz) = match inner.split_once(',') {
            Some((u, tz)) => {
                let tz = tz.trim();
                let tz = tz.strip_prefix("tz=").unwrap_or(tz).trim();
                if tz.is_empty() {
                    return Err(bad("empty time zone"));
                }
                (u, Some(Arc::from(tz)))
            }
            None => (inner, None),
        };
        return Ok(DataType::Timestamp(unit(u)?, tz));
    }
    if let Some(inner) = bracketed(s, "time32[", ']') {
        let u = unit(inner)?;
        return match u {
            TimeUnit::Second | TimeUnit::Millisecond => Ok(DataType::Time32(u)),
            _ => Err(bad("time32 takes s or ms")),
        };
    }
    if let Some(inner) = bracketed(s, "time64[", ']') {
        let u = unit(inner)?;
        return match u {
            TimeUnit::Microsecond | TimeUnit::Nanosecond => Ok(DataType::Time64(u)),
            _ => Err(bad("time64 takes us or ns")),
        };
    }
    if let Some(inner) = bracketed(s, "duration[", ']') {
        return Ok(DataType::Duration(unit(inner)?));
    }
    if let Some(inner) = bracketed(s, "fixed_size_binary[", ']') {
        let n = inner
            .trim()
            .parse()
            .map_err(|_| bad("width must be an integer"))?;
        return Ok(DataType::FixedSizeBinary(n));
    }
    for (prefix, max) in [("decimal128(", 38u8), ("decimal256(", 76u8)] {
        if let Some(inner) = bracketed(s, prefix, ')') {
            let (p, sc) = inner
                .split_once(',')
                .ok_or_else(|| bad("expected (precision,scale)"))?;
            let p: u8 = p
                .trim()
                .parse()
                .map_err(|_| bad("precision must be an integer"))?;
            let sc: i8 = sc
                .trim()
                .parse()
                .map_err(|_| bad("scale must be an integer"))?;
            if p == 0 || p > max || i16::from(sc) > i16::from(p) {
                return Err(bad(&format!(
                    "precision must be 1..={max} and scale at most the precision"
                )));
            }
            return Ok(if max == 38 {
                DataType::Decimal128(p, sc)
            } else {
                DataType::Decimal256(p, sc)
            });
        }
    }
    for (prefix, large) in [("list<", false), ("large_list<", true)] {
        if let Some(inner) = bracketed(s, prefix, '>') {
            // pyarrow spells the child as `item: int64`.
            let child = inner.split_once(':').map(|(_, t)| t).unwrap_or(inner);
            let field = Arc::new(Field::new("item", parse_type(child)?, true));
            return Ok(if large {
                DataType::LargeList(field)
            } else {
                DataType::List(field)
            });
        }
    }
    Err(bad("not recognised"))
}

fn bracketed<'a>(s: &'a str, prefix: &str, close: char) -> Option<&'a str> {
    s.strip_prefix(prefix)?.strip_suffix(close)
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
contracts:
  sales-v1:
    fields:
      - { name: id, type: int64, nullable: false }
      - { name: amount, type: "decimal128(12,2)" }
      - { name: sold_at, type: "timestamp[ms, UTC]" }
      - { name: region, type: utf8 }
"#;

    #[test]
    fn parses_type_strings() {
        let cases = [
            ("int64", DataType::Int64),
            ("utf8", DataType::Utf8),
            ("string", DataType::Utf8),
            ("double", DataType::Float64),
            ("bool", DataType::Boolean),
            ("date32[day]", DataType::Date32),
            (
                "timestamp[ms, UTC]",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            ),
            (
                "timestamp[us, tz=Europe/Paris]",
                DataType::Timestamp(TimeUnit::Microsecond, Some("Europe/Paris".into())),
            ),
            (
                "timestamp[ns]",
                DataType::Timestamp(TimeUnit::Nanosecond, None),
            ),
            ("decimal128(12,2)", DataType::Decimal128(12, 2)),
            ("decimal128(12, 2)", DataType::Decimal128(12, 2)),
            ("time64[us]", DataType::Time64(TimeUnit::Microsecond)),
            ("duration[s]", DataType::Duration(TimeUnit::Second)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_type(text).unwrap(), want, "{text}");
        }
        let list = parse_type("list<item: int64>").unwrap();
        assert!(matches!(list, DataType::List(f) if f.data_type() == &DataType::Int64));
        for bad in [
            "int",
            "timestamp[min]",
            "decimal128(0,0)",
            "decimal128(12)",
            "time32[ns]",
            "list<nope>",
            "",
        ] {
            assert!(parse_type(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_round_trip() {
        for t in [
            "int64",
            "utf8",
            "timestamp[ms, UTC]",
            "decimal128(12,2)",
            "list<float64>",
            "date32",
            "duration[ns]",
        ] {
            assert_eq!(type_to_string(&parse_type(t).unwrap()), t);
        }
    }

    #[test]
    fn checks_schemas_naming_columns() {
        let contracts = Contracts::from_yaml(YAML).unwrap();
        let c = contracts.get("sales-v1").unwrap();
        let good = Schema::new(vec![
            Field::new("region", DataType::LargeUtf8, true),
            Field::new("id", DataType::Int64, true),
            Field::new("amount", DataType::Decimal128(12, 2), true),
            Field::new(
                "sold_at",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                true,
            ),
        ]);
        c.check_schema(&good).unwrap();

        let bad = Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("amount", DataType::Float64, true),
            Field::new(
                "sold_at",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                true,
            ),
            Field::new("extra", DataType::Int32, true),
        ]);
        let msg = c.check_schema(&bad).unwrap_err().to_string();
        assert!(
            msg.contains("\"amount\": expected decimal128(12,2), got float64"),
            "{msg}"
        );
        assert!(
            msg.contains("\"sold_at\": expected timestamp[ms, UTC], got timestamp[ms]"),
            "{msg}"
        );
        assert!(msg.contains("missing column \"region\""), "{msg}");
        assert!(msg.contains("unexpected column \"extra\""), "{msg}");
        assert!(!msg.contains("\"id\""), "{msg}");
    }

    #[test]
    fn checks_nulls_in_non_nullable_columns() {
        use arrow::array::Int64Array;
        let c = Contracts::from_yaml(YAML).unwrap().get("sales-v1").unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        let ok = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 2]))])
            .unwrap();
        c.check_batch(&ok).unwrap();
        let nulls = RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from(vec![Some(1), None]))],
        )
        .unwrap();
        let msg = c.check_batch(&nulls).unwrap_err().to_string();
        assert!(
            msg.contains("\"id\" is not nullable but has 1 nulls"),
            "{msg}"
        );
    }

    #[test]
    fn dictionary_matches_its_values() {
        let dict = DataType::Dictionary(Box::new(DataType::Int8), Box::new(DataType::LargeUtf8));
        assert!(same_logical_type(&DataType::Utf8, &dict));
        assert!(!same_logical_type(&DataType::Int64, &dict));
    }

    #[test]
    fn bad_files_are_config_errors() {
        assert!(Contracts::from_yaml("contracts: {x: {fields: [{name: a, type: nope}]}}").is_err());
        assert!(Contracts::from_yaml("contracts: {Bad_Name: {fields: []}}").is_err());
        assert!(Contracts::from_yaml(
            "contracts: {x: {fields: [{name: a, type: int64}, {name: a, type: int64}]}}"
        )
        .is_err());
        assert!(Contracts::from_yaml("contracts: {x: {feilds: []}}").is_err());
        let empty = Contracts::from_yaml("contracts: {}").unwrap();
        assert!(empty
            .get("x")
            .unwrap_err()
            .to_string()
            .contains("known: none"));
    }
}
